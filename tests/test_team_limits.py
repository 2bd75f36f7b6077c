"""Per-key limits on the request path (gateway/auth/enforce.py): real gateway processes, the OpenAI double,
a real llama-server for real usage, and a real redis-server shared by two gateway replicas."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.native import require_native
from tests.procs import Gateway, Spawner, free_port
from tests.test_limits_redis import start_redis, stop

KEY = "limited-key-0123456789abcdef"
OTHER = "other-key-0123456789abcdef"


def cfg(backend_url: str, limits: dict[str, int], state: dict[str, Any] | None = None,
        kind: str = "openai", team: dict[str, int] | None = None) -> dict[str, Any]:
    keys: list[dict[str, Any]] = [{"name": "alice", "key": KEY, "limits": limits, "team": "t"},
                                  {"name": "carol", "key": OTHER, "team": "t"}]
    return {"auth": {"keys": keys, "teams": [{"name": "t", "limits": team or {}}]},
            "state": state or {}, "backends": [{"name": "b", "kind": kind, "url": backend_url}]}


def chat(gw: Gateway, key: str = KEY, model: str = "m", **body: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize("native", [True, False], ids=["c-store", "python-store"])
def test_rpm_counts_down_then_429_with_openai_headers_and_other_keys_pass(spawn: Spawner, native: bool) -> None:
    """Both in-memory stores behind a real gateway: the C one (the default when built) and the Python one."""
    if native:
        require_native()
    dbl = spawn.double("d", "m")
    gw = spawn.gateway(cfg(dbl.url, {"rpm": 3}, {"native_limits": native}))
    got = [chat(gw) for _ in range(3)]
    assert [r.status_code for r in got] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in got] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in got)
    assert got[0].headers["x-ratelimit-reset-requests"].endswith("s")
    over = chat(gw)
    assert over.status_code == 429
    err = over.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded" and "rpm of key alice" in err[
        "message"]
    assert 1 <= int(over.headers["retry-after"]) <= 60 and over.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(dbl.requests()) == 3                       # the refused request never reached the backend
    assert chat(gw, OTHER).status_code == 200 and "x-ratelimit-limit-requests" not in chat(gw, OTHER).headers
    assert 'llm_gateway_key_limited_total{key="alice",limit="rpm"} 1.0' in httpx.get(gw.url + "/metrics").text
    assert ("limits: in this process's memory (C store)" in gw.proc.output()) is native


TRIOS = [f"x-ratelimit-{part}-{kind}" for kind in ("requests", "tokens") for part in ("limit", "remaining", "reset")]


@pytest.mark.parametrize("native", [True, False], ids=["c-store", "python-store"])
def test_every_answer_carries_both_trios_whole_written_streamed_or_failed(spawn: Spawner, native: bool) -> None:
    """A non-stream answer's head is written whole with the trios as lines (api/client_writer.py), a stream's
    and an error's go through ASGI as pairs: the same six headers, counting down, on each (parsed by h11)."""
    if native:
        require_native()
    dbl, bad = spawn.double("d", "m"), spawn.double("e", "bad", "--fail-status", "503")
    gw = spawn.gateway({"auth": {"keys": [{"name": "alice", "key": KEY, "limits": {"rpm": 100, "tpm": 10**6}}]},
                        "state": {"native_limits": native},
                        "backends": [{"name": "b", "kind": "openai", "url": dbl.url},
                                     {"name": "e", "kind": "openai", "url": bad.url}]})
    whole = chat(gw)
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as s:
        streamed, events = s, s.read()
    failed = chat(gw, model="bad")
    assert (whole.status_code, streamed.status_code, failed.status_code // 100) == (200, 200, 5)
    assert b"data: [DONE]" in events and failed.json()["error"]["message"]
    for r, left in ((whole, "99"), (streamed, "98"), (failed, "97")):
        h = r.headers
        assert all(len(h.get_list(name)) == 1 for name in TRIOS), h
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("100", left)
        assert h["x-ratelimit-limit-tokens"] == "1000000" and 0 < int(h["x-ratelimit-remaining-tokens"]) < 10**6
        assert h["x-ratelimit-reset-requests"] == h["x-ratelimit-reset-tokens"] == "1m0s"
        assert h["x-request-id"] and (r is streamed or int(h["content-length"]) == len(r.content))


@pytest.mark.parametrize("native", [True, False], ids=["c-store", "python-store"])
def test_a_team_limit_holds_across_its_keys(spawn: Spawner, native: bool) -> None:
    if native:
        require_native()
    dbl = spawn.double("d", "m")
    gw = spawn.gateway(cfg(dbl.url, {"rpm": 100}, {"native_limits": native}, team={"rpm": 2}))
    assert chat(gw).status_code == 200                   # alice: her own limit and the team's
    assert chat(gw).status_code == 200
    r = chat(gw)
    assert r.status_code == 429 and "team t" in r.json()["error"]["message"]
    r = chat(gw, OTHER)                                  # carol, same team, no limits of her own: the team's hold
    assert r.status_code == 429 and "rpm of team t" in r.json()["error"]["message"]


def metric(text: str, series: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(series + " ")]
    return float(line.split()[-1])


def _hammer(gws: list[Gateway], n: int, **body: Any) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        return list(pool.map(lambda i: chat(gws[i % len(gws)], **body).status_code, range(n)))


def test_two_replicas_share_one_rpm_and_one_concurrency_limit_through_redis(spawn: Spawner, tmp_path: Path) -> None:
    port = free_port()
    rproc = start_redis(port, tmp_path / "redis.log")
    try:
        dbl = spawn.double("d", "m", "--headers-delay", "0.3")
        state = {"redis": f"redis://127.0.0.1:{port}/0"}
        gws = [spawn.gateway(cfg(dbl.url, {"rpm": 10}, state)) for _ in range(2)]
        codes = _hammer(gws, 40)
        assert codes.count(200) == 10 and codes.count(429) == 30, codes
        # the Redis calls the replicas made, in llm_gateway_state_*: 40 acquires and a finish per admitted request
        # (10), each sent once, in at most as many round trips plus one per replica to load the scripts (how far
        # batching brings them below that is tests/test_limits_redis_batch.py's subject)
        time.sleep(0.2)  # the last finishes wait up to 10 ms for an acquire to carry them
        texts = [httpx.get(gw.url + "/metrics").text for gw in gws]
        trips, calls = (sum(metric(t, f'llm_gateway_state_{m}_total{{component="limits"}}') for t in texts)
                        for m in ("round_trips", "calls"))
        assert calls == 40 + 10 and 2 <= trips <= 2 + calls, (trips, calls)
        dbl.reset()
        # concurrency: a fresh key on the same Redis, through both replicas at once
        c = cfg(dbl.url, {"concurrency": 2}, state)
        c["auth"]["keys"][0]["name"] = "alice2"
        gws2 = [spawn.gateway(c) for _ in range(2)]
        codes = _hammer(gws2, 24)
        assert codes.count(200) >= 2 and set(codes) <= {200, 429}, codes
        assert dbl.stats()["max_in_flight"] <= 2, dbl.stats()
    finally:
        stop(rproc)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_is_the_configured_mode_then_limits_return(spawn: Spawner, tmp_path: Path, mode: str) -> None:
    port = free_port()
    rproc = start_redis(port, tmp_path / "redis.log")
    dbl = spawn.double("d", "m")
    gw = spawn.gateway(cfg(dbl.url, {"rpm": 2}, {"redis": f"redis://127.0.0.1:{port}/0", "redis_failure": mode}))
    assert [chat(gw).status_code for _ in range(3)] == [200, 200, 429]
    stop(rproc, signal.SIGKILL)
    down = [chat(gw) for _ in range(3)]
    if mode == "open":
        assert [r.status_code for r in down] == [200, 200, 200]
    else:
        assert [r.status_code for r in down] == [503, 503, 503]
        assert down[0].json()["error"]["code"] == "limits_unavailable"
    assert "Traceback" not in gw.proc.output()
    assert 'llm_gateway_state_failures_total{component="limits"}' in httpx.get(gw.url + "/metrics").text
    rproc = start_redis(port, tmp_path / "redis2.log")      # back (empty): limits hold again
    try:
        assert [chat(gw).status_code for _ in range(3)] == [200, 200, 429]
    finally:
        stop(rproc)


@pytest.mark.llamacpp
def test_a_token_quota_is_consumed_by_real_usage_from_llama_server(spawn: Spawner, llama_servers: Any) -> None:
    server = llama_servers[0]
    quota = 400
    gw = spawn.gateway(cfg(server.url, {"tokens_per_day": quota}, kind="llamacpp"))
    used, codes = 0, []
    for _ in range(40):
        r = chat(gw, model=server.model, max_tokens=8)
        codes.append(r.status_code)
        if r.status_code != 200:
            break
        used += r.json()["usage"]["total_tokens"]
    assert codes[-1] == 429 and set(codes[:-1]) == {200}, codes
    body = r.json()["error"]
    assert "tokens_per_day of key alice" in body["message"]
    # Estimates (body bytes / 4 + max_tokens) bound each request's real usage here: never over the quota,
    # and refused only when the next estimate would not fit.
    assert quota // 2 < used <= quota, used
    assert 'llm_gateway_key_limited_total{key="alice",limit="tokens_per_day"} 1.0' in httpx.get(
        gw.url + "/metrics").text
