"""TGI behind the gateway (tests/doubles/tgi_server.py reproduces its wire format): overload
retried elsewhere or answered 429, in-band errors, quirks repaired, limits from /info."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.procs import Double, Spawner

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "Hello there"}]


def start_tgi(spawn: Spawner, *extra: str) -> Double:
    return spawn.start_double("tgi_server", "/health", "--model-id", MODEL, "--max-input-tokens", "100",
                              "--max-total-tokens", "200", *extra)


def hold_one(t: Double) -> threading.Thread:
    """Occupy the double's only permit with a request the gateway does not know about."""
    th = threading.Thread(target=lambda: httpx.post(t.url + "/generate", timeout=30, json={
        "inputs": "hi", "parameters": {"max_new_tokens": 2}, "x_double": {"hold": True}}))
    th.start()
    deadline = time.monotonic() + 10
    while t.stats()["in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return th


@pytest.mark.parametrize("stream", [False, True])
def test_overload_is_retried_on_another_replica(spawn: Spawner, stream: bool) -> None:
    busy = start_tgi(spawn, "--max-concurrent-requests", "1")
    free = start_tgi(spawn)
    gw = spawn.gateway({"backends": [{"name": "busy", "kind": "tgi", "url": busy.url, "weight": 100},
                                     {"name": "free", "kind": "tgi", "url": free.url}]})
    th = hold_one(busy)
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    if stream:
        # TGI reports this overload inside an HTTP 200 stream: the gateway peeks and retries
        with client.chat.completions.with_streaming_response.create(model=MODEL, messages=MESSAGES,
                                                                    stream=True) as raw:
            assert raw.headers["x-llm-gateway-backend"] == "free"
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.headers["x-llm-gateway-backend"] == "free"
        text = raw.parse().choices[0].message.content
    assert text.startswith("Hello from tgi")
    assert busy.stats()["overloaded"] == 1  # it was tried first (weight 100) and refused
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'llm_gateway_retries_total{model="meta-llama/Llama-3.1-8B-Instruct"} 1.0' in metrics
    busy.release()
    th.join(10)


@pytest.mark.parametrize("stream", [False, True])
def test_overload_everywhere_is_429_with_retry_after(spawn: Spawner, stream: bool) -> None:
    busy = start_tgi(spawn, "--max-concurrent-requests", "1")
    gw = spawn.gateway({"backends": [{"name": "busy", "kind": "tgi", "url": busy.url}]})
    th = hold_one(busy)
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MESSAGES, "stream": stream})
    assert r.status_code == 429 and r.headers["retry-after"]
    assert r.json()["error"]["type"] == "rate_limit_error"
    busy.release()
    th.join(10)


def test_in_band_generation_error_becomes_an_openai_error_event(spawn: Spawner) -> None:
    t = start_tgi(spawn)
    gw = spawn.gateway({"backends": [{"name": "t", "kind": "tgi", "url": t.url}]})
    with httpx.stream("POST", gw.v1 + "/chat/completions", json={
            "model": MODEL, "messages": MESSAGES, "stream": True, "x_double": {"fail_after": 2}}) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("data")]
    assert events[-1] in ("data: [DONE]", "data:[DONE]")
    err = httpx.Response(200, content=events[-2].split(":", 1)[1]).json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert '"content":"Hello"' in events[0] or '"content":"Hello"' in events[1]


def test_quirks_repaired(spawn: Spawner) -> None:
    t = start_tgi(spawn)
    gw = spawn.gateway({"backends": [{"name": "t", "kind": "tgi", "url": t.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    # top_p 1.0 is a 422 on TGI; presence_penalty 0 would become repetition_penalty 2.0
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, top_p=1.0, presence_penalty=0.0)
    assert r.id.startswith("chatcmpl-") and r.choices[0].finish_reason == "stop"
    sent = t.requests()[-1]["body"]
    assert sent["model"] == "tgi" and "top_p" not in sent and "presence_penalty" not in sent
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", stream=True))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.choices[0].finish_reason in (None, "stop") for c in chunks if c.choices)


def test_context_overflow_and_limits_from_info(spawn: Spawner) -> None:
    t = start_tgi(spawn)
    gw = spawn.gateway({"health": {"interval": 0.2}, "backends": [{"name": "t", "kind": "tgi", "url": t.url}]})
    card = httpx.get(gw.v1 + "/models").json()["data"][0]
    assert card["id"] == MODEL and card["context_length"] == 200
    long = " ".join(["word"] * 150)
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # TGI's queue/batch gauges exist once a request has run: then the probe reports load
    openai.OpenAI(base_url=gw.v1, api_key="x").chat.completions.create(model=MODEL, messages=MESSAGES)
    deadline = time.monotonic() + 10
    while (b := httpx.get(gw.url + "/admin/backends").json()["backends"][0])["reported_load"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert b["version"] == "3.3.6-dev0" and b["reported_load"] == 0.0


def test_valid_openai_bodies_tgi_would_reject(spawn: Spawner) -> None:
    t = start_tgi(spawn)
    gw = spawn.gateway({"backends": [{"name": "t", "kind": "tgi", "url": t.url}]})
    r = httpx.post(gw.v1 + "/chat/completions", json={
        "model": MODEL, "messages": MESSAGES, "stop": "\n\n", "logit_bias": {"50256": -100},
        "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text
    sent = t.requests()[-1]["body"]
    assert sent["stop"] == ["\n\n"] and "logit_bias" not in sent and "response_format" not in sent


@pytest.mark.parametrize("legacy", [False, True])
def test_completions_through_native_generate_where_v1_completions_is_missing(spawn: Spawner, legacy: bool) -> None:
    t = start_tgi(spawn, "--no-openai-completions", *(["--legacy-sse"] if legacy else []))
    assert httpx.post(t.url + "/v1/completions", json={"prompt": "x"}).status_code == 404
    gw = spawn.gateway({"backends": [{"name": "t", "kind": "tgi", "url": t.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3)
    assert r.choices[0].text == "Hello from tgi," and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 3
    assert t.requests()[-1]["path"] == "/generate"
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello from tgi,"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3
    assert t.requests()[-1]["path"] == "/generate_stream"
    plain = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, stream=True))
    assert all(c.usage is None and c.choices for c in plain)  # not asked for: stripped
