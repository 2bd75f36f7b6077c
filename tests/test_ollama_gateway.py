"""Ollama's native API behind the gateway (tests/doubles/ollama_server.py reproduces it)."""

from __future__ import annotations

import base64
import json
import time

import httpx
import openai
import pydantic
import pytest

from tests.procs import Double, Spawner

MESSAGES = [{"role": "user", "content": "Hi"}]


def start_ollama(spawn: Spawner, *args: str) -> Double:
    return spawn.start_double("ollama_server", "/api/version", *args)


def admin(gw_url: str) -> dict:
    return httpx.get(gw_url + "/admin/backends").json()["backends"][0]


def test_residency_keep_alive_num_ctx_and_usage(spawn: Spawner) -> None:
    o = start_ollama(spawn, "--models", "llama3.2,qwen2.5:0.5b", "--loaded", "llama3.2", "--load-seconds", "0.3")
    gw = spawn.gateway({"health": {"interval": 0.2},
                        "backends": [{"name": "o", "kind": "ollama", "url": o.url, "keep_alive": "30m",
                                      "num_ctx": 8192}]})
    b = admin(gw.url)
    assert b["state"] == "ready" and b["residency"] == {"llama3.2:latest": "loaded", "qwen2.5:0.5b": "unloaded"}
    route = {r["model"]: r for r in httpx.get(gw.url + "/admin/backends").json()["routes"]}
    assert route["qwen2.5:0.5b"]["deployments"][0]["cold"] is True
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    r = client.chat.completions.create(model="qwen2.5:0.5b", messages=MESSAGES, max_tokens=3, temperature=0.2,
                                       stop=["\n\n"], seed=7)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    sent = o.requests()[-1]["body"]
    assert sent["keep_alive"] == "30m" and sent["stream"] is False
    assert sent["options"] == {"num_predict": 3, "temperature": 0.2, "stop": ["\n\n"], "seed": 7, "num_ctx": 8192}
    deadline = time.monotonic() + 10
    while admin(gw.url)["residency"]["qwen2.5:0.5b"] != "loaded":  # the request loaded it
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_tool_calls_and_images(spawn: Spawner) -> None:
    o = start_ollama(spawn, "--models", "llama3.2", "--vision-models", "llama3.2", "--loaded", "llama3.2")
    gw = spawn.gateway({"backends": [{"name": "o", "kind": "ollama", "url": o.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    knob = {"x_double": {"tool_call": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}}
    r = client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, tools=tools, extra_body=knob)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}  # an object natively, a string here
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, tools=tools,
                                                 stream=True, extra_body=knob))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and json.loads(calls[0].function.arguments) == {"city": "Tokyo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    client.chat.completions.create(model="llama3.2:latest", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    msg = o.requests()[-1]["body"]["messages"][0]
    assert msg == {"role": "user", "content": "What is this?", "images": [png]}
    with pytest.raises(openai.BadRequestError):  # Ollama cannot fetch image links
        client.chat.completions.create(model="llama3.2:latest", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])


def test_errors_mid_stream_unknown_model_and_queue_full(spawn: Spawner) -> None:
    o = start_ollama(spawn, "--models", "llama3.2", "--loaded", "llama3.2", "--max-queue", "0")
    gw = spawn.gateway({"backends": [{"name": "o", "kind": "ollama", "url": o.url}],
                        "models": [{"name": "ghost", "backends": [{"backend": "o", "model": "ghost:latest"}]}]})
    with httpx.stream("POST", gw.v1 + "/chat/completions", json={
            "model": "llama3.2:latest", "messages": MESSAGES, "stream": True, "x_double": {"error_after": 2}}) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert events[-1] == "data: [DONE]" and '"error"' in events[-2]
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "ghost", "messages": MESSAGES})
    assert r.status_code == 404 and "ghost" in r.json()["error"]["message"]
    # one request in flight fills Ollama's only slot and its (zero-length) queue: 503, nowhere else to retry
    import threading
    t = threading.Thread(target=lambda: httpx.post(gw.v1 + "/chat/completions", timeout=30, json={
        "model": "llama3.2:latest", "messages": MESSAGES, "x_double": {"hold": True}}))
    t.start()
    deadline = time.monotonic() + 10
    while o.stats()["in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert o.stats()["rejected"] == 1  # it was Ollama's queue-full answer, not the gateway's own 503
    httpx.post(o.url + "/_release")
    t.join(10)


def test_queue_full_503_is_retried_on_another_backend(spawn: Spawner) -> None:
    full = start_ollama(spawn, "--models", "llama3.2", "--loaded", "llama3.2", "--max-queue", "0")
    spare = start_ollama(spawn, "--models", "llama3.2", "--loaded", "llama3.2")
    # weight 100: `full` stays the first choice even with a request in flight, so its 503 must be retried
    gw = spawn.gateway({"backends": [{"name": "full", "kind": "ollama", "url": full.url, "weight": 100},
                                     {"name": "spare", "kind": "ollama", "url": spare.url}]})
    import threading
    t = threading.Thread(target=lambda: httpx.post(gw.v1 + "/chat/completions", timeout=30, json={
        "model": "llama3.2:latest", "messages": MESSAGES, "x_double": {"hold": True}}))
    t.start()
    deadline = time.monotonic() + 20
    while full.stats()["in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "llama3.2:latest", "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "spare", r.text
    assert full.stats()["rejected"] == 1 and spare.stats()["completed"] == 1  # tried `full` first, then `spare`
    assert 'llm_gateway_retries_total{model="llama3.2:latest"} 1.0' in httpx.get(gw.url + "/metrics").text
    httpx.post(full.url + "/_release")
    t.join(10)


def test_completions_are_raw_and_embeddings(spawn: Spawner) -> None:
    o = start_ollama(spawn, "--models", "llama3.2", "--embed-models", "nomic-embed-text", "--loaded", "llama3.2")
    gw = spawn.gateway({"backends": [{"name": "o", "kind": "ollama", "url": o.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    r = client.completions.create(model="llama3.2:latest", prompt="Once upon", max_tokens=2)
    assert r.choices[0].text and r.usage.completion_tokens == 2
    sent = o.requests()[-1]["body"]
    assert sent["raw"] is True and sent["prompt"] == "Once upon"
    e = client.embeddings.create(model="nomic-embed-text:latest", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) > 1 and e.usage.prompt_tokens > 0


def test_clients_do_not_override_the_operators_num_ctx_keep_alive_or_load_options(spawn: Spawner) -> None:
    o = start_ollama(spawn, "--models", "llama3.2", "--loaded", "llama3.2")
    pinned = {"keep_alive": "30m", "num_ctx": 8192}
    backends = [{"name": "pinned", "kind": "ollama", "url": o.url, "discover": False, **pinned},
                {"name": "unset", "kind": "ollama", "url": o.url, "discover": False},
                {"name": "open", "kind": "ollama", "url": o.url, "discover": False, "client_overrides": True},
                {"name": "open-pinned", "kind": "ollama", "url": o.url, "discover": False, "client_overrides": True,
                 **pinned}]
    gw = spawn.gateway({"backends": backends, "models": [
        {"name": b["name"], "backends": [{"backend": b["name"], "model": "llama3.2:latest"}]} for b in backends]})
    asked = {"options": {"num_ctx": 16384, "num_gpu": 99, "mirostat": 1}, "keep_alive": -1}

    def sent(model: str) -> dict:
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": model, "messages": MESSAGES, **asked})
        assert r.status_code == 200, r.text
        body = o.requests()[-1]["body"]
        return {"options": body.get("options"), "keep_alive": body.get("keep_alive")}

    # the operator's values win; load-time options and keep_alive from clients are dropped by default
    assert sent("pinned") == {"options": {"num_ctx": 8192, "mirostat": 1}, "keep_alive": "30m"}
    assert sent("unset") == {"options": {"mirostat": 1}, "keep_alive": None}  # Ollama's own defaults apply
    # client_overrides: the client's values where the config leaves them unset, never over it
    assert sent("open") == {"options": {"num_ctx": 16384, "num_gpu": 99, "mirostat": 1}, "keep_alive": -1}
    assert sent("open-pinned") == {"options": {"num_ctx": 8192, "num_gpu": 99, "mirostat": 1}, "keep_alive": "30m"}


# --- agent-style round trips with the official client -------------------------------------------------

AGENT_TOOLS = [{"type": "function", "function": {"name": n, "description": d, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    for n, d in (("get_weather", "Weather in a city"), ("get_time", "Local time in a city"))]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agent_parallel_tool_calls_round_trip(spawn: Spawner, stream: bool) -> None:
    """The model calls two tools in one turn; the client answers both by tool_call_id (in the other order);
    the follow-up answer. Streamed, the SDK's own accumulator (chat.completions.stream) merges the deltas."""
    o = start_ollama(spawn, "--models", "llama3.2", "--loaded", "llama3.2")
    gw = spawn.gateway({"backends": [{"name": "o", "kind": "ollama", "url": o.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)

    def ask(messages: list, knob: dict) -> openai.types.chat.ChatCompletion:
        kw = {"model": "llama3.2", "messages": messages, "tools": AGENT_TOOLS, "extra_body": {"x_double": knob}}
        if not stream:
            return client.chat.completions.create(**kw)
        with client.chat.completions.stream(**kw) as s:
            return s.get_final_completion()

    messages: list = [{"role": "user", "content": "Weather and time in Paris?"}]
    first = ask(messages, {"tool_call": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                         {"name": "get_time", "arguments": {"city": "Paris"}}]})
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]
    ids = [c.id for c in msg.tool_calls]
    assert len(set(ids)) == 2 and all(ids)
    messages.append({"role": "assistant", "content": msg.content, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in msg.tool_calls]})
    results = {"get_weather": "sunny, 21 C", "get_time": "12:00"}
    for c in reversed(msg.tool_calls):  # attribution must follow the id, not the position
        messages.append({"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]})
    final = ask(messages, {"text": "Sunny and 21 C; it is noon in Paris."})
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls
    assert final.choices[0].message.content == "Sunny and 21 C; it is noon in Paris."
    native = o.requests()[-1]["body"]["messages"]
    assert [c["id"] for c in native[1]["tool_calls"]] == ids
    assert [(m["tool_call_id"], m["tool_name"], m["content"]) for m in native[2:]] == [
        (ids[1], "get_time", "12:00"), (ids[0], "get_weather", "sunny, 21 C")]


class CityWeather(pydantic.BaseModel):
    city: str
    temp_c: int
    tags: list[str]


def test_json_schema_structured_output(spawn: Spawner) -> None:
    """response_format json_schema -> Ollama's `format` as the bare schema (openai.go FromChatRequest);
    json_object -> "json". The double answers with an instance of the schema, as a constrained model does."""
    o = start_ollama(spawn, "--models", "llama3.2", "--loaded", "llama3.2")
    gw = spawn.gateway({"backends": [{"name": "o", "kind": "ollama", "url": o.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    ask = [{"role": "user", "content": "Weather in Paris as JSON"}]
    r = client.chat.completions.parse(model="llama3.2", messages=ask, response_format=CityWeather)
    assert r.choices[0].message.parsed == CityWeather(city="text", temp_c=7, tags=["text"])
    sent = o.requests()[-1]["body"]
    fmt = sent["format"]  # the schema itself, not OpenAI's {"type": "json_schema", "json_schema": {...}} wrapper
    assert fmt["type"] == "object" and set(fmt["required"]) == {"city", "temp_c", "tags"}
    assert fmt["properties"]["temp_c"]["type"] == "integer" and "response_format" not in sent
    with client.chat.completions.stream(model="llama3.2", messages=ask, response_format=CityWeather) as s:
        assert s.get_final_completion().choices[0].message.parsed.temp_c == 7
    r = client.chat.completions.create(model="llama3.2", messages=ask, response_format={"type": "json_object"})
    assert o.requests()[-1]["body"]["format"] == "json" and isinstance(json.loads(r.choices[0].message.content), dict)
