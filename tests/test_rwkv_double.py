"""The RWKV-Runner double (tests/doubles/rwkv_server.py) as a real process, over plain HTTP.

Each behaviour checked here is one the real backend-python (RWKV-Runner v1.9.11) has; see the
double's docstring and backends.md part B §2.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import Proc, Spawner, free_port

MODEL_STEM = "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096"
USER = [{"role": "user", "content": "hi"}]
FULL = "Hello there.\n\nA second paragraph follows."
DEFAULT_STOP = ["\n\nUser", "\n\nQuestion", "\n\nQ", "\n\nHuman", "\n\nBob", "\n\nAssistant", "\n\nAnswer",
                "\n\nA", "\n\nBot", "\n\nAlice", "\n\nObservation"]
PING = re.compile(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\r\n\r\n")


class Rwkv:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=kw.pop("timeout", 30), **kw)

    def chat(self, **body: Any) -> httpx.Response:
        return self.post("/v1/chat/completions", {"messages": USER, **body})

    def stats(self) -> dict[str, Any]:
        return self.get("/_stats").json()

    def status(self) -> int:
        return self.get("/status").json()["status"]

    def wait(self, cond: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.stats()
            if cond(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"condition not reached; stats: {self.stats()}")


def start_rwkv(spawn: Spawner, *args: str, preload: bool = True) -> Rwkv:
    port = free_port()
    extra = ["--preload", f"models/{MODEL_STEM}.pth"] if preload else []
    p = spawn.proc([sys.executable, "-m", "tests.doubles.rwkv_server", "--port", str(port), *extra, *args],
                   f"rwkv-{port}")
    p.wait_http(f"http://127.0.0.1:{port}/")
    return Rwkv(p, port)


def raw_post(port: int, path: str, body: Any, timeout: float = 10.0) -> bytes:
    """The exact bytes on the wire (status line, headers, chunked body), read until the server closes."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % (path.encode(), len(data)) + data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def dechunk(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return head, out


class StreamReader(threading.Thread):
    """Reads one SSE answer in the background, keeping each piece with its arrival time."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.status: int | None = None
        self.headers_at: float | None = None
        self.pieces: list[tuple[float, bytes]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=60) as r:
                self.status = r.status_code
                self.headers_at = time.monotonic()
                for piece in r.iter_raw():
                    self.pieces.append((time.monotonic(), piece))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    @property
    def data(self) -> bytes:
        return b"".join(p for _, p in self.pieces)


def sse_events(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n\r\n"), data
    return data[:-4].split(b"\r\n\r\n")


def data_json(events: list[bytes]) -> list[Any]:
    return [json.loads(e[len(b"data: "):]) for e in events
            if e.startswith(b"data: ") and e != b"data: [DONE]"]


# -- liveness, status, models -------------------------------------------------------------------------


def test_root_status_models_without_a_model(spawn: Spawner) -> None:
    d = start_rwkv(spawn, preload=False)
    r = d.get("/")
    assert r.status_code == 200 and r.content == b'{"Hello":"World!"}'
    assert r.headers["content-type"] == "application/json" and r.headers["server"] == "uvicorn"
    s = d.get("/status").json()
    assert s == {"status": 0, "pid": d.proc.popen.pid, "device_name": "CPU"}

    for path in ("/models", "/v1/models"):
        doc = d.get(path).json()
        assert doc["object"] == "list"
        assert [m["id"] for m in doc["data"]] == ["rwkv", "gpt-3.5-turbo", "text-davinci-003"]
        assert doc["data"][0] == {"id": "rwkv", "object": "model", "owned_by": "rwkv", "root": "rwkv",
                                  "parent": None}
        fake = doc["data"][1]
        assert fake["owned_by"] == "openai" and fake["created"] == 1677610602
        assert fake["root"] == "gpt-3.5-turbo"
        assert fake["permission"][0]["object"] == "model_permission" and fake["parent"] is None
        assert doc["data"][2]["owned_by"] == "openai-internal"

    assert d.get("/v1/models/gpt-3.5-turbo").json()["id"] == "gpt-3.5-turbo"
    assert d.get("/models/text-davinci-003").json()["owned_by"] == "openai-internal"
    card = d.get("/v1/models/my-RWKV-anything")
    assert card.status_code == 200 and card.json()["id"] == "rwkv"  # any id containing "rwkv"
    missing = d.get("/v1/models/llama-3")
    assert missing.status_code == 404
    assert missing.json() == {"detail": {"error": {"message": "The model 'llama-3' does not exist",
                                                   "type": "invalid_request_error", "param": "model",
                                                   "code": "model_not_found"}}}

    # inference without a model: 400, checked before "messages not found"; 422 comes before both
    for path, body in (("/v1/chat/completions", {"messages": []}), ("/chat/completions", {"messages": USER}),
                       ("/v1/completions", {"prompt": "x"}), ("/completions", {"prompt": "x"}),
                       ("/v1/embeddings", {"input": "x"}), ("/embeddings", {"input": "x"})):
        r = d.post(path, body)
        assert r.status_code == 400 and r.json() == {"detail": "model not loaded"}, path
    r = d.post("/v1/chat/completions", {"messages": [], "max_tokens": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "max_tokens"]

    # FastAPI's defaults for unknown routes and methods
    assert d.get("/v1/nothing").status_code == 404 and d.get("/v1/nothing").json() == {"detail": "Not Found"}
    r = d.post("/status", {})
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
    assert r.headers["allow"] == "GET"


def test_preload_starts_working_with_the_file_stem_as_name(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    assert d.status() == 3
    assert d.get("/v1/models").json()["data"][0]["id"] == MODEL_STEM
    assert d.get("/v1/models/rwkv").json()["id"] == MODEL_STEM


# -- /switch-model --------------------------------------------------------------------------------------


def test_switch_model_loading_304_failures_and_unload(spawn: Spawner, tmp_path: Path) -> None:
    model = tmp_path / "RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth"
    model.write_bytes(b"weights")
    d = start_rwkv(spawn, "--load-seconds", "1.0", preload=False)

    result: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", d.post("/switch-model", {
        "model": str(model), "strategy": "cpu fp32"})))
    started = time.monotonic()
    t.start()
    deadline = time.monotonic() + 5
    while d.status() != 2:
        assert time.monotonic() < deadline, "never saw status 2 (Loading)"
        time.sleep(0.02)
    again = d.post("/switch-model", {"model": str(model), "strategy": "cpu fp32"})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["content-type"] == "application/json"
    loading = d.chat()
    assert loading.status_code == 400 and loading.json() == {"detail": "model not loaded"}
    t.join()
    assert time.monotonic() - started >= 0.9
    r = result["r"]
    assert r.status_code == 200 and r.json() == "success" and r.content == b'"success"'
    assert d.status() == 3
    assert d.get("/v1/models").json()["data"][0]["id"] == model.stem

    # a path that is not on disk: .pth appended as rwkv_pip does, torch.load's error text, unloaded
    fast = {"x_double": {"load_seconds": 0}}  # a double knob: no load time for the rest
    bad = d.post("/switch-model", {"model": "models/nope", "strategy": "cpu fp32", **fast})
    assert bad.status_code == 500
    assert bad.json() == {"detail": "failed to load: [Errno 2] No such file or directory: 'models/nope.pth'"}
    assert d.status() == 0 and d.get("/v1/models").json()["data"][0]["id"] == "rwkv"
    gguf = d.post("/switch-model", {"model": "nope.gguf", "strategy": "cpu 2048", **fast})
    assert gguf.status_code == 500
    assert gguf.json() == {"detail": "failed to load: Model path does not exist: nope.gguf"}

    assert d.post("/switch-model", {"model": str(model), "strategy": "cuda fp16", **fast}).json() == "success"
    assert d.status() == 3
    unload = d.post("/switch-model", {"model": "", "strategy": ""})
    assert unload.status_code == 200 and unload.json() == "success"
    assert d.status() == 0

    invalid = d.post("/switch-model", {"model": "x"})
    assert invalid.status_code == 422
    (err,) = invalid.json()["detail"]
    assert err["type"] == "missing" and err["loc"] == ["body", "strategy"]


def test_deploy_mode_locks_switch_model_and_exit(spawn: Spawner, tmp_path: Path) -> None:
    model = tmp_path / "RWKV-deploy.pth"
    model.write_bytes(b"w")
    d = start_rwkv(spawn, "--load-seconds", "0.1", preload=False)
    r = d.post("/switch-model", {"model": str(model), "strategy": "cpu fp32", "deploy": True})
    assert r.json() == "success"
    for path, body in (("/switch-model", {"model": "", "strategy": "cpu"}), ("/exit", None)):
        r = d.post(path, body)
        assert r.status_code == 403 and r.json() == {"detail": "Forbidden"}, path
    assert d.status() == 3 and d.stats()["exit_calls"] == 0


def test_exit_is_recorded_and_the_connection_dropped(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    with pytest.raises(httpx.TransportError):  # the real server kills itself before answering
        d.post("/exit")
    st = d.stats()
    assert st["exit_calls"] == 1 and [q["path"] for q in st["requests"]] == ["/exit"]
    assert d.status() == 3  # the double stays up so a test can see the call


# -- chat and completions, non-stream ---------------------------------------------------------------------


def test_nonstream_chat_shape_default_stop_cut_and_usage(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    for path in ("/v1/chat/completions", "/chat/completions"):
        r = d.post(path, {"model": "gpt-4o", "messages": USER})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        doc = r.json()
        assert doc == {"object": "chat.completion", "model": MODEL_STEM,
                       "choices": [{"message": {"role": "assistant", "content": "Hello there."}, "index": 0,
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}}
        assert "id" not in doc and "created" not in doc
    # compact JSON like starlette's JSONResponse
    assert d.chat(stop=[]).content.startswith(b'{"object":"chat.completion","model":"')

    full = d.chat(stop=[]).json()
    assert full["choices"][0]["message"]["content"] == FULL
    assert full["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert d.chat(stop=None).json()["choices"][0]["message"]["content"] == "Hello there."  # null -> defaults
    assert d.chat(stop="paragraph").json()["choices"][0]["message"]["content"] == "Hello there.\n\nA second "

    reqs = d.get("/_requests").json()
    assert reqs[0]["prompt"] == "User: hi\n\nAssistant:"
    assert reqs[0]["stop"] == DEFAULT_STOP + ["\n\nUser", "\n\nAssistant"]
    assert reqs[0]["body"]["model"] == "gpt-4o"  # recorded as received; the server ignores it
    assert reqs[3]["stop"] == ["\n\nUser", "\n\nAssistant"]  # stop: [] still gets the name stops
    assert reqs[5]["stop"] == ["paragraph", "\n\nUser", "\n\nAssistant"]

    # the prompt template (v5+ chat_template) with names and a system message
    d.post("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Hey"},
                                                 {"role": "user", "content": "Go"}],
                                    "user_name": "Bob", "assistant_name": "Alice"})
    last = d.get("/_requests").json()[-1]
    assert last["prompt"] == "System: Be brief.\n\nBob: Hi\n\nAlice: Hey\n\nBob: Go\n\nAlice:"
    assert last["stop"][-2:] == ["\n\nBob", "\n\nAlice"]


def test_max_tokens_cuts_silently_with_finish_reason_stop(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    doc = d.chat(max_tokens=2, stop=[]).json()
    assert doc["choices"][0] == {"message": {"role": "assistant", "content": "Hello there."}, "index": 0,
                                 "finish_reason": "stop"}
    assert doc["usage"]["completion_tokens"] == 2  # == max_tokens: the only hint of a "length" finish
    doc = d.chat(max_tokens=5, stop=[]).json()
    assert doc["choices"][0]["message"]["content"] == "Hello there.\n\nA second"
    assert doc["usage"]["completion_tokens"] == 5 and doc["choices"][0]["finish_reason"] == "stop"
    # a stop that ends the answer early: completion_tokens counts the token that completed the stop
    doc = d.chat(max_tokens=500).json()
    assert doc["usage"]["completion_tokens"] == 4

    # server-side defaults from /update-config
    assert d.post("/update-config", {"max_tokens": 3}).json() == "success"
    assert d.chat(stop=[]).json()["usage"]["completion_tokens"] == 3
    assert d.chat(stop=[], max_tokens=6).json()["usage"]["completion_tokens"] == 6


def test_completions_have_no_default_stop(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    for path in ("/v1/completions", "/completions"):
        doc = d.post(path, {"prompt": "Once upon a time"}).json()
        assert doc == {"object": "text_completion", "model": MODEL_STEM,
                       "choices": [{"text": FULL, "index": 0, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}}
    doc = d.post("/v1/completions", {"prompt": "x", "stop": ["\n\n"]}).json()
    assert doc["choices"][0]["text"] == "Hello there."
    cut = d.post("/v1/completions", {"prompt": "x", "max_tokens": 1}).json()
    assert cut["choices"][0]["text"] == "Hello" and cut["choices"][0]["finish_reason"] == "stop"
    # prompt null/""/[] -> "\n"; a list -> its first element only
    assert d.post("/v1/completions", {"prompt": None}).json()["usage"]["prompt_tokens"] == 1
    d.post("/v1/completions", {"prompt": ["first one", "second"]})
    assert d.get("/_requests").json()[-1]["prompt"] == "first one"


@pytest.mark.parametrize("field,value,etype", [
    ("max_tokens", 0, "greater_than"), ("max_tokens", 102401, "less_than_equal"),
    ("temperature", -0.1, "greater_than_equal"), ("temperature", 3.01, "less_than_equal"),
    ("top_p", -0.5, "greater_than_equal"), ("top_p", 1.5, "less_than_equal"),
    ("presence_penalty", -2.1, "greater_than_equal"), ("presence_penalty", 2.1, "less_than_equal"),
    ("frequency_penalty", -3, "greater_than_equal"), ("frequency_penalty", 2.5, "less_than_equal"),
    ("penalty_decay", 0.98, "greater_than_equal"), ("penalty_decay", 1.0, "less_than_equal"),
    ("top_k", -1, "greater_than_equal"), ("top_k", 101, "less_than_equal"),
    ("max_tokens", None, "int_type"), ("temperature", None, "float_type"),
    ("max_tokens", 1.5, "int_from_float"),
])
def test_out_of_range_sampling_params_are_422(rwkv_shared: Rwkv, field: str, value: Any, etype: str) -> None:
    for path, base in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "x"})):
        r = rwkv_shared.post(path, {**base, field: value})
        assert r.status_code == 422, (path, r.text)
        err = r.json()["detail"]
        assert len(err) == 1 and err[0]["type"] == etype and err[0]["loc"] == ["body", field]
        assert err[0]["input"] == value and err[0]["url"] == f"https://errors.pydantic.dev/2.4/v/{etype}"


def test_validation_shapes_and_messages_not_found(rwkv_shared: Rwkv) -> None:
    d = rwkv_shared
    r = d.post("/v1/chat/completions", {"messages": USER, "max_tokens": 0, "temperature": 3.5})
    assert r.json() == {"detail": [
        {"type": "greater_than", "loc": ["body", "max_tokens"], "msg": "Input should be greater than 0",
         "input": 0, "ctx": {"gt": 0}, "url": "https://errors.pydantic.dev/2.4/v/greater_than"},
        {"type": "less_than_equal", "loc": ["body", "temperature"],
         "msg": "Input should be less than or equal to 3", "input": 3.5, "ctx": {"le": 3.0},
         "url": "https://errors.pydantic.dev/2.4/v/less_than_equal"}]}
    # OpenAI content parts: every member of the message union fails
    parts = d.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text",
                                                                                        "text": "hi"}]}]})
    assert parts.status_code == 422
    locs = [e["loc"] for e in parts.json()["detail"]]
    assert ["body", "messages", 0, "ChatCompletionUserMessageParam", "content"] in locs
    assert parts.json()["detail"][0] == {
        "type": "string_type", "loc": ["body", "messages", 0, "ChatCompletionSystemMessageParam", "content"],
        "msg": "Input should be a valid string", "input": [{"type": "text", "text": "hi"}],
        "url": "https://errors.pydantic.dev/2.4/v/string_type"}
    assert d.post("/v1/chat/completions", {}).json()["detail"][0]["loc"] == ["body", "messages"]
    bad_json = httpx.post(d.url + "/v1/chat/completions", content=b"{oops",
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    # valid but empty: 400 (the model is loaded)
    for body in ({"messages": []}, {"messages": None}):
        r = d.post("/v1/chat/completions", body)
        assert r.status_code == 400 and r.json() == {"detail": "messages not found"}
    # unknown OpenAI fields are ignored
    ok = d.post("/v1/chat/completions", {"messages": USER, "n": 2, "stream_options": {"include_usage": True},
                                         "response_format": {"type": "json_object"}, "seed": 1})
    assert ok.status_code == 200


@pytest.fixture(scope="module")
def rwkv_shared(module_spawn: Spawner) -> Rwkv:
    return start_rwkv(module_spawn)


# -- streaming --------------------------------------------------------------------------------------------


def test_stream_bytes_match_sse_starlette(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    raw = raw_post(d.port, "/v1/chat/completions", {"messages": USER, "stream": True})
    head, body = dechunk(raw)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers

    def chunk(delta: dict) -> bytes:
        return (b'data: {"object": "chat.completion.chunk", "model": "' + MODEL_STEM.encode()
                + b'", "choices": [{"delta": ' + json.dumps(delta).encode()
                + b', "index": 0, "finish_reason": null}]}\r\n\r\n')

    # the default stop "\n\nA" ends the answer: the "\n\n" token was already streamed, the token that
    # completes the stop string comes as an empty delta, then the stop chunk and [DONE]
    assert body == (chunk({"content": "Hello"}) + chunk({"content": " there."}) + chunk({"content": "\n\n"})
                    + chunk({"content": ""})
                    + b'data: {"object": "chat.completion.chunk", "model": "' + MODEL_STEM.encode()
                    + b'", "choices": [{"delta": {}, "index": 0, "finish_reason": "stop"}]}\r\n\r\n'
                    + b"data: [DONE]\r\n\r\n")
    assert b'"id"' not in body and b'"created"' not in body and b'"role"' not in body and b"usage" not in body

    # max_tokens: no empty delta, the stop chunk all the same; completions stream "text"
    events = sse_events(dechunk(raw_post(d.port, "/chat/completions", {"messages": USER, "stream": True,
                                                                       "stop": [], "max_tokens": 3}))[1])
    docs = data_json(events)
    assert [c["choices"][0]["delta"] for c in docs] == [{"content": "Hello"}, {"content": " there."},
                                                        {"content": "\n\n"}, {}]
    assert docs[-1]["choices"][0]["finish_reason"] == "stop" and events[-1] == b"data: [DONE]"
    events = sse_events(dechunk(raw_post(d.port, "/v1/completions", {"prompt": "x", "stream": True}))[1])
    docs = data_json(events)
    assert "".join(c["choices"][0]["text"] for c in docs) == FULL
    assert docs[-1] == {"object": "text_completion", "model": MODEL_STEM,
                        "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]}
    # json.dumps defaults: ASCII escapes
    events = sse_events(dechunk(raw_post(d.port, "/v1/chat/completions", {
        "messages": USER, "stream": True, "x_double": {"text": "héllo"}}))[1])
    assert b'"h\\u00e9llo"' in events[0]


def test_ping_comments_during_generation(spawn: Spawner) -> None:
    d = start_rwkv(spawn, "--ping-seconds", "0.3")
    r = StreamReader(d.url + "/v1/chat/completions",
                     {"messages": USER, "stream": True, "stop": [], "x_double": {"delay": 0.25}})
    r.start()
    r.join(30)
    assert r.error is None and r.status == 200
    events = sse_events(r.data)
    pings = [e for e in events if e.startswith(b": ping - ")]
    assert len(pings) >= 3
    assert all(PING.fullmatch(p + b"\r\n\r\n") for p in pings)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in data_json(events)) == FULL
    assert events[-1] == b"data: [DONE]"
    assert d.stats()["pings"] == len(pings)


def test_one_global_lock_serializes_streams_and_pings_while_waiting(spawn: Spawner) -> None:
    d = start_rwkv(spawn, "--ping-seconds", "0.3")
    url = d.url + "/v1/chat/completions"
    first = StreamReader(url, {"messages": USER, "stream": True, "stop": [], "x_double": {"hold": True}})
    first.start()
    d.wait(lambda s: s["in_flight"] == 1)
    second = StreamReader(url, {"messages": USER, "stream": True, "stop": []})
    second.start()
    st = d.wait(lambda s: s["waiting"] == 1)
    assert st["in_flight"] == 1
    # the waiting stream already has its 200 and headers, and gets pings, but no data
    deadline = time.monotonic() + 10
    while not PING.search(second.data):
        assert time.monotonic() < deadline, second.data
        time.sleep(0.05)
    assert second.status == 200 and b"data:" not in second.data
    assert first.data.startswith(b'data: {"object": "chat.completion.chunk"') and b"[DONE]" not in first.data
    time.sleep(0.3)
    assert b"data:" not in second.data  # still waiting behind the held generation

    released = time.monotonic()
    d.post("/_release")
    first.join(10)
    second.join(10)
    assert first.error is None and second.error is None
    for reader in (first, second):
        assert reader.data.endswith(b"data: [DONE]\r\n\r\n")
        docs = data_json(sse_events(reader.data))
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in docs)
        assert text == FULL
    first_data = min(t for t, p in second.pieces if b"data:" in p)
    assert first_data >= released
    st = d.stats()
    assert st["max_in_flight"] == 1 and st["max_waiting"] == 1 and st["waiting"] == 0
    g1, g2 = st["generations"]
    assert g2["start"] >= g1["end"]


def test_waiting_request_that_gives_up_is_counted_cancelled(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    held: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: held.append(d.chat(x_double={"hold": True})), daemon=True)
    holder.start()
    d.wait(lambda s: s["in_flight"] == 1)
    with pytest.raises(httpx.ReadTimeout):
        d.post("/v1/chat/completions", {"messages": USER}, timeout=0.5)
    st = d.wait(lambda s: s["cancelled"] == 1 and s["waiting"] == 0)
    assert st["in_flight"] == 1
    d.post("/_release")
    holder.join(10)
    assert held[0].json()["choices"][0]["message"]["content"] == "Hello there."
    assert d.wait(lambda s: s["in_flight"] == 0)["completed"] == 1


def test_generation_failures_are_swallowed_into_200(spawn: Spawner) -> None:
    d = start_rwkv(spawn)
    doc = d.chat(x_double={"fail": True}).json()
    assert doc["choices"][0] == {"message": {"role": "assistant", "content": ""}, "index": 0,
                                 "finish_reason": "stop"}
    assert doc["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    doc = d.chat(x_double={"fail_at": 2}).json()
    assert doc["choices"][0]["message"]["content"] == "Hello there."
    assert doc["usage"]["completion_tokens"] == 2
    events = sse_events(dechunk(raw_post(d.port, "/v1/chat/completions", {"messages": USER, "stream": True,
                                                                          "x_double": {"fail_at": 1}}))[1])
    docs = data_json(events)
    assert [c["choices"][0]["delta"] for c in docs] == [{"content": "Hello"}, {}]
    assert docs[-1]["choices"][0]["finish_reason"] == "stop" and events[-1] == b"data: [DONE]"
    assert d.stats()["failed"] == 3
    assert "injected failure" in d.proc.output()  # printed, as the real server does


# -- embeddings and .gguf models --------------------------------------------------------------------------


def test_embeddings_for_pth_models(spawn: Spawner) -> None:
    d = start_rwkv(spawn, "--embedding-dim", "8")
    for path in ("/v1/embeddings", "/embeddings", "/v1/engines/text-embedding-ada-002/embeddings"):
        doc = d.post(path, {"input": "hello big world", "model": "text-embedding-3-small"}).json()
        assert doc["object"] == "list" and doc["model"] == MODEL_STEM
        assert doc["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        (item,) = doc["data"]
        assert set(item) == {"object", "index", "embedding"} and item["object"] == "embedding"
        assert len(item["embedding"]) == 8 and abs(sum(x * x for x in item["embedding"]) - 1) < 1e-9
    doc = d.post("/v1/embeddings", {"input": ["a b", "c"], "encoding_format": "base64"}).json()
    assert [x["index"] for x in doc["data"]] == [0, 1] and doc["usage"]["prompt_tokens"] == 3
    assert len(base64.b64decode(doc["data"][0]["embedding"])) == 8 * 4  # float32
    for empty in ("", [], [[]]):
        r = d.post("/v1/embeddings", {"input": empty})
        assert r.status_code == 400 and r.json() == {"detail": "input not found"}
    assert d.post("/v1/embeddings", {"input": "x", "encoding_format": None}).status_code == 422


def test_gguf_model_no_embeddings_and_no_default_stop(spawn: Spawner, tmp_path: Path) -> None:
    gguf = tmp_path / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    d = start_rwkv(spawn, "--load-seconds", "0", preload=False)
    assert d.post("/switch-model", {"model": str(gguf), "strategy": "cpu 4096"}).json() == "success"
    assert d.get("/v1/models").json()["data"][0]["id"] == gguf.stem
    r = d.post("/v1/embeddings", {"input": "x"})
    assert r.status_code == 400 and r.json() == {"detail": "model not support embedding"}
    doc = d.chat().json()  # llama.cpp models drop the default stop list; prompt_tokens never counted
    assert doc["choices"][0]["message"]["content"] == FULL
    assert doc["usage"] == {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}
    assert d.get("/_requests").json()[-1]["stop"] is None
    assert d.chat(stop=["\n\n"]).json()["choices"][0]["message"]["content"] == "Hello there."


# -- issue 12: split characters, Albatross, a blocking prefill, the tool-call stream -----------------------


def test_tokens_that_split_a_character_yield_no_chunk(rwkv_shared: Rwkv) -> None:
    emoji = "\U0001F600"  # 4 UTF-8 bytes: two byte tokens (utils/rwkv.py:371 yields only without U+FFFD)
    body = {"stop": [], "x_double": {"text": emoji * 4}}
    whole = rwkv_shared.chat(**body).json()
    assert whole["choices"][0]["message"]["content"] == emoji * 4 and whole["usage"]["completion_tokens"] == 8
    raw = raw_post(rwkv_shared.port, "/v1/chat/completions", {"messages": USER, "stream": True, **body})
    deltas = [d["choices"][0]["delta"].get("content") for d in data_json(sse_events(dechunk(raw)[1]))]
    assert deltas == [emoji] * 4 + ["", None]  # 4 chunks for 8 tokens; a natural end: an empty delta
    raw = raw_post(rwkv_shared.port, "/v1/chat/completions", {"messages": USER, "stream": True, "max_tokens": 5,
                                                             **body})
    deltas = [d["choices"][0]["delta"].get("content") for d in data_json(sse_events(dechunk(raw)[1]))]
    assert deltas == [emoji] * 2 + [None]  # cut at the limit, in mid-character: no empty delta
    cut = rwkv_shared.chat(max_tokens=5, **body).json()
    assert cut["usage"]["completion_tokens"] == 4  # the last yield's count: the 5th token never yielded


def test_albatross_strategy_takes_no_lock_and_streams_compact(spawn: Spawner, tmp_path: Path) -> None:
    d = start_rwkv(spawn, preload=False)
    weights = tmp_path / f"{MODEL_STEM}.pth"
    weights.write_bytes(b"")
    assert d.post("/switch-model", {"model": str(weights), "strategy": "albatross batch=4",
                                    "x_double": {"load_seconds": 0}}).status_code == 200
    readers = [StreamReader(d.url + "/v1/chat/completions", {"messages": USER, "stream": True,
                                                             "x_double": {"hold": True}}) for _ in range(2)]
    for r in readers:
        r.start()
    d.wait(lambda st: st["in_flight"] == 2)  # eval_albatross: no completion_lock
    d.post("/_release")
    for r in readers:
        r.join(20)
    events = sse_events(readers[0].data)
    assert events[0].startswith(b'data: {"object":"chat.completion.chunk","model":')  # dumps_stream_chunk
    assert events[-2] == (b'data: {"object":"chat.completion.chunk","model":"%s","choices":[{"delta":{},'
                          b'"index":0,"finish_reason":"stop"}]}' % MODEL_STEM.encode())
    assert events[-1] == b"data: [DONE]"
    assert b'"content":""' not in readers[0].data  # its engine never yields an empty last delta


def test_a_prefill_blocks_status(rwkv_shared: Rwkv) -> None:
    t = threading.Thread(target=lambda: rwkv_shared.chat(x_double={"prefill_block": 3}))
    t.start()
    blocked = False
    while t.is_alive() and not blocked:  # the prefill holds the event loop 3 s: 6x this timeout
        try:
            rwkv_shared.get("/status", timeout=0.5)
        except httpx.TimeoutException:
            blocked = True
    t.join()
    assert blocked and rwkv_shared.status() == 3


def test_given_tools_a_short_answer_is_sent_whole_at_the_end(rwkv_shared: Rwkv) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    raw = raw_post(rwkv_shared.port, "/v1/chat/completions", {"messages": USER, "stream": True, "stop": [],
                                                             "tools": tools})
    docs = data_json(sse_events(dechunk(raw)[1]))
    assert [d["choices"] for d in docs] == [[{"index": 0, "delta": {"content": FULL}, "finish_reason": None}],
                                            [{"index": 0, "delta": {}, "finish_reason": "stop"}]]
