"""Streams arrive chunk by chunk; least-outstanding balancing; truncated upstream streams."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from tests.procs import Spawner

MESSAGES = [{"role": "user", "content": "hi"}]


def wait_for(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_first_chunk_reaches_client_before_upstream_sends_the_last(spawn: Spawner) -> None:
    up = spawn.double("held", "m")
    gw = spawn.gateway({"backends": [{"name": "held", "kind": "vllm", "url": up.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=10)
    # The double sends its first content chunk, then waits until released: if the gateway buffered
    # anything, the client could not see that chunk (and this test would time out).
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            extra_body={"x_double": {"hold": True}})
    it = iter(stream)
    first = next(it)
    assert first.choices[0].delta.role == "assistant"
    second = next(it)
    assert second.choices[0].delta.content == "Hello"
    assert up.stats()["completed"] == 0 and up.stats()["in_flight"] == 1  # upstream still mid-answer
    up.release()
    rest = "".join(c.choices[0].delta.content or "" for c in it if c.choices)
    assert rest == " from held, this is a streamed answer"
    assert up.stats()["completed"] == 1


def test_least_outstanding_balancing_over_two_upstreams(spawn: Spawner) -> None:
    a = spawn.double("a", "pool-model")
    b = spawn.double("b", "pool-model")
    gw = spawn.gateway({"backends": [{"name": "a", "kind": "openai", "url": a.url},
                                     {"name": "b", "kind": "openai", "url": b.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=15)

    # One long request occupies one replica ...
    held: dict[str, str] = {}

    def long_request() -> None:
        raw = client.chat.completions.with_raw_response.create(
            model="pool-model", messages=MESSAGES, extra_body={"x_double": {"hold": True}})
        held["backend"] = raw.headers["x-llm-gateway-backend"]

    t = threading.Thread(target=long_request)
    t.start()
    wait_for(lambda: a.stats()["in_flight"] + b.stats()["in_flight"] == 1)
    busy, idle = (a, b) if a.stats()["in_flight"] == 1 else (b, a)
    # ... so every short request meanwhile goes to the other (round robin would alternate).
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(model="pool-model", messages=MESSAGES)
        assert raw.headers["x-llm-gateway-backend"] == idle.name
    assert idle.stats()["completed"] == 5 and busy.stats()["completed"] == 0
    busy.release()
    t.join(10)
    assert held["backend"] == busy.name

    # Concurrent held requests spread evenly: 3 each.
    a.reset(), b.reset()
    threads = [threading.Thread(target=lambda: client.chat.completions.create(
        model="pool-model", messages=MESSAGES, extra_body={"x_double": {"hold": True}})) for _ in range(6)]
    for th in threads:
        th.start()
    wait_for(lambda: a.stats()["in_flight"] + b.stats()["in_flight"] == 6)
    assert a.stats()["in_flight"] == 3 and b.stats()["in_flight"] == 3
    a.release(), b.release()
    for th in threads:
        th.join(10)


def test_weighted_least_outstanding(spawn: Spawner) -> None:
    a = spawn.double("wa", "m")
    b = spawn.double("wb", "m")
    gw = spawn.gateway({"backends": [{"name": "wa", "kind": "openai", "url": a.url, "weight": 2},
                                     {"name": "wb", "kind": "openai", "url": b.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=15)
    threads = [threading.Thread(target=lambda: client.chat.completions.create(
        model="m", messages=MESSAGES, extra_body={"x_double": {"hold": True}})) for _ in range(6)]
    for th in threads:
        th.start()
    wait_for(lambda: a.stats()["in_flight"] + b.stats()["in_flight"] == 6)
    assert (a.stats()["in_flight"], b.stats()["in_flight"]) == (4, 2)
    a.release(), b.release()
    for th in threads:
        th.join(10)


def test_upstream_dying_mid_stream_ends_with_error_event_and_done(spawn: Spawner) -> None:
    up = spawn.double("dies", "m")
    gw = spawn.gateway({"backends": [{"name": "dies", "kind": "vllm", "url": up.url}]})
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=10, json={
            "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"truncate": True}}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    err = json.loads(events[-2][len("data:"):])["error"]  # the OpenAI envelope, as an event
    assert set(err) == {"message", "type", "param", "code"}, err
    assert (err["type"], err["code"]) == ("server_error", "upstream_disconnected"), err  # the connection dropped
    assert '"content":"Hello"' in events[1]  # what arrived before the failure was delivered
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'llm_gateway_streams_truncated_total{backend="dies"} 1.0' in metrics


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_upstream_request(spawn: Spawner, stream: bool) -> None:
    up = spawn.double("cancel", "m")
    gw = spawn.gateway({"backends": [{"name": "cancel", "kind": "vllm", "url": up.url}]})
    body = json.dumps({"model": "m", "messages": MESSAGES, "stream": stream, "x_double": {"hold": True}})
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    wait_for(lambda: up.stats()["in_flight"] == 1)
    if stream:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream had begun
    sock.close()  # the client goes away mid-answer
    # The upstream holds until released, which never happens: only a cancellation ends it.
    wait_for(lambda: up.stats()["cancelled"] == 1, timeout=20)
    assert up.stats()["in_flight"] == 0 and up.stats()["completed"] == 0


@pytest.mark.parametrize("kind", ["vllm", "tgi"])
def test_a_lone_first_event_is_not_held_back(spawn: Spawner, kind: str) -> None:
    # The upstream sends one event, then nothing for a while: that event must reach the client at
    # once (the keepalive wait, and TGI's peek, read it before the relay starts).
    if kind == "vllm":  # the role event, then a 5 s gap before each of the next ones
        up = spawn.double("paced", "m")
        extra = {"x_double": {"chunks": 1, "delay": 5.0}}
    else:  # one token, then nothing until the test releases it
        up = spawn.start_double("tgi_server", "/health", "--model-id", "m")
        extra = {"max_tokens": 3, "x_double": {"hold_after": 1}}
    gw = spawn.gateway({"backends": [{"name": "paced", "kind": kind, "url": up.url}]})
    started = time.monotonic()
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30,
                      json={"model": "m", "messages": MESSAGES, "stream": True, **extra}) as r:
        lines = r.iter_lines()
        first = next(ln for ln in lines if ln.startswith("data:"))
        waited = time.monotonic() - started
        assert '"choices"' in first
        if kind == "tgi":
            # It arrived while the upstream still holds the rest (it is released only now), so
            # nothing after it was needed to push it out.
            wait_for(lambda: up.stats()["held"] == 1)
            up.release()
        else:  # held back, it would come with the next event, >= 5 s late; ~0.05 s when not
            assert waited < 2.5, waited
        rest = [ln for ln in lines if ln.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
