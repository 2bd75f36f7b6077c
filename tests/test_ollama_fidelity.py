"""Ollama protocol fidelity through a running gateway (issue 12, protocol-audit defects 1-7, 23, 24).

Each test drives the gateway with the official `openai` client (or httpx where a raw field matters)
in front of the Ollama double, and checks both what the client gets and what Ollama was sent.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest

from tests.procs import Double, Gateway, Spawner

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}} for n in ("get_weather", "get_time")]
TWO_CALLS = {"tool_call": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                           {"name": "get_time", "arguments": {"city": "Rome"}}]}
HI = [{"role": "user", "content": "Hi"}]


def start(spawn: Spawner, *args: str, **backend: Any) -> tuple[Double, Gateway, openai.OpenAI]:
    o = spawn.start_double("ollama_server", "/api/version", "--models", "llama3.2,qwen3", "--thinking-models",
                           "qwen3", "--vision-models", "llama3.2", "--embed-models", "nomic-embed-text",
                           "--loaded", "llama3.2", *args)
    gw = spawn.gateway({"backends": [{"name": "o", "kind": "ollama", "url": o.url, **backend}]})
    return o, gw, openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)


def sent(o: Double, path: str = "/api/chat") -> dict:
    return [r for r in o.requests() if r["path"] == path][-1]["body"]


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> tuple[Double, Gateway, openai.OpenAI]:
    return start(module_spawn)


def test_streamed_parallel_tool_calls_keep_their_stream_wide_index(env: Any) -> None:
    """Defect 1: one call per NDJSON line; each must keep Ollama's function.index, or clients merge them."""
    o, gw, client = env
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=HI, tools=TOOLS, stream=True,
                                                 extra_body={"x_double": TWO_CALLS}))
    calls: dict[int, dict] = {}  # the openai SDK's and LangChain's accumulation: by index
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            acc = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            acc["id"] += tc.id or ""
            acc["name"] += tc.function.name or ""
            acc["arguments"] += tc.function.arguments or ""
    assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"city": "Rome"})]
    assert calls[0]["id"] != calls[1]["id"] and all(v["id"].startswith("call_") for v in calls.values())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    r = client.chat.completions.create(model="llama3.2:latest", messages=HI, tools=TOOLS,
                                       extra_body={"x_double": TWO_CALLS})
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_weather", "get_time"]


def test_tool_call_ids_names_and_reasoning_go_back_to_ollama(env: Any) -> None:
    """Defect 2: ids, tool_call_id, the tool's name (resolved from the id) and reasoning -> thinking."""
    o, gw, client = env
    history = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Two tools.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "assistant", "content": "Sunny, noon.", "reasoning": "Done."},
        {"role": "user", "content": "Thanks"}]
    client.chat.completions.create(model="llama3.2:latest", messages=history, tools=TOOLS)
    msgs = sent(o)["messages"]
    assert msgs[1] == {"role": "assistant", "content": "", "thinking": "Two tools.", "tool_calls": [
        {"id": "call_a", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_b", "function": {"index": 1, "name": "get_time", "arguments": {"city": "Paris"}}}]}
    assert msgs[2] == {"role": "tool", "content": "12:00", "tool_name": "get_time", "tool_call_id": "call_b"}
    assert msgs[3] == {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_a"}
    assert msgs[4] == {"role": "assistant", "content": "Sunny, noon.", "thinking": "Done."}
    # a tool message that names its tool keeps that name; an unknown id leaves the name out (Ollama's own rule)
    client.chat.completions.create(model="llama3.2:latest", messages=[
        *history[:2], {"role": "tool", "tool_call_id": "call_a", "name": "weather_v2", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_zzz", "content": "?"}])
    assert sent(o)["messages"][2:] == [
        {"role": "tool", "content": "sunny", "tool_name": "weather_v2", "tool_call_id": "call_a"},
        {"role": "tool", "content": "?", "tool_call_id": "call_zzz"}]


def test_untagged_and_differently_cased_names_reach_the_latest_tag(env: Any) -> None:
    """Defect 3: Ollama reads `llama3.2` as `llama3.2:latest`, case-insensitively (types/model/name.go)."""
    o, gw, client = env
    for name in ("llama3.2", "LLaMA3.2", "llama3.2:LATEST", "library/llama3.2", "registry.ollama.ai/library/llama3.2"):
        r = client.chat.completions.create(model=name, messages=HI, max_tokens=1)
        assert r.choices[0].message.content, name
        assert sent(o)["model"] == "llama3.2:latest"  # the name Ollama reported, whatever the spelling
    assert client.models.retrieve("Llama3.2").id == "llama3.2:latest"
    for name in ("llama3.2:1b", "llama3", "qwen3:latest:x"):  # another tag is another model
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=name, messages=HI)
    assert "llama3.2" not in [m.id for m in client.models.list().data]  # listed once, by its real name


def test_short_names_only_for_ollama_backends(spawn: Spawner) -> None:
    """Defect 3: the folding is Ollama's rule; an OpenAI-compatible backend's names stay exact."""
    up = spawn.start_double("openai_server", "/v1/models", "--models", "Qwen/Qwen2.5:latest")
    gw = spawn.gateway({"backends": [{"name": "v", "kind": "openai", "url": up.url}]})
    ok = httpx.post(gw.v1 + "/chat/completions", json={"model": "Qwen/Qwen2.5:latest", "messages": HI})
    assert ok.status_code == 200, ok.text
    for name in ("qwen/qwen2.5:latest", "Qwen/Qwen2.5"):
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": name, "messages": HI})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", name


def test_embedding_dimensions_reach_api_embed(env: Any) -> None:
    """Defect 4: `dimensions` truncates the vectors (api/types.go EmbedRequest.Dimensions)."""
    o, gw, client = env
    e = client.embeddings.create(model="nomic-embed-text:latest", input=["a", "b"], dimensions=8)
    assert [len(d.embedding) for d in e.data] == [8, 8]
    assert sent(o, "/api/embed")["dimensions"] == 8
    full = client.embeddings.create(model="nomic-embed-text:latest", input="a")
    assert len(full.data[0].embedding) > 8 and "dimensions" not in sent(o, "/api/embed")


def test_reasoning_effort_becomes_think(env: Any) -> None:
    """Defect 5: reasoning_effort / reasoning.effort -> think, as Ollama's OpenAI layer maps them."""
    o, gw, client = env
    r = client.chat.completions.create(model="qwen3:latest", messages=HI, reasoning_effort="none")
    assert sent(o)["think"] is False and "reasoning_content" not in r.choices[0].message.model_dump()
    for body, think in (({"reasoning_effort": "minimal"}, "low"), ({"reasoning_effort": "high"}, "high"),
                        ({"reasoning": {"effort": "xhigh"}}, "max"), ({"reasoning_effort": "ultra"}, "max"),
                        ({"reasoning": {"effort": "low"}, "reasoning_effort": "high"}, "low")):
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "qwen3:latest", "messages": HI, **body})
        assert r.status_code == 200 and sent(o)["think"] == think, (body, r.text)
        assert "reasoning" not in sent(o)  # not forwarded as an unknown field
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "qwen3:latest", "messages": HI,
                                                       "reasoning_effort": "none", "think": True})
    assert r.status_code == 200 and sent(o)["think"] is True  # Ollama's own field, when sent, wins
    n = len(o.requests())
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "qwen3:latest", "messages": HI,
                                                       "reasoning_effort": "extreme"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort" and len(o.requests()) == n
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest", "messages": HI,
                                                       "reasoning_effort": "none"})
    assert r.status_code == 200  # think=false is fine on a model without thinking


def test_logprobs_are_translated(env: Any) -> None:
    """Defect 6: /api/chat and /api/generate return logprobs; they leave in OpenAI's shapes."""
    o, gw, client = env
    r = client.chat.completions.create(model="llama3.2:latest", messages=HI, max_tokens=2, logprobs=True,
                                       top_logprobs=2)
    assert sent(o)["logprobs"] is True and sent(o)["top_logprobs"] == 2
    lp = r.choices[0].logprobs.content
    assert [t.token for t in lp] == ["Hello", " from"] and len(lp[0].top_logprobs) == 2
    assert lp[1].bytes == list(b" from") and lp[0].logprob <= 0
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=HI, max_tokens=2, stream=True,
                                                 logprobs=True))
    toks = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert toks == ["Hello", " from"]
    c = client.completions.create(model="llama3.2:latest", prompt="Once", max_tokens=2, logprobs=1)
    legacy = c.choices[0].logprobs
    assert legacy.tokens == ["Hello", " from"] and legacy.text_offset == [0, 5] and len(legacy.token_logprobs) == 2
    assert sent(o, "/api/generate")["top_logprobs"] == 1 and list(legacy.top_logprobs[0]) == ["Hello"]
    pieces = [ch.choices[0].logprobs for ch in client.completions.create(
        model="llama3.2:latest", prompt="Once", max_tokens=3, logprobs=0, stream=True) if ch.choices[0].logprobs]
    assert [(p.tokens, p.text_offset) for p in pieces] == [(["Hello"], [0]), ([" from"], [5]), ([" ollama,"], [10])]
    assert pieces[0].top_logprobs is None and "top_logprobs" not in sent(o, "/api/generate")
    plain = client.chat.completions.create(model="llama3.2:latest", messages=HI, max_tokens=1)
    assert plain.choices[0].logprobs is None and "logprobs" not in sent(o)


def test_string_image_url_is_accepted_and_bad_parts_are_400(env: Any) -> None:
    """Defect 7: Ollama's OpenAI layer also takes `"image_url": "<data URL>"`; nothing here may be a 500."""
    o, gw, client = env
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    parts = [{"type": "text", "text": "What is it?"},
             {"type": "image_url", "image_url": f"data:image/png;base64,{png}"}]
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest",
                                                       "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 200, r.text
    assert sent(o)["messages"] == [{"role": "user", "content": "What is it?", "images": [png]}]
    for bad in (42, {"url": 42}, ["x"], "https://example.com/cat.png", {"detail": "high"}):
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": bad}]}]})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (bad, r.text)


def test_null_max_completion_tokens_does_not_hide_max_tokens(env: Any) -> None:
    """Defect 23: SDKs may send explicit nulls for unset fields."""
    o, gw, client = env
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest", "messages": HI,
                                                       "max_completion_tokens": None, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert sent(o)["options"]["num_predict"] == 2
    httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest", "messages": HI,
                                                  "max_completion_tokens": 3, "max_tokens": 2})
    assert sent(o)["options"]["num_predict"] == 3  # the modern field wins when both are set


def test_reasoning_field_name(spawn: Spawner) -> None:
    """Defect 24: `reasoning_content` by default (as before, as llama.cpp); `reasoning_field` renames it."""
    o, gw, client = start(spawn)
    r = client.chat.completions.create(model="qwen3:latest", messages=HI)
    assert r.choices[0].message.model_dump()["reasoning_content"] == "Let me think about this."
    _, gw2, client2 = start(spawn, reasoning_field="reasoning")
    r = client2.chat.completions.create(model="qwen3:latest", messages=HI)
    dump = r.choices[0].message.model_dump()
    assert dump["reasoning"] == "Let me think about this." and "reasoning_content" not in dump
    chunks = list(client2.chat.completions.create(model="qwen3:latest", messages=HI, stream=True))
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    assert "".join(d.get("reasoning") or "" for d in deltas) == "Let me think about this."
    assert not any("reasoning_content" in d for d in deltas)
