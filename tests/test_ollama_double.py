"""The Ollama double (tests/doubles/ollama_server.py) as a real process, checked with the official clients.

Every answer is parsed by the `ollama` PyPI client (pydantic models; tested with ollama==0.6.3) or the
`openai` SDK, so the double cannot drift from what real clients accept. Wire details (header, key order,
omitted zero metrics, the mid-stream error line) are checked on the raw bytes with httpx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
from typing import Any

import httpx
import ollama  # the official client: a pinned [test] dependency, so an import failure fails (never skips)
import openai
import pytest

from tests.procs import Double, Spawner, free_port

MODELS = "llama3.2,qwen2.5:0.5b"
LOAD_SECONDS = 0.3
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a given city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}]
TOOL_KNOB = {"tool_call": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def start_ollama(spawner: Spawner, *extra: str, models: str = MODELS) -> Double:
    port = free_port()
    p = spawner.proc([sys.executable, "-m", "tests.doubles.ollama_server", "--port", str(port),
                      "--models", models, *extra], f"ollama-{port}")
    p.wait_http(f"http://127.0.0.1:{port}/")
    return Double(p, port, "ollama")


@pytest.fixture(scope="module")
def od(module_spawn: Spawner) -> Double:
    return start_ollama(module_spawn, "--embed-models", "nomic-embed-text", "--loaded", "llama3.2",
                        "--load-seconds", str(LOAD_SECONDS), "--num-parallel", "4")


@pytest.fixture
def client(od: Double) -> Any:
    with ollama.Client(host=od.url) as c:
        yield c


def ps_names(c: Any) -> list[str]:
    return [m.model for m in c.ps().models]


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def last_request(od: Double, path: str) -> dict:
    return [r for r in od.requests() if r["path"] == path][-1]


# --- liveness, listing, inspection ---------------------------------------------------------------

def test_root_version_and_gin_defaults(od: Double) -> None:
    r = httpx.get(od.url + "/")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "Ollama is running",
                                                                   "text/plain; charset=utf-8")
    assert httpx.head(od.url + "/").status_code == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", httpx.get(od.url + "/api/version").json()["version"])
    r = httpx.get(od.url + "/api/nope")
    assert (r.status_code, r.text) == (404, "404 page not found")
    r = httpx.get(od.url + "/api/chat")
    assert (r.status_code, r.text) == (405, "405 method not allowed")


def test_list_ps_show_with_official_client(client: Any) -> None:
    tags = client.list()
    assert [m.model for m in tags.models] == ["llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    m = tags.models[0]
    assert m.details.family == "llama" and m.details.parameter_size == "3.2B" and m.size > 0
    assert re.fullmatch(r"[0-9a-f]{64}", m.digest) and m.modified_at.tzinfo is not None
    ps = client.ps()
    assert "llama3.2:latest" in [p.model for p in ps.models]  # --loaded
    p = [p for p in ps.models if p.model == "llama3.2:latest"][0]
    assert p.context_length == 4096 and p.size_vram == p.size and p.expires_at.timestamp() > time.time()
    show = client.show("llama3.2")
    assert show.capabilities == ["completion", "tools"]
    assert show.modelinfo["llama.context_length"] == 131072
    assert show.modelinfo["general.architecture"] == "llama"
    assert client.show("nomic-embed-text").capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert (e.value.status_code, e.value.error) == (404, "model 'nope:latest' not found")


# --- chat / generate ------------------------------------------------------------------------------

def test_chat_stream_is_default_ndjson_with_final_metrics(od: Double, client: Any) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}  # no "stream": default on
    with httpx.stream("POST", od.url + "/api/chat", json=body) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert len(lines) > 2 and all(not x["done"] for x in lines[:-1])
    assert list(lines[0]) == ["model", "created_at", "message", "done"]  # zero metrics omitted
    final = lines[-1]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", "total_duration",
                           "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                           "eval_duration"]
    assert final["message"] == {"role": "assistant", "content": ""} and final["done_reason"] == "stop"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", final["created_at"])

    parts = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert all(isinstance(p, ollama.ChatResponse) for p in parts)
    text = "".join(p.message.content for p in parts)
    assert text == "Hello from ollama, this is a streamed answer"
    last = parts[-1]
    assert last.done and last.done_reason == "stop" and last.eval_count == len(parts) - 1
    for k in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(last, k), int) and getattr(last, k) > 0
    assert last.total_duration >= last.load_duration + last.eval_duration


def test_chat_non_stream_options_and_model_echo(od: Double, client: Any) -> None:
    r = client.chat(model="LLAMA3.2:Latest", messages=[{"role": "user", "content": "Hi"}],
                    options={"num_predict": 3, "temperature": 0.2, "seed": 42})
    assert r.model == "LLAMA3.2:Latest"  # echoed exactly as sent; matching is case-insensitive
    assert (r.message.content, r.done_reason, r.eval_count) == ("Hello from ollama,", "length", 3)
    rec = last_request(od, "/api/chat")
    assert rec["body"]["stream"] is False
    assert rec["options"] == {"num_predict": 3, "temperature": 0.2, "seed": 42}
    r = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], options={"stop": [" this"]})
    assert (r.message.content, r.done_reason) == ("Hello from ollama,", "stop")


def test_num_ctx_reloads_and_shows_in_ps(od: Double, client: Any) -> None:
    r = client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "Hi"}], options={"num_ctx": 8192})
    assert r.done and last_request(od, "/api/chat")["num_ctx"] == 8192
    assert [m.context_length for m in client.ps().models if m.model == "qwen2.5:0.5b"] == [8192]
    r = client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "Hi"}], options={"num_ctx": 2048})
    assert r.load_duration >= LOAD_SECONDS * 1e9  # a different num_ctx reloads the runner
    assert [m.context_length for m in client.ps().models if m.model == "qwen2.5:0.5b"] == [2048]


def test_generate_stream_and_context(client: Any) -> None:
    parts = list(client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=True))
    assert all(isinstance(p, ollama.GenerateResponse) for p in parts)
    assert "".join(p.response for p in parts) == "Hello from ollama, this is a streamed answer"
    last = parts[-1]
    assert last.done and last.done_reason == "stop" and last.context and all(isinstance(t, int) for t in last.context)
    assert all(p.context is None for p in parts[:-1])
    r = client.generate(model="llama3.2", prompt="Why?", options={"num_predict": 2})
    assert (r.response, r.done_reason, r.eval_count) == ("Hello from", "length", 2) and r.context


def test_tool_calls_arguments_are_objects(od: Double, client: Any) -> None:
    msgs = [{"role": "user", "content": "what is the weather in tokyo?"}]
    parts = list(client.chat(model="llama3.2", messages=msgs, tools=TOOLS, stream=True,
                             options={"x_double": TOOL_KNOB}))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Tokyo"}
    assert parts[-1].done_reason == "stop"
    r = client.chat(model="llama3.2", messages=msgs, tools=TOOLS, options={"x_double": TOOL_KNOB})
    assert r.message.content == "" and r.message.tool_calls[0].function.arguments == {"city": "Tokyo"}
    raw = httpx.post(od.url + "/api/chat", json={"model": "llama3.2", "messages": msgs, "tools": TOOLS,
                                                 "stream": False, "x_double": TOOL_KNOB}).json()
    call = raw["message"]["tool_calls"][0]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    assert raw["done_reason"] == "stop"


def test_parallel_tool_calls_one_per_line_with_stream_wide_index(od: Double, client: Any) -> None:
    """Real Ollama streams each parsed call on its own line, numbered across the stream (tools/tools.go:148-157)."""
    two = {"tool_call": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                         {"name": "get_weather", "arguments": {"city": "Rome"}}]}
    msgs = [{"role": "user", "content": "weather in Paris and Rome?"}]
    parts = list(client.chat(model="llama3.2", messages=msgs, tools=TOOLS, stream=True, options={"x_double": two}))
    assert [[c.function.arguments["city"] for c in p.message.tool_calls] for p in parts if p.message.tool_calls] \
        == [["Paris"], ["Rome"]]  # the official client reads them (it has no field for function.index)
    body = {"model": "llama3.2", "messages": msgs, "tools": TOOLS, "x_double": two}
    lines = [json.loads(ln) for ln in httpx.post(od.url + "/api/chat", json=body).text.splitlines()]
    per_line = [[(c["function"]["index"], c["function"]["arguments"]["city"]) for c in ln["message"]["tool_calls"]]
                for ln in lines if ln["message"].get("tool_calls")]
    assert per_line == [[(0, "Paris")], [(1, "Rome")]]
    whole = httpx.post(od.url + "/api/chat", json={**body, "stream": False}).json()["message"]["tool_calls"]
    assert [(c["function"]["index"], c["function"]["arguments"]["city"]) for c in whole] == [(0, "Paris"), (1, "Rome")]
    # its OpenAI layer copies function.index into tool_calls[].index (openai/openai.go:255)
    oc = openai.OpenAI(base_url=od.url + "/v1", api_key="ollama")
    chunks = list(oc.chat.completions.create(model="llama3.2", messages=msgs, tools=TOOLS, stream=True,
                                             extra_body={"x_double": two}))
    idx = [tc.index for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert idx == [0, 1]


def test_logprobs_and_format_schema(od: Double, client: Any) -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    parts = list(client.chat(model="llama3.2", messages=msgs, stream=True, logprobs=True, top_logprobs=2,
                             options={"num_predict": 2}))
    lps = [lp for p in parts for lp in (p.logprobs or [])]
    assert [lp.token for lp in lps] == ["Hello", " from"] and len(lps[0].top_logprobs) == 2
    assert parts[-1].logprobs is None  # the final metrics line carries none
    r = client.chat(model="llama3.2", messages=msgs, logprobs=True, options={"num_predict": 2})
    assert [lp.token for lp in r.logprobs] == ["Hello", " from"] and not r.logprobs[0].top_logprobs
    assert "logprobs" not in httpx.post(od.url + "/api/chat", json={"model": "llama3.2", "messages": msgs,
                                                                    "stream": False}).json()
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
              "required": ["city", "temp"]}
    r = client.chat(model="llama3.2", messages=msgs, format=schema)
    assert json.loads(r.message.content) == {"city": "text", "temp": 7}
    # its OpenAI layer: logprobs/top_logprobs in, choices[].logprobs.content out (openai.go:272-275, 304-307)
    oc = openai.OpenAI(base_url=od.url + "/v1", api_key="ollama")
    r = oc.chat.completions.create(model="llama3.2", messages=msgs, max_tokens=2, logprobs=True, top_logprobs=1)
    assert [t.token for t in r.choices[0].logprobs.content] == ["Hello", " from"]
    chunks = list(oc.chat.completions.create(model="llama3.2", messages=msgs, max_tokens=2, logprobs=True,
                                             stream=True))
    assert [t.token for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content] == [
        "Hello", " from"]


def test_images_are_accepted_and_recorded(od: Double, client: Any) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    r = client.chat(model="llama3.2", messages=[{"role": "user", "content": "what is this?", "images": [png]}])
    assert r.done
    rec = last_request(od, "/api/chat")
    assert rec["body"]["messages"][0]["images"] == [base64.b64encode(png).decode()]
    assert rec["images"] == [{"message": 0, "role": "user", "bytes": [len(png)]}]
    bad = httpx.post(od.url + "/api/chat", json={"model": "llama3.2", "messages": [
        {"role": "user", "content": "x", "images": ["data:image/png;base64,AAAA"]}]})
    assert (bad.status_code, bad.json()) == (400, {"error": "illegal base64 data at input byte 4"})


def test_unknown_model_is_404(od: Double, client: Any) -> None:
    for call in (lambda: client.chat(model="nope", messages=[{"role": "user", "content": "x"}]),
                 lambda: client.generate(model="nope", prompt="x"),
                 lambda: list(client.chat(model="nope", messages=[{"role": "user", "content": "x"}], stream=True))):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert (e.value.status_code, e.value.error) == (404, "model 'nope' not found")
    r = httpx.post(od.url + "/api/chat", json={"model": "nope", "messages": []})
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.content == b'{"error":"model \'nope\' not found"}'
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="nope", input="x")
    assert (e.value.status_code, e.value.error) == (404, 'model "nope" not found, try pulling it first')


def test_load_unload_and_keep_alive(od: Double, client: Any) -> None:
    r = client.generate(model="qwen2.5:0.5b", keep_alive=0)  # empty prompt + keep_alive 0: unload
    assert (r.done, r.done_reason) == (True, "unload")
    wait_for(lambda: "qwen2.5:0.5b" not in ps_names(client))
    t0 = time.monotonic()
    r = client.generate(model="qwen2.5:0.5b", keep_alive="1s")  # empty prompt: load only
    assert (r.done, r.done_reason, r.response) == (True, "load", "") and time.monotonic() - t0 >= LOAD_SECONDS
    assert "qwen2.5:0.5b" in ps_names(client)
    wait_for(lambda: "qwen2.5:0.5b" not in ps_names(client), timeout=5)  # expired after 1 s
    r = client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "Hi"}], keep_alive=0)
    assert r.load_duration >= LOAD_SECONDS * 1e9 and r.done_reason == "stop"
    wait_for(lambda: "qwen2.5:0.5b" not in ps_names(client))  # 0: unloaded right after the request
    r = client.chat(model="qwen2.5:0.5b", messages=[], keep_alive=-1)
    assert r.done_reason == "load" and r.message.role == "assistant"
    exp = [m.expires_at for m in client.ps().models if m.model == "qwen2.5:0.5b"][0]
    assert exp.year > 2200  # negative = forever: now + MaxInt64 ns, as Go computes it
    assert client.chat(model="qwen2.5:0.5b", messages=[], keep_alive=0).done_reason == "unload"
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3.2", messages=[], keep_alive="10")
    assert (e.value.status_code, e.value.error) == (400, 'time: missing unit in duration "10"')
    hot = client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    assert 0 < hot.load_duration < LOAD_SECONDS * 1e9


def test_embed_and_legacy_embeddings(client: Any) -> None:
    r = client.embed(model="nomic-embed-text", input="Why is the sky blue?")
    assert len(r.embeddings) == 1 and len(r.embeddings[0]) == 768
    assert abs(sum(v * v for v in r.embeddings[0]) - 1) < 1e-4  # normalized, as EmbedHandler does
    r2 = client.embed(model="nomic-embed-text", input=["Why is the sky blue?", "Why is the grass green?"],
                      dimensions=16)
    assert [len(v) for v in r2.embeddings] == [16, 16] and r2.prompt_eval_count > 0
    assert client.embed(model="nomic-embed-text", input=[]).embeddings == []
    legacy = client.embeddings(model="nomic-embed-text", prompt="hello")
    assert len(legacy.embedding) == 768


def test_mid_stream_error_line(od: Double, client: Any) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "x_double": {"error_after": 2}}
    with httpx.stream("POST", od.url + "/api/chat", json=body) as r:
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert [x.get("message", {}).get("content") for x in lines[:2]] == ["Hello", " from"]
    assert lines[2:] == [{"error": "an error was encountered while running the model: unexpected EOF"}]
    got = []
    with pytest.raises(ollama.ResponseError) as e:
        for p in client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=True,
                             options={"x_double": {"error_after": 2, "error": "boom"}}):
            got.append(p.message.content)
    assert got == ["Hello", " from"] and e.value.error == "boom"
    with pytest.raises(ollama.ResponseError) as e:  # stream:false gets the error as a 500
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}],
                    options={"x_double": {"error_after": 2, "error": "boom"}})
    assert (e.value.status_code, e.value.error) == (500, "boom")


def test_queue_full_is_503(spawn: Spawner) -> None:
    d = start_ollama(spawn, "--loaded", "llama3.2", "--num-parallel", "1", "--max-queue", "1")
    msgs = [{"role": "user", "content": "Hi"}]

    async def scenario() -> None:
        async with ollama.AsyncClient(host=d.url) as c:
            await run(c)

    async def run(c: Any) -> None:
        held = await c.chat(model="llama3.2", messages=msgs, stream=True, options={"x_double": {"hold": True}})
        first = await held.__anext__()
        assert first.message.content == "Hello"
        queued = asyncio.ensure_future(c.chat(model="llama3.2", messages=msgs))
        for _ in range(200):
            if d.stats()["waiting"] == 1:
                break
            await asyncio.sleep(0.02)
        assert d.stats()["waiting"] == 1 and d.stats()["running"] == 1
        with pytest.raises(ollama.ResponseError) as e:
            await c.chat(model="llama3.2", messages=msgs)
        assert (e.value.status_code, e.value.error) == (503, BUSY)
        r = httpx.post(d.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
        assert (r.status_code, r.json()) == (503, {"error": BUSY})
        d.release()
        rest = [p async for p in held]
        assert rest[-1].done and (await queued).done
        assert d.stats()["rejected"] == 2

    asyncio.run(scenario())


def test_cancelled_requests_are_counted(od: Double) -> None:
    od.reset()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}], "x_double": {"hold": True}}
    with httpx.stream("POST", od.url + "/api/chat", json=body) as r:
        lines = r.iter_lines()  # keep a reference: a collected generator closes the stream
        assert json.loads(next(lines))["message"]["content"] == "Hello"
        assert od.stats()["in_flight"] == 1
    wait_for(lambda: od.stats()["cancelled"] == 1 and od.stats()["in_flight"] == 0)
    od.release()


def test_host_guard(spawn: Spawner) -> None:
    d = start_ollama(spawn, "--host-guard")
    for host, status in (("evil.example.com", 403), ("gateway:4000", 403), ("localhost:11434", 200),
                         ("127.0.0.1:11434", 200), ("10.1.2.3:11434", 200), ("ollama.internal", 200),
                         ("[::1]:11434", 200), ("8.8.8.8", 403)):
        r = httpx.get(d.url + "/api/tags", headers={"Host": host})
        assert r.status_code == status, host
        if status == 403:
            assert r.content == b""
    r = httpx.post(d.url + "/v1/chat/completions", headers={"Host": "evil.example.com"},
                   json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    assert (r.status_code, r.content) == (403, b"")


# --- the OpenAI layer -----------------------------------------------------------------------------

def test_openai_chat_stream_shape(od: Double) -> None:
    oc = openai.OpenAI(base_url=od.url + "/v1", api_key="ollama")
    chunks = list(oc.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}],
                                             stream=True, stream_options={"include_usage": True}))
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-\d{1,3}", ids.pop())
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == "Hello"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-2])
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage.completion_tokens == len(chunks) - 3 + 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from ollama, this is a streamed answer"
    assert len({c.created for c in chunks}) == 1 and {c.system_fingerprint for c in chunks} == {"fp_ollama"}
    raw = httpx.post(od.url + "/v1/chat/completions", json={"model": "llama3.2", "stream": True,
                                                            "messages": [{"role": "user", "content": "Hi"}]})
    assert raw.headers["content-type"] == "text/event-stream"
    events = raw.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[-3][6:])["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert "usage" not in raw.text  # only with stream_options.include_usage


def test_openai_chat_non_stream_tools_completions_embeddings_models(od: Double) -> None:
    oc = openai.OpenAI(base_url=od.url + "/v1", api_key="ollama")
    r = oc.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert r.choices[0].message.content == "Hello from" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2 and r.object == "chat.completion"
    native = last_request(od, "/v1/chat/completions")["native"]
    assert native["options"] == {"num_predict": 2, "temperature": 1.0, "top_p": 1.0}  # OpenAI-layer defaults
    r = oc.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "weather in Tokyo?"}],
                                   tools=TOOLS, extra_body={"x_double": TOOL_KNOB})
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.arguments == '{"city":"Tokyo"}' and re.fullmatch(r"call_[a-z0-9]{8}", call.id)
    chunks = list(oc.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "weather?"}],
                                             tools=TOOLS, stream=True, extra_body={"x_double": TOOL_KNOB}))
    assert chunks[0].choices[0].delta.tool_calls[0].function.arguments == '{"city":"Tokyo"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    comp = oc.completions.create(model="llama3.2", prompt="Say hi", max_tokens=3)
    assert comp.choices[0].text == "Hello from ollama," and comp.choices[0].finish_reason == "length"
    assert re.fullmatch(r"cmpl-\d{1,3}", comp.id)
    parts = list(oc.completions.create(model="llama3.2", prompt="Say hi", stream=True))
    assert "".join(p.choices[0].text for p in parts) == "Hello from ollama, this is a streamed answer"
    emb = oc.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [len(e.embedding) for e in emb.data] == [768, 768] and emb.usage.prompt_tokens > 0
    models = [m.id for m in oc.models.list()]
    assert models == ["llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    assert oc.models.retrieve("llama3.2").owned_by == "library"


def test_openai_errors_envelope_and_mid_stream(od: Double) -> None:
    oc = openai.OpenAI(base_url=od.url + "/v1", api_key="ollama", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        oc.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body == {"message": "model 'nope' not found", "type": "not_found_error", "param": None,
                            "code": None}
    with pytest.raises(openai.BadRequestError) as e2:
        oc.chat.completions.create(model="llama3.2", messages=[])
    assert e2.value.body["message"] == "[] is too short - 'messages'"
    r = httpx.post(od.url + "/v1/chat/completions", json={
        "model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "Hi"}],
        "x_double": {"error_after": 2}})
    events = [e for e in r.text.split("\n\n") if e]
    assert r.status_code == 200 and "[DONE]" not in r.text and len(events) == 3
    last = json.loads(events[-1][len("data: "):])  # the native {"error"} line decoded as an empty chunk
    assert last["model"] == "" and last["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]


def test_no_installed_models(spawn: Spawner) -> None:
    d = start_ollama(spawn, models="")
    assert httpx.get(d.url + "/v1/models").json() == {"object": "list", "data": None}
    assert httpx.get(d.url + "/api/tags").json() == {"models": []}
    with ollama.Client(host=d.url) as c:
        assert c.list().models == [] and c.ps().models == []


def test_thinking_model_and_go_json_escaping(spawn: Spawner) -> None:
    d = start_ollama(spawn, "--thinking-models", "qwen3", models="qwen3,llama3.2")
    msgs = [{"role": "user", "content": "Hi"}]
    with ollama.Client(host=d.url) as c:
        parts = list(c.chat(model="qwen3", messages=msgs, stream=True))  # thinking models default to think=true
        assert "".join(p.message.thinking or "" for p in parts) == "Let me think about this."
        assert "".join(p.message.content for p in parts) == "Hello from ollama, this is a streamed answer"
        assert c.chat(model="qwen3", messages=msgs, think=False).message.thinking is None
        assert c.chat(model="qwen3", messages=msgs, options={"num_predict": 2}).done_reason == "length"
        assert c.show("qwen3").capabilities == ["completion", "tools", "thinking"]
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model="llama3.2", messages=msgs, think=True)
        assert (e.value.status_code, e.value.error) == (400, '"llama3.2" does not support thinking')
        r = c.chat(model="llama3.2", messages=msgs, options={"x_double": {"text": "<b>&</b>"}})
        assert r.message.content == "<b>&</b>"
    raw = httpx.post(d.url + "/api/chat", json={"model": "llama3.2", "messages": msgs, "stream": False,
                                                "x_double": {"text": "<b>&</b>"}})
    assert '"content":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"' in raw.text  # Go's HTML-safe encoding
    oai = httpx.post(d.url + "/v1/chat/completions", json={"model": "qwen3", "messages": msgs}).json()
    assert oai["choices"][0]["message"]["reasoning"] == "Let me think about this."
