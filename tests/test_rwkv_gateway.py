"""RWKV-Runner behind the gateway (tests/doubles/rwkv_server.py reproduces backend-python)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai

from tests.procs import Double, Spawner

MODEL_PATH = "models/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"
MODEL = "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096"
MESSAGES = [{"role": "user", "content": "Hi"}]


def wait_until(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def start_rwkv(spawn: Spawner, *args: str) -> Double:
    return spawn.start_double("rwkv_server", "/status", *args)


def backend(gw_url: str) -> dict:
    return httpx.get(gw_url + "/admin/backends").json()["backends"][0]


def test_gateway_loads_the_configured_model_then_serves_it(spawn: Spawner, tmp_path: Path) -> None:
    weights = tmp_path / f"{MODEL}.pth"
    weights.write_bytes(b"fake weights")  # /switch-model checks the file exists
    r = start_rwkv(spawn, "--load-seconds", "1.5")
    gw = spawn.gateway({"health": {"interval": 0.2, "not_ready_interval": 0.1},
                        "backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url,
                                      "load": {"model": str(weights), "strategy": "cpu fp32"}}]})
    states = []
    deadline = time.monotonic() + 20
    while not states or states[-1] != "ready":
        assert time.monotonic() < deadline, states
        s = backend(gw.url)["state"]
        if not states or s != states[-1]:
            states.append(s)
        time.sleep(0.05)
    assert "loading" in states
    switch = [q for q in r.requests() if q["path"] == "/switch-model"]
    assert len(switch) == 1 and switch[0]["body"]["strategy"] == "cpu fp32"
    # its /v1/models also lists gpt-3.5-turbo and text-davinci-003: hidden
    assert [m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]] == [MODEL]


def test_quirks_repaired(spawn: Spawner) -> None:
    r = start_rwkv(spawn, "--preload", MODEL_PATH, "--ping-seconds", "0.2", "--token-delay", "0.15")
    gw = spawn.gateway({"backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    # no stop from the client: the gateway sends an explicit list, so "\n\nA..." does not cut the answer
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]}])
    assert resp.choices[0].message.content == "Hello there.\n\nA second paragraph follows."
    assert resp.id.startswith("chatcmpl-") and resp.created > 0
    sent = r.requests()[-1]["body"]
    assert sent["stop"] == [] and sent["messages"][0]["content"] == "Say\nhello"
    # finish_reason "length" when max_tokens was used up (RWKV-Runner always says "stop")
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert resp.choices[0].finish_reason == "length" and resp.choices[0].message.content == "Hello there."
    with httpx.stream("POST", gw.v1 + "/chat/completions", json={
            "model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 3}) as s:
        raw = b"".join(s.iter_raw())
    assert b"\r\n" not in raw and b": ping" in raw  # CRLF framing normalised, keep-alive comments kept
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=3))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks)


def test_one_generation_at_a_time_with_a_bounded_queue(spawn: Spawner) -> None:
    r = start_rwkv(spawn, "--preload", MODEL_PATH)
    gw = spawn.gateway({"backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url, "max_queue": 1,
                                      "queue_timeout": 20}]})
    results: list[int] = []

    def call() -> None:
        results.append(httpx.post(gw.v1 + "/chat/completions", timeout=30, json={
            "model": MODEL, "messages": MESSAGES, "x_double": {"hold": True}}).status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]
    threads[0].start()
    wait_until(lambda: r.stats()["in_flight"] == 1)  # the first is generating (held) ...
    threads[1].start()
    wait_until(lambda: backend(gw.url)["limit"]["queued"] == 1)  # ... the second queued behind it
    b = backend(gw.url)
    assert b["limit"] == {"max_concurrency": 1, "in_use": 1, "queued": 1}
    assert r.stats()["in_flight"] == 1  # the second waits in the gateway, not on RWKV's lock
    third = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert third.status_code == 429 and third.headers["retry-after"]
    httpx.post(r.url + "/_release")
    for t in threads:
        t.join(20)
    assert results == [200, 200] and r.stats()["max_in_flight"] == 1


def test_swallowed_generation_error_is_not_an_answer(spawn: Spawner) -> None:
    # RWKV-Runner answers a generation that raised with an empty 200: the gateway makes it a 502 ...
    broken = start_rwkv(spawn, "--preload", MODEL_PATH, "--fail-generations")
    good = start_rwkv(spawn, "--preload", MODEL_PATH)
    gw = spawn.gateway({"upstream": {"max_attempts": 2},
                        "backends": [{"name": "broken", "kind": "rwkv-runner", "url": broken.url, "weight": 100},
                                     {"name": "good", "kind": "rwkv-runner", "url": good.url}]})
    body = {"model": MODEL, "messages": MESSAGES}
    resp = httpx.post(gw.v1 + "/chat/completions", json=body)  # ... and retries it elsewhere
    assert resp.status_code == 200 and resp.headers["x-llm-gateway-backend"] == "good"
    assert resp.json()["choices"][0]["message"]["content"]
    assert broken.stats()["failed"] == 1 and good.stats()["completed"] == 1  # tried first (weight 100)
    assert f'llm_gateway_retries_total{{model="{MODEL}"}} 1.0' in httpx.get(gw.url + "/metrics").text
    # nowhere else to go: the 502 reaches the client
    gw1 = spawn.gateway({"upstream": {"max_attempts": 1},
                         "backends": [{"name": "broken", "kind": "rwkv-runner", "url": broken.url}]})
    resp = httpx.post(gw1.v1 + "/chat/completions", json=body)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_generation_failed"


def test_not_loaded_backend_is_down_and_not_used(spawn: Spawner) -> None:
    r = start_rwkv(spawn)  # up, no model, no load: block
    gw = spawn.gateway({"backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url}]})
    b = backend(gw.url)
    assert b["state"] == "down" and "no model loaded" in b["detail"]
    assert httpx.get(gw.v1 + "/models").json()["data"] == []
    r404 = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert r404.status_code == 404 and r404.json()["error"]["code"] == "model_not_found"
    # not used: no generation was sent, and no model was loaded on it (no `load:` configured)
    assert [q["path"] for q in r.requests() if q["path"] != "/status"] == []
    assert r.stats()["status"] == 0 and r.stats()["switch_calls"] == 0
