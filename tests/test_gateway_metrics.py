"""README "Metrics", the families added for the dashboards (issue 13): inter-token latency, the
gateway's own time, limiter queue wait and 429s by reason, fallbacks, probe duration, backend kind;
and the bound on label cardinality. Through a running gateway in front of doubles, before/after
scrapes parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.procs import Gateway, Spawner
from tests.test_metrics_behaviour import JSON, MESSAGES, Samples, scrape, val, wait_for

TPOT = "llm_gateway_time_per_output_token_seconds"
OVERHEAD = "llm_gateway_overhead_seconds"
REJECT = "llm_gateway_rejections_total"


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> dict[str, Any]:
    up = module_spawn.double("mt", "m")
    lim = module_spawn.double("mt-lim", "q")
    doomed = module_spawn.double("mt-doomed", "gone")
    gw = module_spawn.gateway({
        "upstream": {"max_attempts": 1, "stream_keepalive": 0},
        "health": {"interval": 0.2},
        "backends": [{"name": "mt", "kind": "vllm", "url": up.url},
                     {"name": "mt-lim", "kind": "openai", "url": lim.url, "max_concurrency": 1, "max_queue": 1,
                      "queue_timeout": 0.5},
                     {"name": "mt-doomed", "kind": "vllm", "url": doomed.url, "discover": False}],
        "models": [{"name": "primary", "backends": [{"backend": "mt-doomed", "model": "gone"}],
                    "fallbacks": ["m"]}],
    })
    wait_for(lambda: val(scrape(gw), "llm_gateway_backend_state", backend="mt-doomed", state="ready") == 1,
             "every backend ready")
    doomed.proc.stop()
    return {"gw": gw, "up": up, "lim": lim}


def chat(gw: Gateway, model: str = "m", **extra: Any) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", headers=JSON, timeout=30,
                      json={"model": model, "messages": MESSAGES, **extra})


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


def test_inter_token_latency_is_the_mean_time_per_output_token_of_a_stream(env: dict[str, Any]) -> None:
    gw = env["gw"]
    words = " ".join(f"w{i}" for i in range(11))  # the double sends one content chunk per word, 50 ms apart
    before = scrape(gw)
    with httpx.stream("POST", gw.v1 + "/chat/completions", headers=JSON, timeout=30, json={
            "model": "m", "messages": MESSAGES, "stream": True,
            "x_double": {"text": words, "delay": 0.05}}) as s:
        assert s.status_code == 200
        assert [ln for ln in s.iter_lines() if ln.startswith("data:")][-1] == "data: [DONE]"
    after = scrape(gw)
    labels = {"model": "m", "backend": "mt"}
    assert grew(before, after, TPOT + "_count", **labels) == 1
    mean = grew(before, after, TPOT + "_sum", **labels)
    assert 0.03 <= mean <= 0.2, mean  # ~50 ms per token, not the whole stream's time nor zero
    # one observation, in the buckets from 0.075 s up, not in those at 0.025 s and below
    assert (TPOT + "_bucket", frozenset({"le": "0.025", **labels}.items())) in after
    assert grew(before, after, TPOT + "_bucket", le="0.025", **labels) == 0
    assert grew(before, after, TPOT + "_bucket", le="80.0", **labels) == 1
    assert chat(gw).status_code == 200  # a non-stream answer has no inter-token latency
    assert grew(after, scrape(gw), TPOT + "_count", **labels) == 0


def test_overhead_counts_the_gateways_own_time_not_the_backends(env: dict[str, Any]) -> None:
    gw = env["gw"]
    before = scrape(gw)
    assert chat(gw, x_double={"delay": 0.5}).status_code == 200  # the backend takes 0.5 s
    after = scrape(gw)
    assert grew(before, after, OVERHEAD + "_count", endpoint="chat") == 1
    own = grew(before, after, OVERHEAD + "_sum", endpoint="chat")
    total = grew(before, after, "llm_gateway_request_duration_seconds_sum", endpoint="chat", model="m")
    assert total >= 0.5 and 0 < own < 0.1, (own, total)


def test_limiter_queue_wait_and_429s_by_reason(env: dict[str, Any]) -> None:
    gw, lim = env["gw"], env["lim"]
    lim.reset()
    before = scrape(gw)
    results: dict[str, int] = {}
    held = threading.Thread(target=lambda: results.update(held=chat(gw, "q", x_double={"hold": True}).status_code))
    held.start()
    try:
        wait_for(lambda: lim.stats()["in_flight"] == 1, "the first request holds the only slot")
        queued = threading.Thread(target=lambda: results.update(queued=chat(gw, "q").status_code))
        queued.start()
        wait_for(lambda: val(scrape(gw), "llm_gateway_in_flight_requests", backend="mt-lim") == 2, "one queued")
        assert chat(gw, "q").status_code == 429  # slot taken, queue (1) full
        queued.join(10)  # waited its 0.5 s in the queue, then 429
    finally:
        lim.release()
        held.join(30)
    assert results == {"held": 200, "queued": 429}
    after = scrape(gw)
    assert grew(before, after, REJECT, backend="mt-lim", reason="queue_full") == 1
    assert grew(before, after, REJECT, backend="mt-lim", reason="queue_timeout") == 1
    # the held request and the one that timed out each waited: 0 s and 0.5 s; the rejected one never queued
    wait = "llm_gateway_queue_wait_seconds"
    assert grew(before, after, wait + "_count", backend="mt-lim") == 1  # only the one that got the slot
    assert chat(gw, "q").status_code == 200
    final = scrape(gw)
    assert grew(before, final, wait + "_count", backend="mt-lim") == 2
    assert grew(before, final, wait + "_sum", backend="mt-lim") < 0.1  # the slot was free at once


def test_fallbacks_probes_and_backend_kind(env: dict[str, Any]) -> None:
    gw = env["gw"]
    before = scrape(gw)
    r = chat(gw, "primary")
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "mt"  # served by the fallback `m`
    after = scrape(gw)
    assert grew(before, after, "llm_gateway_fallbacks_total", model="primary", fallback="m") == 1
    wait_for(lambda: val(scrape(gw), "llm_gateway_probe_duration_seconds_count", backend="mt")
             > val(after, "llm_gateway_probe_duration_seconds_count", backend="mt"), "probes are timed")
    m = scrape(gw)
    assert val(m, "llm_gateway_probe_duration_seconds_sum", backend="mt") > 0
    assert {b: val(m, "llm_gateway_backend_info", backend=b, kind=k)
            for b, k in (("mt", "vllm"), ("mt-lim", "openai"), ("mt-doomed", "vllm"))} == \
        {"mt": 1, "mt-lim": 1, "mt-doomed": 1}


def test_label_cardinality_does_not_grow_with_client_strings(env: dict[str, Any]) -> None:
    gw = env["gw"]
    # one of each kind first, so any series an unknown model or a session creates exists already
    assert chat(gw, "nope-0").status_code == 404
    assert chat(gw, user="u-0", x_double={}).status_code == 200
    before = scrape(gw)
    with httpx.Client(timeout=30) as c:
        for i in range(1000):
            r = c.post(gw.v1 + "/chat/completions", json={"model": f"nope-{i}", "messages": MESSAGES},
                       headers={**JSON, "x-session-id": f"s-{i}"})
            assert r.status_code == 404
            if i % 10 == 0:  # served ones too, with a distinct user and session each
                r = c.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES, "user": f"u-{i}"},
                           headers={**JSON, "x-session-id": f"s-{i}"})
                assert r.status_code == 200
    after = scrape(gw)
    assert set(after) == set(before)  # the same series, only their values moved
    assert grew(before, after, "llm_gateway_requests_total", endpoint="chat", model="", backend="", status="404") \
        == 1000
    text = httpx.get(gw.url + "/metrics").text
    assert "nope-" not in text and "s-1" not in text and "u-1" not in text


def test_ready_deployments_per_model_follow_the_backends(env: dict[str, Any]) -> None:
    gw, lim = env["gw"], env["lim"]
    name = "llm_gateway_model_ready_deployments"
    # `primary`'s only backend was stopped by the fixture: its probe takes it out, the model reads 0
    wait_for(lambda: val(scrape(gw), name, model="primary") == 0 and (name, frozenset({"model": "primary"}.items()))
             in scrape(gw), "primary has no ready deployment")
    m = scrape(gw)
    assert val(m, name, model="m") == 1 and val(m, name, model="q") == 1
    lim.proc.stop()  # q's backend goes away: its model is then served by nobody, and its series says so
    # a down backend keeps its last model list (routing answers 503, not 404): the series stays, at 0
    wait_for(lambda: scrape(gw).get((name, frozenset({"model": "q"}.items()))) == 0, "q has no ready deployment")
    assert val(scrape(gw), name, model="m") == 1
