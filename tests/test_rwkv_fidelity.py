"""RWKV-Runner through a running gateway, on the wire details of the protocol audit (issue 12:
defects 11-15 and 17). The double (tests/doubles/rwkv_server.py) reproduces backend-python v1.9.11;
each behaviour used here is cited in its code (tests/doubles/rwkv/generation.py, completions.py)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.procs import Double, Gateway, Spawner

MODEL_PATH = "models/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"
MODEL = "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096"
MESSAGES = [{"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
EMOJI4 = "\U0001F600" * 4  # 8 tokens: each emoji is two byte tokens (tests/doubles/rwkv/tokens.py byte_tokens)


def wait_until(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture(scope="module")
def rw(module_spawn: Spawner) -> tuple[Gateway, Double]:
    r = module_spawn.start_double("rwkv_server", "/status", "--preload", MODEL_PATH)
    gw = module_spawn.gateway({"backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url}]})
    return gw, r


def completions_sent(r: Double) -> list[dict[str, Any]]:
    return [q["body"] for q in r.requests() if q["path"].endswith("completions")]


def stream(gw: Gateway, **body: Any) -> tuple[list[dict[str, Any]], bytes]:
    """(every data event parsed as JSON, the raw bytes) of one streamed chat answer."""
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": MESSAGES, "stream": True, **body}) as s:
        assert s.status_code == 200
        raw = b"".join(s.iter_raw())
    events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: ") and e != b"data: [DONE]"]
    return [json.loads(e[6:]) for e in events], raw  # json.loads fails the test on a corrupted event


def finish(events: list[dict[str, Any]]) -> str:
    return [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]][-1]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


def completion_tokens(gw: Gateway) -> float:
    m = re.search(rf'llm_gateway_tokens_total\{{backend="rwkv",kind="completion",model="{MODEL}"\}} (\S+)',
                  httpx.get(gw.url + "/metrics").text)
    return float(m.group(1)) if m else 0.0


# -- defect 11: max_completion_tokens ---------------------------------------------------------------------


def test_max_completion_tokens_is_sent_as_max_tokens_and_judges_length(rw: tuple[Gateway, Double]) -> None:
    gw, r = rw
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2)
    # its ModelConfigBody knows only max_tokens: unmapped, the limit was ignored (the whole answer came back)
    assert resp.choices[0].message.content == "Hello there."
    assert resp.choices[0].finish_reason == "length"
    sent = completions_sent(r)[-1]
    assert sent["max_tokens"] == 2 and "max_completion_tokens" not in sent
    events, _ = stream(gw, max_completion_tokens=3)
    assert text_of(events) == "Hello there.\n\n" and finish(events) == "length"
    # an explicit null (SDKs send them) hides nothing, and the newer name wins over max_tokens
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2,
                                          extra_body={"max_completion_tokens": None})
    assert resp.choices[0].finish_reason == "length" and completions_sent(r)[-1]["max_tokens"] == 2
    events, _ = stream(gw, max_tokens=1, max_completion_tokens=50)
    assert finish(events) == "stop" and text_of(events) == "Hello there.\n\nA second paragraph follows."


# -- defect 12: "data: {" inside the generated text --------------------------------------------------------


@pytest.mark.parametrize("text", [
    'see data: {"a": 1} then data: [DONE] ok',  # <= 44 characters: held back, sent whole at the end
    'SSE lines look like data: {"a": 1}, and so on, then data: [DONE] at the very end of it.'])  # > 44: at once
def test_text_holding_sse_markers_streams_intact(rw: tuple[Gateway, Double], text: str) -> None:
    gw, r = rw
    # Given tools, RWKV-Runner holds an RWKV model's answer back until it can tell text from a tool
    # call, then sends it in ONE event (routes/completion.py async_generator_stream_response_tool_call):
    # the event's JSON string then holds "data: {" itself (nothing in it needs escaping).
    direct = httpx.post(r.url + "/v1/chat/completions", timeout=30, json={
        "messages": MESSAGES, "stream": True, "stop": [], "tools": TOOLS, "x_double": {"text": text}}).content
    assert b'data: {\\"a\\": 1}' in direct
    events, raw = stream(gw, tools=TOOLS, x_double={"text": text})
    assert text_of(events) == text  # every event parsed: nothing was spliced into the text
    assert finish(events) == "stop"
    assert len({e["id"] for e in events}) == 1 and all(e["created"] > 0 for e in events)
    assert raw.count(b"data: [DONE]\n\n") == 1 and raw.endswith(b"data: [DONE]\n\n")
    chunks = list(openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, tools=TOOLS, extra_body={"x_double": {"text": text}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


# -- defect 13: tokens that split a character yield no chunk -----------------------------------------------


def test_a_cut_inside_split_characters_is_length_and_counted(rw: tuple[Gateway, Double]) -> None:
    gw, r = rw
    # the double, as backend-python: 5 tokens generated but only 2 chunks (the 5th is half an emoji)
    direct = httpx.post(r.url + "/v1/chat/completions", timeout=30, json={
        "messages": MESSAGES, "max_tokens": 5, "stop": [], "x_double": {"text": EMOJI4}}).json()
    assert direct["choices"][0]["message"]["content"] == "\U0001F600" * 2
    before = completion_tokens(gw)
    events, _ = stream(gw, max_tokens=5, x_double={"text": EMOJI4})
    assert text_of(events) == "\U0001F600" * 2
    assert finish(events) == "length"  # 2 chunks < 5, yet the generation was cut at its limit
    wait_until(lambda: completion_tokens(gw) > before, "token metrics never recorded")
    assert completion_tokens(gw) - before == 5  # a cut generation used its whole limit
    # a natural end is still "stop": its last chunk has an empty delta, a cut's has none
    events, _ = stream(gw, max_tokens=50, x_double={"text": EMOJI4 + " ok"})
    assert text_of(events) == EMOJI4 + " ok" and finish(events) == "stop"


# -- defect 14: usage the client asked for --------------------------------------------------------------------


def test_stream_usage_is_not_invented(rw: tuple[Gateway, Double]) -> None:
    gw, _ = rw
    # RWKV streams carry no usage, and the gateway's chunk count is an estimate without prompt tokens:
    # a client asking for usage gets a valid stream without a usage chunk (README), not invented numbers
    chunks = list(openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


# -- defect 17: response_format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [{"type": "json_object"},
                                 {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}])
def test_structured_output_is_refused_before_the_backend(rw: tuple[Gateway, Double], fmt: dict) -> None:
    gw, r = rw
    sent = len(completions_sent(r))
    resp = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MESSAGES,
                                                          "response_format": fmt})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "unsupported_parameter" and "response_format" in err["message"]
    assert len(completions_sent(r)) == sent  # refused before any backend was called
    # the double, as RWKV-Runner, would have ignored it (ChatCompletionBody has no such field): a 200
    assert httpx.post(r.url + "/v1/chat/completions", json={"messages": MESSAGES, "response_format": fmt},
                      timeout=30).status_code == 200
    plain = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MESSAGES,
                                                           "response_format": {"type": "text"}})
    assert plain.status_code == 200


# -- defect 15: Albatross batches; a prefill blocks /status ---------------------------------------------------


def test_albatross_strategy_serves_its_batch_at_once(spawn: Spawner, tmp_path: Path) -> None:
    weights = tmp_path / f"{MODEL}.pth"
    weights.write_bytes(b"fake weights")
    r = spawn.start_double("rwkv_server", "/status", "--load-seconds", "0")
    gw = spawn.gateway({"health": {"interval": 0.2, "not_ready_interval": 0.1},
                        "backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url,
                                      "load": {"model": str(weights), "strategy": "albatross workers=1 batch=3"}}]})
    wait_until(lambda: httpx.get(gw.url + "/admin/backends").json()["backends"][0]["state"] == "ready", "not ready")
    assert httpx.get(gw.url + "/admin/backends").json()["backends"][0]["limit"]["max_concurrency"] == 3
    results: list[int] = []

    def call() -> None:
        results.append(httpx.post(gw.v1 + "/chat/completions", timeout=60, json={
            "model": MODEL, "messages": MESSAGES, "x_double": {"hold": True}}).status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: r.stats()["in_flight"] == 2, "the second request did not reach the batched backend")
    httpx.post(r.url + "/_release")
    for t in threads:
        t.join(30)
    assert results == [200, 200]
    # its compact stream framing is repaired like the legacy one's; a count >= the limit is a cut
    events, raw = stream(gw, max_tokens=2)
    assert text_of(events) == "Hello there." and finish(events) == "length" and b"\r\n" not in raw


def test_a_prefill_that_blocks_status_does_not_take_the_backend_down(spawn: Spawner) -> None:
    r = spawn.start_double("rwkv_server", "/status", "--preload", MODEL_PATH)
    gw = spawn.gateway({"health": {"interval": 0.2, "timeout": 0.5},
                        "backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": r.url}]})
    wait_until(lambda: httpx.get(gw.url + "/admin/backends").json()["backends"][0]["state"] == "ready", "not ready")
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(httpx.post(gw.v1 + "/chat/completions", timeout=60, json={
        "model": MODEL, "messages": MESSAGES, "x_double": {"prefill_block": 4}}).status_code))
    t.start()
    seen: list[tuple[str, str]] = []
    while t.is_alive():  # the prefill holds the double's event loop 4 s: 8x the probe timeout
        b = httpx.get(gw.url + "/admin/backends").json()["backends"][0]
        seen.append((b["state"], b["detail"]))
        time.sleep(0.05)
    t.join()
    assert done == [200]
    assert any("busy" in d for _, d in seen), "no probe timed out during the prefill"
    assert {s for s, _ in seen} == {"ready"}, seen
