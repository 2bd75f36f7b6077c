"""The TGI double (tests/doubles/tgi_server.py) checked as a real process against real clients:
Hugging Face's own `text-generation` client (Client and AsyncClient, pinned text-generation==0.7.0,
the last release, pydantic-2 based) for the native API, and the `openai` client for the Messages API.
Raw byte checks pin the framing the clients are lenient about."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import httpx
import openai
import pytest
import text_generation as tg  # HF's official TGI client, a pinned [test] dependency

from tests.procs import Proc, Spawner, free_port

# text_generation 0.7.0 calls pydantic's deprecated .dict(); the project turns warnings into errors
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ANSWER = "Hello from tgi, this is a streamed answer"
WORDS = ["Hello", " from", " tgi,", " this", " is", " a", " streamed", " answer"]
FINGERPRINT = "3.3.6-dev0-native"
DEFAULT_FAILURE = "Request failed during generation: Server error: CUDA out of memory"


class Tgi:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_stats").json()

    def release(self) -> None:
        httpx.post(self.url + "/_release")

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=10, **kw)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics").text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    def wait_for(self, key: str, value: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.stats()[key] != value:
            assert time.monotonic() < deadline, self.stats()
            time.sleep(0.02)


def start_tgi(spawner: Spawner, *extra: str, model: str = MODEL, wait: bool = True) -> Tgi:
    port = free_port()
    proc = spawner.proc(
        [sys.executable, "-m", "tests.doubles.tgi_server", "--port", str(port), "--model-id", model, *extra],
        f"tgi-{port}",
    )
    t = Tgi(proc, port)
    if wait:
        proc.wait_http(t.url + "/health")
    return t


@pytest.fixture(scope="module")
def tgi(module_spawn: Spawner) -> Tgi:
    return start_tgi(module_spawn)


def events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw
    return raw[:-2].split(b"\n\n")


def hold_in_thread(url: str, body: dict, out: list) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=30) as c:
            r = c.post(url, json=body)
            out.append((r.status_code, r.content))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


# ---------------------------------------------------------------------------------------------- lifecycle


def test_port_closed_while_loading_then_health_info_models(spawn: Spawner) -> None:
    t = start_tgi(spawn, "--load-delay", "1.5", wait=False)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(t.url + "/health", timeout=1)
    t.proc.wait_http(t.url + "/health", timeout=15)
    for path in ("/health", "/", "/ping"):
        r = httpx.get(t.url + path)
        assert (r.status_code, r.content) == (200, b"")
    assert httpx.post(t.url + "/_unhealthy").status_code == 200
    for path in ("/health", "/", "/ping"):
        r = httpx.get(t.url + path)
        assert r.status_code == 503
        assert r.content == b'{"error":"unhealthy","error_type":"healthcheck"}'
    httpx.post(t.url + "/_healthy")
    assert httpx.get(t.url + "/health").status_code == 200

    info = httpx.get(t.url + "/info").json()
    assert info == {
        "model_id": MODEL,
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": 4095,
        "max_total_tokens": 4096,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": "3.3.6-dev0",
        "sha": None,
        "docker_label": None,
    }
    r = httpx.get(t.url + "/v1/models")
    assert r.content == (
        b'{"object":"list","data":[{"id":"%s","object":"model","created":0,"owned_by":"%s"}]}'
        % (MODEL.encode(), MODEL.encode())
    )
    assert httpx.get(t.url + "/nope").status_code == 404
    r = httpx.get(t.url + "/generate")
    assert (r.status_code, r.content) == (405, b"")


# ---------------------------------------------------------------------------------------------- native API


def test_text_generation_client_generate(tgi: Tgi) -> None:
    from text_generation.types import FinishReason

    client = tg.Client(tgi.url)
    r = client.generate("Why is the sky blue?", max_new_tokens=20)
    assert r.generated_text == ANSWER
    d = r.details
    assert d.finish_reason == FinishReason.EndOfSequenceToken
    assert d.generated_tokens == 9 and d.seed is None and d.prefill == []
    assert [t.text for t in d.tokens] == WORDS + ["</s>"]
    assert d.tokens[-1].special and d.tokens[-1].id == 2 and not d.tokens[0].special

    r = client.generate("Why is the sky blue?", max_new_tokens=3, do_sample=True, seed=7)
    assert (r.generated_text, r.details.finish_reason) == ("Hello from tgi,", FinishReason.Length)
    assert r.details.seed == 7
    r = client.generate("Why?", max_new_tokens=20, stop_sequences=["tgi,"])
    assert (r.generated_text, r.details.finish_reason) == ("Hello from tgi,", FinishReason.StopSequence)
    r = client.generate("Why is the sky", max_new_tokens=2, decoder_input_details=True, top_n_tokens=2)
    assert [p.text for p in r.details.prefill] == ["Why", " is", " the", " sky"]
    assert r.details.prefill[0].logprob is None  # TGI's NaN prefill logprob is serialized as null
    assert [[t.text for t in top] for top in r.details.top_tokens] == [["Hello", " alt0"], [" from", " alt0"]]
    r = client.generate("Why?", max_new_tokens=2, best_of=2, do_sample=True)
    assert len(r.details.best_of_sequences) == 1
    assert r.details.best_of_sequences[0].generated_text == "Hello from"


def test_text_generation_client_stream_and_async(tgi: Tgi) -> None:
    from text_generation.types import FinishReason

    responses = list(tg.Client(tgi.url).generate_stream("Why is the sky blue?", max_new_tokens=20))
    assert [r.token.text for r in responses] == WORDS + ["</s>"]
    assert all(r.generated_text is None and r.details is None for r in responses[:-1])
    last = responses[-1]
    assert last.token.special and last.generated_text == ANSWER
    assert (
        last.details.finish_reason == FinishReason.EndOfSequenceToken and last.details.generated_tokens == 9
    )

    async def run() -> tuple[Any, list]:
        client = tg.AsyncClient(tgi.url)
        full = await client.generate("Why?", max_new_tokens=4)
        streamed = [r async for r in client.generate_stream("Why?", max_new_tokens=4)]
        return full, streamed

    full, streamed = asyncio.run(run())
    assert full.generated_text == "Hello from tgi, this" and full.details.finish_reason == FinishReason.Length
    assert "".join(r.token.text for r in streamed) == "Hello from tgi, this"
    assert streamed[-1].details.generated_tokens == 4


def test_generate_stream_wire_bytes_and_generate_headers(tgi: Tgi) -> None:
    body = {"inputs": "Hi there", "parameters": {"max_new_tokens": 2, "details": True}}
    with httpx.stream("POST", tgi.url + "/generate_stream", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["x-accel-buffering"] == "no" and r.headers["x-compute-characters"] == "8"
        raw = r.read()
    evs = events(raw)
    assert evs == [
        b'data: {"index":1,"token":{"id":5578,"text":"Hello","logprob":-0.125,"special":false},'
        b'"generated_text":null,"details":null}',
        b'data: {"index":2,"token":{"id":17261,"text":" from","logprob":-0.5,"special":false},'
        b'"generated_text":"Hello from","details":{"finish_reason":"length","generated_tokens":2,"seed":null,'
        b'"input_length":2}}',
    ]  # no [DONE] on native routes

    r = tgi.post("/generate", {"inputs": "Hi there you", "parameters": {"max_new_tokens": 5}})
    assert r.json() == {"generated_text": "Hello from tgi, this is"}  # details default to false
    assert (r.headers["x-prompt-tokens"], r.headers["x-generated-tokens"]) == ("3", "5")
    assert r.headers["x-compute-type"] == "gpu+optimized"
    for h in (
        "x-compute-time",
        "x-total-time",
        "x-validation-time",
        "x-queue-time",
        "x-inference-time",
        "x-time-per-token",
        "x-compute-characters",
    ):
        assert h in r.headers
    # POST / (compat): one-element array; return_full_text defaults to true for text-generation models
    r = tgi.post("/", {"inputs": "Say:", "parameters": {"max_new_tokens": 1}})
    assert r.json() == [{"generated_text": "Say:Hello"}]


# ---------------------------------------------------------------------------------------------- Messages API


def test_openai_client_chat(tgi: Tgi) -> None:
    client = openai.OpenAI(base_url=tgi.url + "/v1", api_key="unused")
    c = client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi!"}])
    assert c.id == "" and c.model == MODEL and c.system_fingerprint == FINGERPRINT
    assert c.choices[0].message.content == ANSWER and c.choices[0].finish_reason == "stop"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (3, 9, 12)
    c = client.chat.completions.create(
        model="my-lora", max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
    )
    assert (c.model, c.choices[0].finish_reason, c.choices[0].message.content) == (
        "my-lora",
        "length",
        "Hello from",
    )

    chunks = list(
        client.chat.completions.create(
            model="tgi",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Hi!"}],
        )
    )
    assert "".join(ch.choices[0].delta.content for ch in chunks if ch.choices) == ANSWER
    assert all(ch.choices[0].delta.role == "assistant" for ch in chunks if ch.choices)
    assert all(ch.usage is None for ch in chunks[:-1]) and all(ch.id == "" for ch in chunks)
    assert [ch.choices[0].finish_reason for ch in chunks[:-1]] == [None] * 8 + ["stop"]
    assert chunks[-2].choices[0].delta.content == ""  # the EOS token
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12

    chunks = list(
        client.chat.completions.create(
            model="tgi", stream=True, max_tokens=3, messages=[{"role": "user", "content": "Hi!"}]
        )
    )
    assert (
        len(chunks) == 3 and chunks[-1].choices[0].finish_reason == "length"
    )  # no usage chunk without the option


def test_chat_stream_wire_bytes(tgi: Tgi) -> None:
    body = {
        "model": "tgi",
        "stream": True,
        "max_tokens": 2,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    with httpx.stream("POST", tgi.url + "/v1/chat/completions", json=body) as r:
        raw = r.read()
    evs = events(raw)
    assert evs[-1] == b"data: [DONE]"
    docs = [json.loads(e[len(b"data: ") :]) for e in evs[:-1]]
    created = docs[0]["created"]
    head = (
        f'data: {{"object":"chat.completion.chunk","id":"","created":{created},"model":"{MODEL}",'
        f'"system_fingerprint":"{FINGERPRINT}",'
    )
    assert (
        evs[0]
        == (
            head + '"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},'
            '"logprobs":null,"finish_reason":null}],"usage":null}'
        ).encode()
    )
    assert (
        evs[1]
        == (
            head + '"choices":[{"index":0,"delta":{"role":"assistant","content":" from"},'
            '"logprobs":null,"finish_reason":"length"}],"usage":null}'
        ).encode()
    )
    assert (
        evs[2]
        == (
            head + '"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,' '"total_tokens":5}}'
        ).encode()
    )


def test_openai_client_completions(tgi: Tgi) -> None:
    client = openai.OpenAI(base_url=tgi.url + "/v1", api_key="unused")
    c = client.completions.create(model="whatever", prompt="Say hi", max_tokens=3)
    assert (c.model, c.id, c.choices[0].text, c.choices[0].finish_reason) == (
        MODEL,
        "",
        "Hello from tgi,",
        "length",
    )
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (2, 3)
    chunks = list(client.completions.create(model="whatever", prompt="Say hi", stream=True))
    assert [ch.choices[0].finish_reason for ch in chunks] == [""] * 8 + ["eos_token"]
    assert chunks[-1].choices[0].text == "</s>" and chunks[-1].usage.completion_tokens == 9
    assert all(ch.usage is None for ch in chunks[:-1])


# ---------------------------------------------------------------------------------------------- errors


def test_overload_non_stream_429_and_in_band_stream_errors(spawn: Spawner) -> None:
    t = start_tgi(spawn, "--max-concurrent-requests", "2")
    out: list = []
    threads = [
        hold_in_thread(t.url + "/generate", {"inputs": "hold", "x_double": {"hold": True}}, out),
        hold_in_thread(
            t.url + "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stream": True, "x_double": {"hold": True}},
            out,
        ),
    ]
    t.wait_for("in_flight", 2)
    t.wait_for("held", 2)
    assert t.metrics()["tgi_queue_size"] == 2

    r = t.post("/generate", {"inputs": "one more"})
    assert (r.status_code, r.content) == (429, b'{"error":"Model is overloaded","error_type":"overloaded"}')
    with pytest.raises(tg.errors.OverloadedError):
        tg.Client(t.url).generate("one more")
    client = openai.OpenAI(base_url=t.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.json() == {"error": "Model is overloaded", "error_type": "overloaded"}

    r = t.post("/generate_stream", {"inputs": "one more"})
    assert (r.status_code, r.content) == (
        200,
        b'data: {"error":"Model is overloaded","error_type":"overloaded"}\n\n',
    )
    with pytest.raises(tg.errors.OverloadedError):
        list(tg.Client(t.url).generate_stream("one more"))
    r = t.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert (r.status_code, r.content) == (
        200,
        b'data: {"error":{"message":"Model is overloaded",' b'"http_status_code":422}}\n\ndata: [DONE]\n\n',
    )
    with pytest.raises(openai.APIError, match="Model is overloaded"):
        list(
            client.chat.completions.create(
                model="tgi", stream=True, messages=[{"role": "user", "content": "x"}]
            )
        )
    r = t.post("/v1/completions", {"prompt": "x", "stream": True})
    assert (
        r.content
        == b'data: {"error":{"message":"Model is overloaded","http_status_code":422}}\n\ndata: [DONE]\n\n'
    )

    t.release()
    for th in threads:
        th.join(10)
    assert sorted(s for s, _ in out) == [200, 200]
    assert any(b"data: [DONE]" in body for _, body in out)
    m = t.metrics()
    assert m['tgi_request_failure{err="overloaded"}'] == 8
    assert (m["tgi_queue_size"], m["tgi_batch_current_size"]) == (0, 0)
    assert t.stats()["in_flight"] == 0 and t.stats()["max_in_flight"] == 2


def test_validation_422(tgi: Tgi) -> None:
    cases = [
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        (
            {"max_new_tokens": 1000, "truncate": 5000},
            "`truncate` must be strictly positive and less than 4095. " "Given: 5000",
        ),
    ]
    for params, msg in cases:
        r = tgi.post("/generate", {"inputs": "Hi", "parameters": params})
        assert r.status_code == 422
        assert r.json() == {"error": f"Input validation error: {msg}", "error_type": "validation"}
    long = " ".join(["w"] * 4000)
    r = tgi.post("/generate", {"inputs": long, "parameters": {"max_new_tokens": 200}})
    assert r.json()["error"] == (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
    )
    with pytest.raises(tg.errors.ValidationError, match="must be <= 4096"):
        tg.Client(tgi.url).generate(long, max_new_tokens=200)

    client = openai.OpenAI(base_url=tgi.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tgi", top_p=1.0, messages=[{"role": "user", "content": "x"}])
    # chat: temperature 0 means greedy, not an error
    c = client.chat.completions.create(
        model="tgi", temperature=0, max_tokens=1, messages=[{"role": "user", "content": "x"}]
    )
    assert c.choices[0].message.content == "Hello"
    # on a stream the validation error is in-band, after HTTP 200
    r = tgi.post(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True, "top_p": 1.0}
    )
    assert r.status_code == 200 and r.content == (
        b'data: {"error":{"message":"Input validation error: `top_p` must be > 0.0 and < 1.0",'
        b'"http_status_code":422}}\n\ndata: [DONE]\n\n'
    )
    r = tgi.post("/generate_stream", {"inputs": "x", "parameters": {"temperature": 0}})
    assert r.content == (
        b'data: {"error":"Input validation error: `temperature` must be strictly positive",'
        b'"error_type":"validation"}\n\n'
    )


def test_grammars_like_validation_rs(tgi: Tgi) -> None:
    """validation.rs:348-409 and lib.rs:236-258: adjacently tagged, `properties` required."""
    person = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    msgs = [{"role": "user", "content": "x"}]
    r = tgi.post("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "json", "value": person}})
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"name": "Paris"}
    r = tgi.post("/generate", {"inputs": "x", "parameters": {"grammar": {"type": "json_object", "value": person}}})
    assert json.loads(r.json()["generated_text"]) == {"name": "Paris"}
    r = tgi.post("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "json_object"}})
    assert r.status_code == 422 and "missing field `value`" in r.text  # OpenAI's JSON mode shape
    r = tgi.post("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "json", "value": {}}})
    assert r.status_code == 422 and r.json() == {
        "error": "Input validation error: grammar is not valid: Grammar must have a 'properties' field",
        "error_type": "validation"}


def test_tool_call_stream_has_no_finish_chunk(tgi: Tgi) -> None:
    """chat.rs:186-236: after the call's closing brace the state is Buffering again, and the EOS
    token (the one with details.finish_reason) parses as no call: no event. Non-stream: "stop"."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    body = {"messages": [{"role": "user", "content": "x"}], "tools": tools}
    r = tgi.post("/v1/chat/completions", body)
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["id"] == "0"
    raw = tgi.post("/v1/chat/completions", {**body, "stream": True}).content
    docs = [json.loads(e[6:]) for e in events(raw)[:-1]]
    assert all(d["choices"][0]["finish_reason"] is None for d in docs)
    assert "".join(d["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for d in docs) \
        == '{ "city": "Paris"}'  # the wrapper's closing brace trimmed (chat.rs:213-217)
    assert events(raw)[-1] == b"data: [DONE]"


def test_body_rejections_like_axum(tgi: Tgi) -> None:
    r = httpx.post(tgi.url + "/generate", content=b'{"inputs":"x"}')
    assert (r.status_code, r.text) == (415, "Expected request with `Content-Type: application/json`")
    r = httpx.post(tgi.url + "/generate", content=b'{"inputs":', headers={"Content-Type": "application/json"})
    assert (r.status_code, r.text) == (
        400,
        "Failed to parse the request body as JSON: EOF while parsing a value at " "line 1 column 10",
    )
    r = tgi.post("/generate", {"parameters": {}})
    assert (r.status_code, r.text) == (
        422,
        "Failed to deserialize the JSON body into the target type: missing field "
        "`inputs` at line 1 column 17",
    )
    r = httpx.post(
        tgi.url + "/v1/chat/completions",
        content=b'{"messages":[{"role":"user","content":"x"}],' b'"stop":"x"}',
        headers={"Content-Type": "application/json"},
    )
    assert (r.status_code, r.text) == (
        422,
        "Failed to deserialize the JSON body into the target type: stop: invalid "
        'type: string "x", expected a sequence at line 1 column 54',
    )
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


def test_generation_error_injection(tgi: Tgi) -> None:
    r = tgi.post("/generate", {"inputs": "x", "x_double": {"fail_after": 2, "message": "boom"}})
    assert (r.status_code, r.json()) == (
        424,
        {"error": "Request failed during generation: boom", "error_type": "generation"},
    )
    r = tgi.post("/generate_stream", {"inputs": "x", "x_double": {"fail_after": 1, "message": "boom"}})
    assert events(r.content)[1:] == [
        b'data: {"error":"Request failed during generation: boom",' b'"error_type":"generation"}'
    ]
    # the official client cannot add body fields: set the injection for every request instead
    httpx.post(tgi.url + "/_control", json={"fail_after": 1})
    try:
        with pytest.raises(tg.errors.GenerationError, match=DEFAULT_FAILURE):
            tg.Client(tgi.url).generate("x")
        stream = tg.Client(tgi.url).generate_stream("x")
        assert next(stream).token.text == "Hello"
        with pytest.raises(tg.errors.GenerationError, match=DEFAULT_FAILURE):
            next(stream)
    finally:
        httpx.post(tgi.url + "/_control", json={})
    client = openai.OpenAI(base_url=tgi.url + "/v1", api_key="unused", max_retries=0)
    got: list[str] = []
    with pytest.raises(openai.APIError, match="Request failed during generation"):
        for ch in client.chat.completions.create(
            model="tgi",
            stream=True,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"x_double": {"fail_after": 2}},
        ):
            got.append(ch.choices[0].delta.content)
    assert got == ["Hello", " from"]


def test_api_key_and_metrics(spawn: Spawner) -> None:
    t = start_tgi(spawn, "--api-key", "S3cret")
    body = {"inputs": "x", "parameters": {"max_new_tokens": 1}}
    r = t.post("/generate", body)
    assert (r.status_code, r.content) == (401, b"")
    assert t.post("/v1/chat/completions", {"messages": []}).status_code == 401
    assert t.post("/generate", body, headers={"Authorization": "Bearer S3cret"}).status_code == 200
    assert (
        t.post("/generate", body, headers={"Authorization": "bearer s3cret"}).status_code == 200
    )  # lowercased
    for path in ("/health", "/info", "/v1/models", "/metrics"):
        assert httpx.get(t.url + path).status_code == 200
    client = openai.OpenAI(base_url=t.url + "/v1", api_key="S3cret")
    assert (
        client.chat.completions.create(model="tgi", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        .choices[0]
        .message.content
        == "Hello"
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=t.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="tgi", messages=[{"role": "user", "content": "x"}]
        )

    text = httpx.get(t.url + "/metrics").text
    assert "# TYPE tgi_request_count counter\ntgi_request_count 4\n" in text  # chat counts twice, as in TGI
    assert "# TYPE tgi_batch_max_total_tokens gauge\ntgi_batch_max_total_tokens 16384\n" in text
    assert "tgi_request_success 3\n" in text
    for gauge in ("tgi_queue_size", "tgi_batch_current_size", "tgi_batch_current_max_tokens"):
        assert f"\n{gauge} 0\n" in text


def test_keep_alive_and_legacy_framing(spawn: Spawner) -> None:
    t = start_tgi(spawn, "--keep-alive", "0.2", "--legacy-sse")
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 1,
        "x_double": {"delay": 0.5},
    }
    raw = t.post("/v1/chat/completions", body).content
    assert raw.startswith(b":\n\n")  # axum KeepAlive comment during silence
    assert b'\n\ndata:{"object":"chat.completion.chunk"' in raw and raw.endswith(b"data:[DONE]\n\n")
