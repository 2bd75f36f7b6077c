"""The RWKV-Runner double against recordings of the real backend-python app.

tests/fixtures/rwkv_recordings/ holds what the real app (RWKV-Runner, the revision and package versions in
_meta.json) answered to each request, recorded by tests/backends/rwkv_record.py with a tiny random-weight
model it writes. Here the double (tests/doubles/rwkv_server.py) gets the same requests in the same order
and must answer the same: status, the headers that matter, and the body byte for byte -- except the JSON
fields a recording lists under "vary" (generated text, token counts, pid, vectors: they depend on the
model), whose type (and, for vectors, shape) must still match. SSE streams are compared event by event:
framing, JSON layout of each `data:` line, and the sequence of content / empty / final / [DONE] events.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.procs import Spawner, free_port

DIR = Path(__file__).resolve().parent / "fixtures" / "rwkv_recordings"
RECORDINGS = [json.loads(p.read_text()) for p in sorted(DIR.glob("[0-9]*.json"))]
# answers long enough for every max_tokens used, with no default stop string in them
DOUBLE_TEXT = " ".join(f"word{i}" for i in range(40))
HEADERS = ("content-type", "server", "cache-control", "connection", "x-accel-buffering", "transfer-encoding",
           "allow")
PING = re.compile(r": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?")


def by_name(name: str) -> dict[str, Any]:
    return next(r for r in RECORDINGS if r["name"] == name)


def embedding_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0]
    return shape


def send(url: str, rec: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    req = rec["request"]
    content, headers = None, {}
    if "raw" in req:
        content, headers = req["raw"].encode(), {"Content-Type": "application/json"}
    elif "json" in req:
        body = dict(req["json"])
        if req["path"] == "/switch-model" and "strategy" in body:
            if body["model"].startswith("tiny-"):
                body["model"] = str(model_dir / body["model"])  # same file name: the model's name is its stem
            if not rec.get("background"):  # only the load that others watch needs to take its time
                body["x_double"] = {"load_seconds": 0}
        body.update(rec.get("double", {}))  # the double's answer text, where the comparison needs one
        content, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    with httpx.stream(req["method"], url + req["path"], content=content, headers=headers, timeout=60) as r:
        return {"status": r.status_code, "headers": [[k, v] for k, v in r.headers.multi_items() if k != "date"],
                "body": b"".join(r.iter_raw()).decode()}


def wait_status(url: str, want: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(url + "/status", timeout=10).json()["status"] == want:
            return
        time.sleep(0.02)
    raise AssertionError(f"/status never said {want}")


@pytest.fixture(scope="module")
def replies(session_spawn: Spawner, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every recorded request sent to one fresh double, in the recorded order."""
    model_dir = tmp_path_factory.mktemp("rwkv-model")
    (model_dir / "tiny-rwkv-world.pth").write_bytes(b"")
    shape = embedding_shape(json.loads(by_name("embeddings")["response"]["body"])["data"][0]["embedding"])
    port = free_port()
    # a long load, so that /status and a second /switch-model land while it runs (waited for, not slept)
    p = session_spawn.proc([sys.executable, "-m", "tests.doubles.rwkv_server", "--port", str(port),
                            "--load-seconds", "5", "--text", DOUBLE_TEXT,
                            "--embedding-shape", ",".join(map(str, shape))], f"rwkv-rec-{port}")
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/")
    out: dict[str, dict[str, Any]] = {}
    loading: threading.Thread | None = None
    for rec in RECORDINGS:
        if loading is not None and not rec.get("during_load"):
            loading.join(60)
            loading = None
        if rec.get("background"):
            loading = threading.Thread(target=lambda r=rec: out.update({r["name"]: send(url, r, model_dir)}))
            loading.start()
            wait_status(url, 2)
            continue
        out[rec["name"]] = send(url, rec, model_dir)
    p.stop()
    return out


def skeleton(value: Any, vary: list[str], path: str = "") -> Any:
    """The value with each varying field replaced by its type (and a vector by its shape)."""
    if path in vary:
        if isinstance(value, list):
            return f"<list {embedding_shape(value)}>"
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {k: skeleton(v, vary, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [skeleton(v, vary, f"{path}.*" if path else "*") for v in value]
    return value


def layout(doc: Any, style: str) -> str:
    if style == "starlette":  # JSONResponse.render
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
    return json.dumps(doc)  # routes/completion.py eval: json.dumps(chunk)


def check_json(real: str, double: str, vary: list[str]) -> None:
    rdoc, ddoc = json.loads(real), json.loads(double)
    assert layout(rdoc, "starlette") == real, "the recording is not starlette's compact JSON"
    assert layout(ddoc, "starlette") == double, f"not starlette's compact JSON: {double[:200]}"
    # json.dumps keeps key order: field order is compared too
    assert json.dumps(skeleton(ddoc, vary)) == json.dumps(skeleton(rdoc, vary))
    for doc in (rdoc, ddoc):
        usage = doc.get("usage") if isinstance(doc, dict) else None
        if usage and "completion_tokens" in usage:
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def events(body: str) -> list[str]:
    assert body.endswith("\r\n\r\n"), repr(body[-20:])
    return body[:-4].split("\r\n\r\n")


def kind(doc: dict[str, Any]) -> str:
    choice = doc["choices"][0]
    if choice["finish_reason"] is not None:
        return "final:" + choice["finish_reason"]
    text = choice["delta"]["content"] if "delta" in choice else choice["text"]
    return "content" if text else "empty"


def check_stream(real: str, double: str, vary: list[str], count_exact: bool) -> None:
    kinds: dict[str, list[str]] = {}
    for who, body in (("real", real), ("double", double)):
        seq = []
        for ev in events(body):
            if ev.startswith(":"):
                assert PING.fullmatch(ev), ev
                continue
            assert ev.startswith("data: ") and "\r" not in ev and "\n" not in ev, repr(ev)
            data = ev[len("data: "):]
            if data == "[DONE]":
                seq.append("[DONE]")
                continue
            doc = json.loads(data)
            assert layout(doc, "json.dumps") == data, f"{who}: not json.dumps' default layout: {data}"
            seq.append(kind(doc))
            kinds.setdefault(f"{who}:{seq[-1]}", []).append(json.dumps(skeleton(doc, vary)))
        if not count_exact:  # the two answers' tokens differ in number: a run of content chunks is one item
            seq = [k for i, k in enumerate(seq) if not (k == "content" and i and seq[i - 1] == "content")]
        kinds[who] = seq
    assert kinds["double"] == kinds["real"]
    for k in set(kinds["real"]) - {"[DONE]"}:
        assert set(kinds[f"double:{k}"]) == set(kinds[f"real:{k}"]), k


@pytest.mark.parametrize("rec", RECORDINGS, ids=[r["name"] for r in RECORDINGS])
def test_double_answers_like_the_real_app(rec: dict[str, Any], replies: dict[str, dict[str, Any]]) -> None:
    real, got = rec["response"], replies[rec["name"]]
    assert "error" not in real, "a recording without an answer"
    assert got["status"] == real["status"], got["body"][:300]
    rh, dh = dict(real["headers"]), dict(got["headers"])
    for name in HEADERS:
        assert dh.get(name) == rh.get(name), name
    assert ("content-length" in dh) == ("content-length" in rh)
    ctype = rh.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        check_stream(real["body"], got["body"], rec["vary"], rec.get("count_exact", False))
    elif not rec["vary"]:
        assert got["body"] == real["body"]
    else:
        check_json(real["body"], got["body"], rec["vary"])


def test_recordings_cover_what_the_double_claims() -> None:
    """The recordings are the real app's, complete, and each varying field is named by a recording."""
    meta = json.loads((DIR / "_meta.json").read_text())
    assert meta["order"] == [r["name"] for r in RECORDINGS]
    assert meta["packages"]["sse-starlette"] == "1.6.5" and meta["packages"]["fastapi"] == "0.109.1"
    statuses = {r["response"]["status"] for r in RECORDINGS}
    assert {200, 304, 400, 403, 404, 405, 422, 500} <= statuses
    assert any(r.get("during_load") for r in RECORDINGS) and any(r.get("background") for r in RECORDINGS)
    stop = json.loads(by_name("chat_stop")["response"]["body"])["choices"][0]
    assert stop["finish_reason"] == "stop" and stop["message"]["content"]
    assert '"content": ""' in by_name("chat_stop_stream")["response"]["body"]


def test_gateway_hands_out_a_v5_embedding_as_a_flat_vector(spawn: Spawner) -> None:
    """The recorded real answer nests a v5+ model's vector (heads x head_size x head_size); OpenAI clients
    need list[float]: the gateway flattens it row-major, as the app's own base64 form does."""
    shape = embedding_shape(json.loads(by_name("embeddings")["response"]["body"])["data"][0]["embedding"])
    assert len(shape) == 3
    d = spawn.start_double("rwkv_server", "/status", "--preload", "models/tiny-rwkv-world.pth",
                           "--embedding-shape", ",".join(map(str, shape)))
    gw = spawn.gateway({"backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": d.url}]})
    body = {"model": "tiny-rwkv-world", "input": ["hi", "there"]}
    direct = httpx.post(d.url + "/v1/embeddings", json=body, timeout=30).json()
    r = httpx.post(gw.v1 + "/embeddings", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    assert len(got) == 2
    for item, raw in zip(got, direct["data"]):
        flat = [x for plane in raw["embedding"] for row in plane for x in row]
        assert item["embedding"] == flat and len(flat) == shape[0] * shape[1] * shape[2]
    with openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as client:
        out = client.embeddings.create(model="tiny-rwkv-world", input="hi", encoding_format="float")
    assert len(out.data[0].embedding) == len(flat) and all(isinstance(x, float) for x in out.data[0].embedding)
