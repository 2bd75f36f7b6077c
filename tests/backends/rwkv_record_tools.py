"""Record the real RWKV-Runner backend-python's tool-call answers, for tests/test_rwkv_tool_calls.py.

Run: python -m tests.backends.rwkv_record_tools --backend-python DIR --python PY [--revision REV] [--out DIR]

As tests/backends/rwkv_record.py (same DIR and PY), but the model is built to make a tool call: RWKV-Runner
has no constrained decoding, its tool calls are the model's own text, parsed (routes/completion.py
chat_with_tools, postprocess_response, async_generator_stream_response_tool_call). A random-weight model
never writes one, so this one is a bigram model by construction: every block's output projection is zero
(the residual stream is the previous token's embedding), and for each token of CALL_TEXT the head gives
the next one a logit ~40 above the rest. After the prompt's last token (":" of "Assistant:") a greedy
(top_k=1) answer is therefore CALL_TEXT, whatever the prompt: a call of `weather`, then "\\n\\nUser", the
stop RWKV-Runner adds for chats. Every token of CALL_TEXT occurs once, so each has one successor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.backends.rwkv_record import DEPS, MODEL_FILE, Recorder, free_port

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "rwkv_tool_recordings"
FENCE = "`" * 3
CALL_TEXT = f'weather {FENCE}tool_call("city"="Paris")\n{FENCE}\n\nUser'
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
GEN = {"max_tokens": 40, "top_k": 1}
VARY = ["usage.prompt_tokens", "usage.total_tokens", "choices.*.message.tool_calls.*.id"]

MAKE_MODEL = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])                       # backend-python/rwkv_pip: the World tokenizer
from rwkv_tokenizer import TRIE_TOKENIZER
tok = TRIE_TOKENIZER(sys.argv[2] + "/rwkv_vocab_v20230424.txt")
chain = tok.encode(":" + sys.argv[3])
assert chain[0] == tok.encode("Assistant:")[-1] and len(set(chain[:-1])) == len(chain) - 1, chain
V, C, H, L = 65536, 64, 2, 4
assert len(chain) <= C
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
    for m in ("receptance", "key", "value", "gate"):
        w[b + "att." + m + ".weight"] = r(C, C)
    w[b + "att.output.weight"] = torch.zeros(C, C)      # no block writes to the residual stream
    w[b + "att.ln_x.weight"], w[b + "att.ln_x.bias"] = torch.ones(C), torch.zeros(C)
    w[b + "ffn.time_mix_k"] = torch.rand(1, 1, C, generator=g)
    w[b + "ffn.time_mix_r"] = torch.rand(1, 1, C, generator=g)
    w[b + "ffn.key.weight"] = r(4 * C, C)
    w[b + "ffn.receptance.weight"] = r(C, C)
    w[b + "ffn.value.weight"] = torch.zeros(C, 4 * C)
w["ln_out.weight"], w["ln_out.bias"] = torch.ones(C), torch.zeros(C)
head = r(V, C)
head[0] = 0   # EOS never wins
for i, (prev, nxt) in enumerate(zip(chain, chain[1:])):
    w["emb.weight"][prev] = 0
    w["emb.weight"][prev][i] = 10.0                      # after both layer norms ~ 7.9 * e_i
    head[nxt] = 0
    head[nxt][i] = 5.0                                   # logit ~ 40 after prev, ~ -0.6 after the others
w["head.weight"] = head
torch.save(w, sys.argv[1])
"""


TOKENS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from rwkv_tokenizer import TRIE_TOKENIZER
tok = TRIE_TOKENIZER(sys.argv[1] + "/rwkv_vocab_v20230424.txt")
print(json.dumps([tok.decode([t]) for t in tok.encode(sys.argv[2])]))
"""


def record_all(rec: Recorder, tokens: list[str]) -> None:
    """`tokens`: CALL_TEXT as the World tokenizer splits it; the double streams the same chunks."""
    rec.call("switch_model", "POST", "/switch-model", {"model": MODEL_FILE, "strategy": "cpu fp32"})
    double = {"x_double": {"text": CALL_TEXT, "tokens": tokens}}
    call = rec.call("chat_tool_call", "POST", "/v1/chat/completions", {"messages": ASK, "tools": TOOLS, **GEN},
                    vary=VARY, double=double,
                    note="postprocess_response: the text parsed into one call, content null, finish tool_calls")
    rec.call("chat_tool_call_stream", "POST", "/v1/chat/completions",
             {"messages": ASK, "tools": TOOLS, "stream": True, **GEN}, vary=["choices.*.delta.tool_calls.*.id"],
             double=double, note="async_generator_stream_response_tool_call: the function-call side")
    calls = json.loads(call["response"]["body"])["choices"][0]["message"]["tool_calls"]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny, 21 C"}]
    rec.call("chat_tool_result", "POST", "/v1/chat/completions", {"messages": history, "tools": TOOLS, **GEN},
             vary=["usage.prompt_tokens", "usage.total_tokens"], double=double,
             note="a tool result last: plain chat (the tools prompt again), the model's text as content")
    rec.call("chat_tool_result_stream", "POST", "/v1/chat/completions",
             {"messages": history, "tools": TOOLS, "stream": True, **GEN}, double=double)
    rec.call("chat_tool_choice_none", "POST", "/v1/chat/completions",
             {"messages": ASK, "tools": TOOLS, "tool_choice": "none", **GEN},
             vary=["usage.prompt_tokens", "usage.total_tokens"], double=double,
             note="tool_choice none: plain chat, the same text stays text")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend-python", required=True, type=Path)
    ap.add_argument("--python", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    bp = a.backend_python.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([a.python, "-c", MAKE_MODEL, str(Path(tmp) / MODEL_FILE), str(bp / "rwkv_pip"),
                        CALL_TEXT], check=True)
        versions = json.loads(subprocess.run(
            [a.python, "-c", "import json, importlib.metadata as m; import sys; "
             "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))", *DEPS],
            check=True, capture_output=True, text=True).stdout)
        tokens = json.loads(subprocess.run([a.python, "-c", TOKENS, str(bp / "rwkv_pip"), CALL_TEXT],
                                           check=True, capture_output=True, text=True).stdout)
        port = free_port()
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen([a.python, str(bp / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
                                      cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 120
                while True:
                    try:
                        httpx.get(url + "/", timeout=2)
                        break
                    except httpx.TransportError:
                        if server.poll() is not None or time.monotonic() > deadline:
                            sys.exit(log_path.read_text())
                        time.sleep(0.2)
                rec = Recorder(url)
                record_all(rec, tokens)
            finally:
                server.terminate()
                server.wait(30)
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.glob("*.json"):
        old.unlink()
    meta = {"rwkv_runner_revision": a.revision, "packages": versions, "call_text": CALL_TEXT,
            "model": "RWKV v5.2 World, 4 layers x 64, a bigram chain spelling call_text (written by this script)",
            "order": [r["name"] for r in rec.recordings]}
    (a.out / "_meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    for i, r in enumerate(rec.recordings):
        (a.out / f"{i:02d}_{r['name']}.json").write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
