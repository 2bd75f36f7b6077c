"""Record the real RWKV-Runner backend-python's answers, for tests/test_rwkv_recordings.py.

Run: python -m tests.backends.rwkv_record --backend-python DIR --python PY [--revision REV] [--out DIR]

DIR is a backend-python checkout (RWKV-Runner's folder of that name); PY is an interpreter that can run it
(torch, fastapi, sse-starlette, pydantic, uvicorn, ... as its requirements.txt pins them). This script builds
and installs nothing: with PY it writes a tiny random-weight RWKV v5.2 World model (the real world vocabulary
size, 4 layers, 64 wide; EOS can never be the top token, so top_k=1 answers run to max_tokens), starts
`PY DIR/main.py` on a free loopback port, loads the model through /switch-model and records each request
with the raw answer: status, headers (all but date) and the body bytes (text, or base64 when not UTF-8).

A recording says which JSON fields vary with the model ("vary": generated text, token counts, pid, vectors);
the test compares everything else exactly. Runs in order: the double replays them in the same order.
Not recorded: sse-starlette's 15 s ping comments (a generation that long wedged the real app here: a stream
client that left kept the generation lock) and /exit (the process kills itself).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "rwkv_recordings"
MODEL_FILE = "tiny-rwkv-world.pth"
USER = [{"role": "user", "content": "hi"}]
GEN_VARY = ["choices.*.message.content", "choices.*.text", "usage.prompt_tokens", "usage.total_tokens"]
STREAM_VARY = ["choices.*.delta.content", "choices.*.text"]
DEPS = ["fastapi", "starlette", "pydantic", "pydantic_core", "sse-starlette", "uvicorn", "torch", "numpy"]

MAKE_MODEL = r"""
import sys, torch
V, C, H, L = 65536, 64, 2, 4          # world vocab; 4 layers so get_embedding's model_state[-11] exists
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g) * 0.1
w = {"emb.weight": r(V, C), "blocks.0.ln0.weight": torch.ones(C), "blocks.0.ln0.bias": torch.zeros(C)}
for i in range(L):
    b = f"blocks.{i}."
    for n in ("ln1", "ln2"):
        w[b + n + ".weight"], w[b + n + ".bias"] = torch.ones(C), torch.zeros(C)
    for m in ("k", "v", "r", "g"):
        w[b + "att.time_mix_" + m] = torch.rand(1, 1, C, generator=g)
    w[b + "att.time_decay"], w[b + "att.time_faaaa"] = r(H, C // H), r(H, C // H)   # (H, N): v5.2
    for m in ("receptance", "key", "value", "gate", "output"):
        w[b + "att." + m + ".weight"] = r(C, C)
    w[b + "att.ln_x.weight"], w[b + "att.ln_x.bias"] = torch.ones(C), torch.zeros(C)
    w[b + "ffn.time_mix_k"] = torch.rand(1, 1, C, generator=g)
    w[b + "ffn.time_mix_r"] = torch.rand(1, 1, C, generator=g)
    w[b + "ffn.key.weight"] = r(4 * C, C)
    w[b + "ffn.receptance.weight"] = r(C, C)
    w[b + "ffn.value.weight"] = r(C, 4 * C)
w["ln_out.weight"], w["ln_out.bias"] = torch.ones(C), torch.zeros(C)
head = r(V, C)
head[0] = 0   # EOS logit = 0 after a zero-mean layer norm: never the largest of 65536
w["head.weight"] = head
torch.save(w, sys.argv[1])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    def __init__(self, url: str) -> None:
        self.url = url
        self.recordings: list[dict[str, Any]] = []

    def call(self, name: str, method: str, path: str, body: Any = None, raw: str | None = None,
             vary: list[str] | None = None, note: str = "", **extra: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"method": method, "path": path}
        content: bytes | None = None
        headers = {}
        if raw is not None:
            req["raw"] = raw
            content, headers = raw.encode(), {"Content-Type": "application/json"}
        elif body is not None:
            req["json"] = body
            content, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        rec: dict[str, Any] = {"name": name, "note": note, "request": req, "vary": vary or [], **extra}
        try:
            with httpx.stream(method, self.url + path, content=content, headers=headers, timeout=120) as r:
                data = b"".join(r.iter_raw())
                rec["response"] = {"status": r.status_code,
                                   "headers": [[k, v] for k, v in r.headers.multi_items() if k != "date"],
                                   **encode_body(data)}
        except httpx.TransportError as e:  # /exit: the process dies before it answers
            rec["response"] = {"error": type(e).__name__}
        print(f"{name}: {rec['response'].get('status', rec['response'].get('error'))}", flush=True)
        self.recordings.append(rec)
        return rec


def encode_body(data: bytes) -> dict[str, str]:
    try:
        return {"body": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_b64": base64.b64encode(data).decode()}


def body_json(rec: dict[str, Any]) -> Any:
    return json.loads(rec["response"]["body"])


def record_all(rec: Recorder) -> None:
    # -- no model loaded
    rec.call("root", "GET", "/")
    rec.call("status_offline", "GET", "/status", vary=["pid"])
    rec.call("models_offline", "GET", "/v1/models")
    rec.call("model_card_rwkv_offline", "GET", "/v1/models/rwkv")
    rec.call("credit_grants", "GET", "/dashboard/billing/credit_grants")
    rec.call("not_found", "GET", "/nope")
    rec.call("method_not_allowed", "GET", "/v1/chat/completions")
    rec.call("chat_not_loaded", "POST", "/v1/chat/completions", {"messages": USER})
    rec.call("completions_not_loaded", "POST", "/v1/completions", {"prompt": "hi"})
    rec.call("embeddings_not_loaded", "POST", "/v1/embeddings", {"input": "hi"})
    rec.call("chat_422_content_parts", "POST", "/v1/chat/completions",
             {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    rec.call("chat_422_max_tokens_zero", "POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 0})
    rec.call("chat_422_temperature_null", "POST", "/v1/chat/completions", {"messages": USER, "temperature": None})
    rec.call("chat_422_top_p_range", "POST", "/v1/chat/completions", {"messages": USER, "top_p": 1.5})
    rec.call("chat_422_missing_messages", "POST", "/v1/chat/completions", {"model": "x"})
    rec.call("chat_422_invalid_json", "POST", "/v1/chat/completions", raw='{"messages": [')
    rec.call("chat_422_empty_body", "POST", "/v1/chat/completions", raw="")
    rec.call("chat_422_stream_null", "POST", "/v1/chat/completions", {"messages": USER, "stream": None})
    rec.call("completions_422_prompt_number", "POST", "/v1/completions", {"prompt": 5})
    rec.call("switch_422_missing_strategy", "POST", "/switch-model", {"model": MODEL_FILE})
    rec.call("switch_missing_file", "POST", "/switch-model", {"model": "models/missing.pth", "strategy": "cpu fp32"})
    rec.call("status_after_failed_load", "GET", "/status", vary=["pid"])
    rec.call("update_config", "POST", "/update-config", {"max_tokens": 100})
    # -- loading: /status and a second /switch-model while the first one runs (its handler is a sync def
    # in a worker thread, so other requests are served meanwhile)
    record_load(rec)
    # -- loaded
    rec.call("status_ready", "GET", "/status", vary=["pid"])
    rec.call("models_loaded", "GET", "/v1/models")
    rec.call("model_card_fake", "GET", "/v1/models/gpt-3.5-turbo")
    rec.call("model_card_rwkv", "GET", "/models/some-RWKV-name")
    rec.call("model_card_unknown", "GET", "/v1/models/nope")
    rec.call("messages_empty", "POST", "/v1/chat/completions", {"messages": []})
    gen = {"max_tokens": 8, "top_k": 1}
    chat = rec.call("chat", "POST", "/v1/chat/completions", {"messages": USER, **gen}, vary=GEN_VARY,
                    note="max_tokens used up: finish_reason is still 'stop'")
    rec.call("chat_stream", "POST", "/v1/chat/completions", {"messages": USER, "stream": True, **gen},
             vary=STREAM_VARY, count_exact=True)
    rec.call("chat_model_field_ignored", "POST", "/chat/completions",
             {"messages": USER, "model": "gpt-4", "max_tokens": 2, "top_k": 1}, vary=GEN_VARY)
    rec.call("completions", "POST", "/v1/completions", {"prompt": "Hello", **gen}, vary=GEN_VARY)
    rec.call("completions_stream", "POST", "/v1/completions", {"prompt": "Hello", "stream": True, **gen},
             vary=STREAM_VARY, count_exact=True)
    # one-token prompts in both tokenizers: the usage is compared exactly
    rec.call("completions_prompt_null", "POST", "/v1/completions", {"prompt": None, "max_tokens": 2, "top_k": 1},
             vary=["choices.*.text"], note="a null / empty prompt becomes '\\n'")
    rec.call("completions_prompt_list", "POST", "/completions",
             {"prompt": ["Hello", "ignored"], "max_tokens": 2, "top_k": 1}, vary=["choices.*.text"],
             note="only the first prompt of a list is answered")
    # a stop string taken from the model's own (deterministic, top_k=1) answer: it is hit mid-answer
    text = body_json(chat)["choices"][0]["message"]["content"]
    cut = len(text) // 2
    stop = text[cut:cut + 2]
    prefix = text[:text.index(stop)]
    hint = {"x_double": {"text": prefix + stop + " and the rest"}}
    rec.call("chat_stop", "POST", "/v1/chat/completions", {"messages": USER, "stop": stop, **gen},
             vary=["usage.prompt_tokens", "usage.completion_tokens", "usage.total_tokens"], double=hint,
             note="content is cut before the stop; the double answers prefix + stop + more")
    rec.call("chat_stop_stream", "POST", "/v1/chat/completions",
             {"messages": USER, "stop": [stop], "stream": True, **gen}, vary=STREAM_VARY, double=hint,
             note="the token that completes the stop is sent as an EMPTY delta")
    rec.call("chat_stop_empty_string", "POST", "/v1/chat/completions", {"messages": USER, "stop": [""], **gen},
             vary=GEN_VARY, note="response.split('') raises; eval prints it and answers 200 with what it had")
    rec.call("chat_stop_empty_string_stream", "POST", "/v1/chat/completions",
             {"messages": USER, "stop": [""], "stream": True, **gen}, vary=STREAM_VARY)
    rec.call("completions_swallowed_error", "POST", "/v1/completions", {"prompt": [""], **gen},
             note="prompt '' -> no prefill -> `logits` unbound: the error is printed, the answer is empty")
    rec.call("completions_swallowed_error_stream", "POST", "/v1/completions",
             {"prompt": [""], "stream": True, **gen})
    emb_vary = ["data.*.embedding", "usage.prompt_tokens", "usage.total_tokens"]
    rec.call("embeddings", "POST", "/v1/embeddings", {"input": "hi"}, vary=emb_vary)
    rec.call("embeddings_list", "POST", "/embeddings", {"input": ["a", "b c"]}, vary=emb_vary)
    rec.call("embeddings_base64", "POST", "/v1/embeddings", {"input": "hi", "encoding_format": "base64"},
             vary=emb_vary)
    rec.call("embeddings_empty_input", "POST", "/v1/embeddings", {"input": ""})
    # -- unload, then load again in deploy mode: the dangerous routes are locked
    rec.call("switch_unload", "POST", "/switch-model", {"model": "", "strategy": "cpu fp32"})
    rec.call("status_unloaded", "GET", "/status", vary=["pid"])
    rec.call("switch_deploy", "POST", "/switch-model", {"model": MODEL_FILE, "strategy": "cpu fp32", "deploy": True})
    rec.call("switch_forbidden", "POST", "/switch-model", {"model": MODEL_FILE, "strategy": "cpu fp32"})
    rec.call("exit_forbidden", "POST", "/exit")


def record_load(rec: Recorder) -> None:
    """The load runs in a thread; /status is polled until it says 2 (loading), then a second load is sent."""
    done: dict[str, Any] = {}
    body = {"model": MODEL_FILE, "strategy": "cpu fp32"}
    first = Recorder(rec.url)
    t = threading.Thread(target=lambda: done.update(r=first.call("switch_model", "POST", "/switch-model", body,
                                                                 background=True)))
    t.start()
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline:
        if httpx.get(rec.url + "/status", timeout=10).json()["status"] == 2:
            break
    loading = [rec.call("status_loading", "GET", "/status", vary=["pid"], during_load=True),
               rec.call("switch_while_loading", "POST", "/switch-model", body, during_load=True)]
    t.join()
    rec.recordings[-2:] = []
    if loading[1]["response"].get("status") != 304 or json.loads(loading[0]["response"]["body"])["status"] != 2:
        sys.exit("the load ended before /status and the second /switch-model were answered; a bigger model "
                 "or a slower machine is needed to see them")
    rec.recordings += [done["r"], *loading]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend-python", required=True, type=Path)
    ap.add_argument("--python", required=True)
    ap.add_argument("--revision", default="", help="RWKV-Runner revision of the checkout, written to the recordings")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    main_py = (a.backend_python / "main.py").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([a.python, "-c", MAKE_MODEL, str(Path(tmp) / MODEL_FILE)], check=True)
        versions = json.loads(subprocess.run(
            [a.python, "-c", "import json, importlib.metadata as m; import sys; "
             "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))", *DEPS],
            check=True, capture_output=True, text=True).stdout)
        port = free_port()
        log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen([a.python, str(main_py), "--host", "127.0.0.1", "--port", str(port)], cwd=tmp,
                                  stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(url + "/", timeout=2)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit((Path(tmp) / "server.log").read_text())
                    time.sleep(0.2)
            rec = Recorder(url)
            record_all(rec)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.glob("*.json"):
        old.unlink()
    meta = {"rwkv_runner_revision": a.revision, "python": subprocess.run(
        [a.python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True).stdout.strip(),
        "packages": versions, "model": "random-weight RWKV v5.2 World, 4 layers x 64, written by this script",
        "order": [r["name"] for r in rec.recordings]}
    (a.out / "_meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    for i, r in enumerate(rec.recordings):
        (a.out / f"{i:02d}_{r['name']}.json").write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
