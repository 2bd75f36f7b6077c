"""README "Metrics": the families a dashboard reads, checked through a running gateway.

Every check reads /metrics with prometheus-client's own parser and compares before/after a
request, so the module's tests share one gateway and do not depend on their order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Double, Gateway, Spawner

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}
REQ = "llm_gateway_requests_total"
STATES = ("starting", "loading", "ready", "swapped_out", "down", "draining", "stopped", "stopping", "crashed")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> tuple[Gateway, Double, Double]:
    up = module_spawn.double("mx", "m,m-second")
    doomed = module_spawn.double("mx-doomed", "m-doomed")
    gw = module_spawn.gateway({
        "upstream": {"max_attempts": 1, "stream_keepalive": 0},
        "health": {"interval": 60},  # state changes below come from requests, not probes
        "backends": [{"name": "mx", "kind": "vllm", "url": up.url},
                     {"name": "mx-doomed", "kind": "vllm", "url": doomed.url}],
    })
    return gw, up, doomed


def scrape(gw: Gateway) -> Samples:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_total(samples: Samples, **labels: str) -> float:
    """llm_gateway_requests_total summed over the labels not given."""
    return sum(v for (n, ls), v in samples.items()
               if n == REQ and all(dict(ls).get(k) == w for k, w in labels.items()))


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def chat(gw: Gateway, model: str = "m", **extra: object) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json={"model": model, "messages": MESSAGES, **extra},
                      headers=JSON, timeout=30)


def test_requests_total_by_endpoint_model_backend_status(env) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = env
    before = scrape(gw)
    assert chat(gw).status_code == 200
    assert chat(gw, x_double={"status": 400, "message": "bad"}).status_code == 400
    r = httpx.post(gw.v1 + "/completions", json={"model": "m-second", "prompt": "x"}, headers=JSON, timeout=30)
    assert r.status_code == 200
    # an unknown model is counted, but never under the client's string
    assert chat(gw, model="no-such-model-xyz").status_code == 404
    after = scrape(gw)
    for labels in ({"endpoint": "chat", "model": "m", "backend": "mx", "status": "200"},
                   {"endpoint": "completions", "model": "m-second", "backend": "mx", "status": "200"},
                   {"endpoint": "chat", "model": "", "backend": "", "status": "404"}):
        assert val(after, REQ, **labels) - val(before, REQ, **labels) == 1, labels
    # a failed request is counted under the backend that failed it, so dashboards see errors per backend
    failed = {"endpoint": "chat", "model": "m", "backend": "mx", "status": "400"}
    assert val(after, REQ, **failed) - val(before, REQ, **failed) == 1
    assert not any("no-such-model-xyz" in str(key) for key in after)


def test_client_gone_mid_stream_is_counted_499(env) -> None:  # type: ignore[no-untyped-def]
    gw, up, _ = env
    up.reset()
    gone = {"endpoint": "chat", "model": "m", "backend": "mx", "status": "499"}
    ok = {**gone, "status": "200"}
    m = scrape(gw)
    before, before_ok = requests_total(m, **gone), requests_total(m, **ok)
    with httpx.stream("POST", gw.v1 + "/chat/completions", headers=JSON, timeout=30, json={
            "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"hold": True}}) as s:
        for line in s.iter_lines():
            if '"content":"Hello"' in line:  # the first token arrived; the upstream now holds
                break
    # leaving the `with` closed the connection mid-stream
    wait_for(lambda: requests_total(scrape(gw), **gone) == before + 1, "a 499 recorded for the vanished client")
    wait_for(lambda: up.stats()["cancelled"] == 1, "the upstream request cancelled")
    after = scrape(gw)
    assert requests_total(after, **ok) == before_ok  # not counted as answered
    assert val(after, "llm_gateway_in_flight_requests", backend="mx") == 0


def test_request_duration_counts_and_sums_the_time(env) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = env
    name = "llm_gateway_request_duration_seconds"
    before = scrape(gw)
    assert chat(gw, x_double={"delay": 0.4}).status_code == 200
    after = scrape(gw)
    assert val(after, name + "_count", endpoint="chat", model="m") - \
        val(before, name + "_count", endpoint="chat", model="m") == 1
    grew = val(after, name + "_sum", endpoint="chat", model="m") - val(before, name + "_sum", endpoint="chat",
                                                                       model="m")
    assert 0.4 <= grew < 30, grew
    # the answer took 0.4 s or more: it is not in the 0.3 s bucket, it is in the 0.5 s-and-up ones
    le = {"endpoint": "chat", "model": "m"}
    assert (name + "_bucket", frozenset({"le": "0.3", **le}.items())) in after  # a bound (finer than vLLM's)
    assert val(after, name + "_bucket", le="0.3", **le) == val(before, name + "_bucket", le="0.3", **le)
    assert val(after, name + "_bucket", le="+Inf", **le) - val(before, name + "_bucket", le="+Inf", **le) == 1


def test_time_to_first_token_for_streams_only(env) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = env
    count, total = "llm_gateway_time_to_first_token_seconds_count", "llm_gateway_time_to_first_token_seconds_sum"
    before = scrape(gw)
    assert chat(gw).status_code == 200  # not a stream: no TTFT
    assert val(scrape(gw), count, model="m", backend="mx") == val(before, count, model="m", backend="mx")
    # headers at once, the first event 0.3 s later: the time to first token includes that wait
    with httpx.stream("POST", gw.v1 + "/chat/completions", headers=JSON, timeout=30, json={
            "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"first_delay": 0.3}}) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    after = scrape(gw)
    assert val(after, count, model="m", backend="mx") - val(before, count, model="m", backend="mx") == 1
    grew = val(after, total, model="m", backend="mx") - val(before, total, model="m", backend="mx")
    assert 0.3 <= grew < 30, grew


def test_in_flight_rises_while_a_request_is_held_then_returns_to_zero(env) -> None:  # type: ignore[no-untyped-def]
    gw, up, _ = env
    up.reset()
    name = "llm_gateway_in_flight_requests"
    assert val(scrape(gw), name, backend="mx") == 0
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(chat(gw, x_double={"hold": True}).status_code))
    t.start()
    try:
        wait_for(lambda: up.stats()["in_flight"] == 1, "the request reached the upstream")
        assert val(scrape(gw), name, backend="mx") == 1
        assert val(scrape(gw), name, backend="mx-doomed") == 0
    finally:
        up.release()
        t.join(30)
    assert results == [200]
    assert val(scrape(gw), name, backend="mx") == 0


def test_backend_state_and_models(env) -> None:  # type: ignore[no-untyped-def]
    gw, _, doomed = env
    name = "llm_gateway_backend_state"
    m = scrape(gw)
    for backend in ("mx", "mx-doomed"):  # one 1 for the current state, a 0 for every other
        assert {s: val(m, name, backend=backend, state=s) for s in STATES} == \
            {s: 1.0 if s == "ready" else 0.0 for s in STATES}, backend
    assert val(m, "llm_gateway_backend_models", backend="mx") == 2
    assert val(m, "llm_gateway_backend_models", backend="mx-doomed") == 1
    doomed.proc.stop()
    assert chat(gw, model="m-doomed").status_code == 502  # refused: taken out at once
    m = scrape(gw)
    assert {s: val(m, name, backend="mx-doomed", state=s) for s in STATES} == \
        {s: 1.0 if s == "down" else 0.0 for s in STATES}
    assert val(m, name, backend="mx", state="ready") == 1
