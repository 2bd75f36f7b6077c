"""Real FastChat 0.2.36 (controller + two HF model workers, on CPU) serving the tiny random llama.

Checks, over plain HTTP and without FastChat's openai_api_server, the wire facts the gateway's FastChat
adapter relies on (shared/backends.md part B §1): the controller's registry routes, the workers'
status/template/details/token-count routes, the NUL-delimited stream with cumulative text, the
non-stream and embedding routes. It also checks that tests/fixtures/fastchat_prompts.json matches what
the running workers serve. The first run on a machine builds FastChat's virtualenv (~70 s); then the
module takes ~30 s. If FastChat cannot be installed here, the tests skip with the reason.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.backends.fastchat_env import (
    FIXTURE,
    FSCHAT_VERSION,
    FastChatUnavailable,
    controller_args,
    ensure_fastchat_venv,
    venv_python,
    wait_worker_ready,
    worker_args,
)
from tests.backends.availability import unavailable
from tests.backends.hf_model import write_tiny_llama
from tests.procs import Proc, free_port


def _register_marker() -> None:
    # Registered here as well until pyproject's [tool.pytest.ini_options] lists it (filterwarnings =
    # error turns an unknown mark into a collection error). Inert once registered there.
    config = getattr(pytest.mark, "_config", None)
    markers = config.getini("markers") if config is not None else []
    if config is not None and not any(m.split(":")[0].strip() == "fastchat" for m in markers):
        config.addinivalue_line("markers", "fastchat: real FastChat (controller + model worker) on CPU")


_register_marker()
pytestmark = pytest.mark.fastchat

LLAMA = ["tiny-llama", "tiny-llama-alias"]    # worker A: --conv-template zero_shot, two names
VICUNA = "tiny-vicuna"                         # worker B: --conv-template vicuna_v1.1
CONTEXT = 512                                  # write_tiny_llama(max_pos=512)
PROMPT = "Hello! How are you?"
STREAM_KEYS = ["text", "error_code", "usage", "finish_reason", "logprobs"]


@dataclass
class FastChat:
    venv: Path
    controller: str
    llama: str      # worker URLs
    vicuna: str


@pytest.fixture(scope="module")
def fc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastChat]:
    try:
        venv = ensure_fastchat_venv()
    except FastChatUnavailable as e:
        unavailable("FastChat", e)
    tmp = tmp_path_factory.mktemp("fastchat")
    model = write_tiny_llama(tmp / "tiny-llama", max_pos=CONTEXT)
    procs: list[Proc] = []
    try:
        cport = free_port()
        controller = f"http://127.0.0.1:{cport}"
        argv, env = controller_args(venv, cport)
        procs.append(Proc(argv, tmp / "controller.log", env))
        procs[-1].wait_http(controller + "/test_connection", timeout=60)   # workers register at start
        urls = []
        for name, names, template in [("llama", LLAMA, "zero_shot"), ("vicuna", [VICUNA], "vicuna_v1.1")]:
            port = free_port()
            argv, env = worker_args(venv, model, port, controller, model_names=names, conv_template=template)
            procs.append(Proc(argv, tmp / f"worker-{name}.log", env))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs[1:]):     # both load at once
            wait_worker_ready(url, timeout=120, proc=proc)
        yield FastChat(venv, controller, *urls)
    finally:
        for p in reversed(procs):
            p.stop()


def post(url: str, body: object = None, timeout: float = 60) -> httpx.Response:
    r = httpx.post(url, json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    return r


def stream_objects(url: str, params: dict) -> tuple[httpx.Response, bytes, list[dict]]:
    with httpx.stream("POST", url + "/worker_generate_stream", json=params, timeout=60) as r:
        raw = r.read()
    assert r.status_code == 200
    assert raw.endswith(b"\0")
    parts = raw.split(b"\0")
    assert parts[-1] == b""
    return r, raw, [json.loads(p) for p in parts[:-1]]


# --- controller ---------------------------------------------------------------------------------------

def test_controller_test_connection(fc: FastChat) -> None:
    r = httpx.get(fc.controller + "/test_connection")
    assert r.status_code == 200 and r.json() == "success"


def test_controller_list_models(fc: FastChat) -> None:
    models = post(fc.controller + "/list_models").json()["models"]
    assert sorted(models) == sorted(LLAMA + [VICUNA])    # a set: no order


def test_controller_get_worker_address(fc: FastChat) -> None:
    for name in LLAMA:
        assert post(fc.controller + "/get_worker_address", {"model": name}).json() == {"address": fc.llama}
    assert post(fc.controller + "/get_worker_address", {"model": VICUNA}).json() == {"address": fc.vicuna}
    assert post(fc.controller + "/get_worker_address", {"model": "nope"}).json() == {"address": ""}


def test_controller_aggregate_status_and_heartbeat(fc: FastChat) -> None:
    status = post(fc.controller + "/worker_get_status").json()
    assert status == {"model_names": sorted(LLAMA + [VICUNA]), "speed": 2, "queue_length": 0}
    beat = {"worker_name": "http://127.0.0.1:1", "queue_length": 0}
    assert post(fc.controller + "/receive_heart_beat", beat).json() == {"exist": False}
    beat["worker_name"] = fc.llama
    assert post(fc.controller + "/receive_heart_beat", beat).json() == {"exist": True}


# --- worker: metadata ---------------------------------------------------------------------------------

def test_worker_get_status(fc: FastChat) -> None:
    for url, names in [(fc.llama, LLAMA), (fc.vicuna, [VICUNA])]:
        status = post(url + "/worker_get_status").json()
        assert status == {"model_names": names, "speed": 1, "queue_length": 0}


def test_worker_conv_template_matches_fixture(fc: FastChat) -> None:
    fixture = json.loads(FIXTURE.read_text())
    for url, name, template in [(fc.llama, LLAMA[0], "zero_shot"), (fc.vicuna, VICUNA, "vicuna_v1.1")]:
        body = post(url + "/worker_get_conv_template", {"model": name}).json()
        assert body == fixture["templates"][template]
        conv = body["conv"]
        assert conv["name"] == template and isinstance(conv["sep_style"], int)
    assert fixture["templates"]["vicuna_v1.1"]["conv"]["sep_style"] == 2
    assert fixture["templates"]["vicuna_v1.1"]["conv"]["roles"] == ["USER", "ASSISTANT"]


def test_prompt_fixture_covers_every_sep_style(fc: FastChat) -> None:
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["fschat_version"] == FSCHAT_VERSION
    code = ("import json; from fastchat.conversation import SeparatorStyle as S; "
            "print(json.dumps({s.name: int(s) for s in S}))")
    out = subprocess.run([str(venv_python(fc.venv)), "-c", code], capture_output=True, text=True, check=True,
                         env={"LOGDIR": "", "PATH": "/usr/bin:/bin"}).stdout
    styles = json.loads(out.strip().splitlines()[-1])
    assert fixture["sep_styles"] == styles
    assert {c["sep_style_name"] for c in fixture["cases"]} == set(styles)
    for case in fixture["cases"]:
        conv = fixture["templates"][case["template"]]["conv"]
        assert case["sep_style"] == conv["sep_style"] == styles[case["sep_style_name"]]
        assert case["messages"] == fixture["message_sets"][case["messages_name"]]
    assert len(fixture["cases"]) >= 40


def test_model_details(fc: FastChat) -> None:
    assert post(fc.llama + "/model_details", {"model": LLAMA[0]}).json() == {"context_length": CONTEXT}


def test_count_token_matches_generation_usage(fc: FastChat) -> None:
    count = post(fc.llama + "/count_token", {"model": LLAMA[0], "prompt": PROMPT}).json()
    assert count["error_code"] == 0 and count["count"] > 0 and set(count) == {"count", "error_code"}
    gen = post(fc.llama + "/worker_generate", {"model": LLAMA[0], "prompt": PROMPT, "temperature": 0,
                                               "max_new_tokens": 2, "echo": False}).json()
    assert gen["usage"]["prompt_tokens"] == count["count"]


# --- worker: generation -------------------------------------------------------------------------------

GEN = {"model": LLAMA[0], "prompt": PROMPT, "temperature": 0, "max_new_tokens": 12, "echo": False}


def test_worker_generate_stream(fc: FastChat) -> None:
    r, raw, objs = stream_objects(fc.llama, GEN)
    assert "content-type" not in r.headers      # StreamingResponse without a media type
    assert len(objs) >= 3
    for obj in objs:
        assert list(obj) == STREAM_KEYS and obj["error_code"] == 0 and obj["logprobs"] is None
        usage = obj["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    texts = [o["text"] for o in objs]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts       # cumulative
    assert all(o["finish_reason"] is None for o in objs[:-1])
    last = objs[-1]
    # The tiny model never emits eos (hf_model.py): max_new_tokens ends it; completion_tokens is the
    # loop index, one below the number of generated tokens.
    assert last["finish_reason"] == "length"
    assert last["usage"]["completion_tokens"] == GEN["max_new_tokens"] - 1
    assert last["text"] == objs[-2]["text"] and last["text"].isascii() and last["text"]
    assert not last["text"].startswith(PROMPT)
    assert b'{"text": ' in raw and b'"error_code": 0' in raw   # json.dumps default separators


def test_worker_generate_equals_last_stream_object(fc: FastChat) -> None:
    *_, objs = stream_objects(fc.llama, GEN)
    r = post(fc.llama + "/worker_generate", GEN)
    assert r.headers["content-type"] == "application/json"
    assert r.json() == objs[-1]
    assert post(fc.llama + "/worker_generate", GEN).json() == objs[-1]       # greedy: deterministic


def test_echo_defaults_to_true(fc: FastChat) -> None:
    params = {k: v for k, v in GEN.items() if k != "echo"}
    echoed = post(fc.llama + "/worker_generate", params).json()
    plain = post(fc.llama + "/worker_generate", GEN).json()
    assert echoed["text"] == PROMPT + plain["text"]


def test_stop_string(fc: FastChat) -> None:
    full = post(fc.llama + "/worker_generate", {**GEN, "max_new_tokens": 16}).json()["text"]
    stop = full[6:9]
    expected = full[:full.find(stop)]
    *_, objs = stream_objects(fc.llama, {**GEN, "max_new_tokens": 16, "stop": [stop]})
    assert objs[-1]["finish_reason"] == "stop" and objs[-1]["text"] == expected
    assert all(stop not in o["text"] for o in objs)


def test_vicuna_worker_generates_from_fixture_prompt(fc: FastChat) -> None:
    fixture = json.loads(FIXTURE.read_text())
    case = next(c for c in fixture["cases"] if c["id"] == "vicuna_v1.1/system_user")
    params = {"model": VICUNA, "prompt": case["prompt"], "temperature": 0, "max_new_tokens": 4, "echo": False,
              "stop": case["stop"], "stop_token_ids": case["stop_token_ids"]}
    out = post(fc.vicuna + "/worker_generate", params).json()
    count = post(fc.vicuna + "/count_token", {"model": VICUNA, "prompt": case["prompt"]}).json()["count"]
    assert out["error_code"] == 0 and out["usage"]["prompt_tokens"] == count and out["text"]


# --- worker: embeddings -------------------------------------------------------------------------------

def test_worker_get_embeddings(fc: FastChat) -> None:
    inputs = ["Hello world", "The quick brown fox jumps"]
    body = post(fc.llama + "/worker_get_embeddings", {"model": LLAMA[0], "input": inputs}).json()
    assert set(body) == {"embedding", "token_num"}
    counts = [post(fc.llama + "/count_token", {"model": LLAMA[0], "prompt": text}).json()["count"]
              for text in inputs]
    assert body["token_num"] == sum(counts)
    assert len(body["embedding"]) == 2
    for vec in body["embedding"]:
        assert len(vec) == 64 and math.isclose(math.hypot(*vec), 1.0, rel_tol=1e-4)   # hidden size, L2-normed
    b64 = post(fc.llama + "/worker_get_embeddings",
               {"model": LLAMA[0], "input": inputs, "encoding_format": "base64"}).json()
    assert b64["token_num"] == body["token_num"]
    for enc, vec in zip(b64["embedding"], body["embedding"]):
        floats = struct.unpack("<64f", base64.b64decode(enc))
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(floats, vec))
