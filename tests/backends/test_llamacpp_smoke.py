"""A real llama.cpp `llama-server` (built from source, see tests/backends/llamacpp.py) serving a tiny random
llama GGUF that the test writes.

Checks the wire facts the gateway's llama.cpp adapter relies on (shared/backends.md part A §1) against the
real thing: /health ready and loading, /v1/models, chat with and without streaming, usage in the stream,
the native /completion stream, the context-overflow error, /metrics. The first run on a machine builds
llama-server (~9 min on 2 cores); after that the whole module takes a few seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends.llamacpp import (
    _writer_class,
    build_vocab,
    server_args,
    wait_ready,
    write_tiny_gguf,
)
from tests.procs import Proc, free_port


def _register_marker() -> None:
    # Registered here as well until pyproject's [tool.pytest.ini_options] lists it (filterwarnings =
    # error turns an unknown mark into a collection error). Inert once registered there.
    config = getattr(pytest.mark, "_config", None)
    if config is not None and not any(m.split(":")[0].strip() == "llamacpp"
                                      for m in config.getini("markers")):
        config.addinivalue_line("markers",
                                "llamacpp: runs a real llama.cpp llama-server (built once per machine)")


_register_marker()
pytestmark = pytest.mark.llamacpp

ALIAS = "tiny-llama"
CTX = 256
CHAT = {"model": ALIAS, "messages": [{"role": "user", "content": "Hello! How are you?"}], "max_tokens": 8,
        "temperature": 0}
LOADING = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}


@pytest.fixture(scope="module")
def server(llama_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("llamacpp")
    model = write_tiny_gguf(tmp / "tiny.gguf")
    port = free_port()
    proc = Proc(server_args(llama_binary, model, port, alias=ALIAS, ctx=CTX, parallel=2), tmp / "llama-server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield url
    finally:
        proc.stop()


def sse_data(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order (asserting llama.cpp's `data: ` framing)."""
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def test_fast_gguf_writer_matches_stock_writer() -> None:
    import gguf

    stock, fast = gguf.GGUFWriter("/dev/null", "llama"), _writer_class(min_fast=0)("/dev/null", "llama")
    array = gguf.GGUFValueType.ARRAY
    for arr in build_vocab():
        assert fast._pack_val(arr, array, True) == stock._pack_val(arr, array, True)


def test_tiny_gguf_is_small_and_has_the_special_tokens(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")  # no time bound: ~0.03 s, and nothing rests on its speed
    assert path.stat().st_size < 1_000_000
    tokens, _, types = build_vocab()
    assert {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<0x00>", "<0xFF>"} <= set(tokens)
    assert types[tokens.index("<|im_end|>")] == 3     # control


def test_health(server: str) -> None:
    r = httpx.get(server + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_models_lists_the_alias(server: str) -> None:
    body = httpx.get(server + "/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [ALIAS]
    assert body["data"][0]["owned_by"] == "llamacpp" and body["data"][0]["meta"]["n_ctx"] == CTX


def test_props_and_slots(server: str) -> None:
    props = httpx.get(server + "/props").json()
    assert props["total_slots"] == 2 and props["model_alias"] == ALIAS
    assert props["default_generation_settings"]["n_ctx"] == CTX
    slots = httpx.get(server + "/slots").json()
    assert [s["id"] for s in slots] == [0, 1] and all(s["n_ctx"] == CTX for s in slots)


def test_chat_non_stream(server: str) -> None:
    r = httpx.post(server + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == ALIAS
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_unknown_model_is_ignored(server: str) -> None:
    r = httpx.post(server + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == ALIAS       # single-model mode: answers with its own name


def test_chat_stream_with_usage_ends_with_done(server: str) -> None:
    body = {**CHAT, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_native_completion_stream_has_no_done(server: str) -> None:
    body = {"prompt": "Hello", "n_predict": 3, "temperature": 0, "stream": True}
    r = httpx.post(server + "/completion", json=body, timeout=30)
    assert r.status_code == 200
    events = [json.loads(d) for d in sse_data(r)]     # json.loads("[DONE]") would fail
    assert [e["stop"] for e in events] == [False, False, False, True]
    assert events[-1]["stop_type"] == "limit" and events[-1]["tokens_predicted"] == 3


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context(server: str, stream: bool) -> None:
    body = {**CHAT, "stream": stream, "messages": [{"role": "user", "content": "hello world " * 200}]}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "exceed_context_size_error" and err["code"] == 400
    assert err["n_ctx"] == CTX and err["n_prompt_tokens"] > CTX
    assert "exceeds the available context size" in err["message"]


def test_metrics(server: str) -> None:
    httpx.post(server + "/v1/chat/completions", json=CHAT, timeout=30)
    r = httpx.get(server + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {line.split()[0]: float(line.split()[1]) for line in r.text.splitlines()
              if line.startswith("llamacpp:")}
    assert values["llamacpp:tokens_predicted_total"] >= 8
    assert values["llamacpp:requests_processing"] == 0 and values["llamacpp:requests_deferred"] == 0


def test_loading_model_answers_503_then_200(llama_binary: Path, tmp_path: Path) -> None:
    # The state sequence, not its duration: from its first answer the server says 503 "Loading
    # model" on every route, then 200 for good. The "loading" model keeps it loading ~4 s here;
    # the polls are ~0.05 s apart, so the first answer lands inside the window with a wide margin.
    model = write_tiny_gguf(tmp_path / "loading.gguf", size="loading")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(server_args(llama_binary, model, port, alias="loading"), tmp_path / "llama-server.log")
    try:
        proc.wait_http(url + "/health", timeout=60)  # listening (the model loads after that)
        statuses = []
        deadline = time.monotonic() + 120
        while not statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline and proc.popen.poll() is None, proc.output()
            r = httpx.get(url + "/health")
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.json() == LOADING
                # every route answers the same while loading (unless loading finished in between)
                models = httpx.get(url + "/v1/models")
                assert models.json() == LOADING if models.status_code == 503 else models.status_code == 200
            time.sleep(0.05)
        assert r.json() == {"status": "ok"}
        assert statuses[0] == 503 and set(statuses[:-1]) == {503}, statuses  # loading, then ready
        assert all(httpx.get(url + "/health").status_code == 200 for _ in range(3))  # and it stays ready
    finally:
        proc.stop()
