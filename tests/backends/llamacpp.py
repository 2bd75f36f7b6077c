"""A real llama.cpp `llama-server` for the tests: the binary (built from source once per machine), a tiny
GGUF model written by the test itself, and the server's command line.

`ensure_llama_server()` returns the path of a `llama-server` binary: the build the quickstart also uses
(gateway/quickstart/llama_build.py: llama.cpp from the llama-cpp-python sdist, for 0.3.36 =
ggml-org/llama.cpp@0c1e57098, the snapshot /work/shared/backends.md part A documents as "LC"), built once per
machine into ~/.cache/llm-gateway/llama-server-<VERSION>/; here missing build tools are apt-get installed
first (CI). `LLAMA_SERVER_BIN=/path` skips all that and uses the given binary.

`write_tiny_gguf()` writes a random-weight llama-architecture GGUF with a small SentencePiece-style
vocabulary and a ChatML chat template (a few hundred KB, written in well under a second); with
`size="loading"` it writes the bigger model whose load keeps the server in its 503 "Loading model" state
for a couple of seconds (see its docstring).

`server_args()` is the argv for `tests.procs.Proc`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from gateway.quickstart import llama_build
from gateway.quickstart.llama_build import LLAMA_CPP_PYTHON_VERSION, LlamaServerUnavailable, _run

GGUF_VERSION = "0.19.0"               # the `gguf` package write_tiny_gguf() was written against


def ensure_llama_server(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """The package's build (gateway/quickstart/llama_build.py), with CI's missing tools apt-get installed;
    `LLAMA_SERVER_BIN=/path` uses that binary instead."""
    override = os.environ.get("LLAMA_SERVER_BIN")
    if override:
        return Path(override)
    return llama_build.ensure_llama_server(version, toolchain=_ensure_toolchain)


def _ensure_toolchain(log: Path) -> None:
    missing = llama_build.missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LlamaServerUnavailable(f"missing build tools {missing} and cannot apt-get install them")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], log, env=env)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "cmake", "g++", "make"], log, env=env)


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = [
    "the", "of", "and", "to", "a", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
    "as", "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "word", "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use",
    "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out",
    "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into",
    "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could",
    "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find",
    "long", "down", "day", "did", "get", "come", "made", "may", "part", "hello", "how", "are", "you",
    "today", "fine", "thanks", "good", "great", "model", "token", "server", "stream", "chat", "answer",
    "question", "test", "gateway", "llama", "tiny", "random", "weight", "GPU", "haiku", "write",
    "about", "ok", "yes",
]

# SentencePiece token types (llama_token_type in llama.cpp / gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Presets; "loading" is the one that keeps llama-server in 503 "Loading model" for >= 2 s (see below).
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "loading": {"n_layer": 2, "n_embd": 16, "vocab": 1_000_000},
}


def _writer_class(min_fast: int = 4096) -> Any:
    """gguf.GGUFWriter, with metadata arrays packed by numpy instead of one struct.pack per element.

    GGUFWriter._pack_val packs a 1.5 M-token vocabulary in ~45 s; this does it in ~1 s. Same bytes
    (little-endian GGUF v3); the smoke test compares it with the stock writer.
    """
    import struct

    import numpy as np
    from gguf import GGUFValueType, GGUFWriter

    class FastArrayWriter(GGUFWriter):
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype != GGUFValueType.ARRAY or not isinstance(val, list) or not val or len(val) < min_fast:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            head = struct.pack("<I", vtype) if add_vtype else b""
            if all(isinstance(v, str) for v in val):
                body = b"".join(struct.pack("<Q", len(e)) + e for e in (v.encode("utf-8") for v in val))
                return head + struct.pack("<IQ", GGUFValueType.STRING, len(val)) + body
            if all(type(v) is float for v in val):
                arr = np.asarray(val, "<f4").tobytes()
                return head + struct.pack("<IQ", GGUFValueType.FLOAT32, len(val)) + arr
            if all(type(v) is int for v in val):
                arr = np.asarray(val, "<i4").tobytes()
                return head + struct.pack("<IQ", GGUFValueType.INT32, len(val)) + arr
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return FastArrayWriter


def build_vocab(vocab: Literal["small"] | int = "small") -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style ("llama" tokenizer model) vocabulary: tokens, scores, token types.

    ids 0..2 `<unk>` `<s>` `</s>`, 3..4 `<|im_start|>` `<|im_end|>` (control), then the 256 byte tokens
    `<0x00>`..`<0xFF>`, then word pieces: "▁" (U+2581, SentencePiece's space), every printable ASCII
    character, common words with and without the leading "▁", and (for an int `vocab`) filler pieces
    up to that many tokens in total. Scores follow SentencePiece: higher = merged earlier.
    """
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL, _CONTROL, _CONTROL]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [_BYTE] * 256
    pieces: list[str] = ["\u2581"] + [chr(c) for c in range(33, 127)]
    seen = set(pieces)
    for w in _WORDS:
        for p in ("\u2581" + w, w):
            if p not in seen:
                seen.add(p)
                pieces.append(p)
    # a few two-letter pieces so arbitrary English tokenises into something shorter than characters
    for a in "etaoinshrdlu":
        for b in "etaoinshrdlu":
            if a + b not in seen:
                seen.add(a + b)
                pieces.append(a + b)
    if isinstance(vocab, int):
        i = 0
        while len(tokens) + len(pieces) < vocab:
            pieces.append(f"\u2581x{i:x}")
            i += 1
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    # Special tokens and bytes score 0; pieces get decreasing negative scores, longer pieces higher.
    scores = [0.0] * (5 + 256) + [-float(i) / len(pieces) - (0.0 if len(p) > 1 else 1.0)
                                  for i, p in enumerate(pieces)]
    return tokens, scores, types


def write_tiny_gguf(path: str | os.PathLike[str], *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                    n_head_kv: int = 2, n_ff: int | None = None, n_ctx_train: int = 512,
                    vocab: Literal["small"] | int = "small", seed: int = 0, name: str = "tiny-llama",
                    size: Literal["tiny", "loading"] | None = None, extra_tokens: tuple[str, ...] = (),
                    add_space_prefix: bool = True) -> Path:
    """Writes a random-weight llama-architecture GGUF (all tensors F32) and returns its path.

    Default (`vocab="small"`, 2 layers, n_embd 64): 731 tokens (5 specials incl. ChatML's
    `<|im_start|>`/`<|im_end|>` as control tokens, 256 byte tokens, 470 word pieces), ~690 KB, written
    in ~0.1 s (plus ~0.25 s to import numpy and gguf). Weights are seeded numpy normals, so the model
    generates gibberish, deterministically at temperature 0. `<|im_end|>` is recognised by llama.cpp as
    end-of-generation (by its text), `</s>` is EOS, `<s>` is BOS and is added to prompts.

    `extra_tokens` are appended as user-defined tokens; `add_space_prefix=False` stops llama.cpp's
    SentencePiece tokenizer from putting "▁" before text that follows a special token (it turns the
    generation prompt "<|im_start|>assistant\n" into " as"..., which a tool-call or JSON-schema grammar
    prefilled with that prompt rejects: "Failed to initialize samplers").

    `size="loading"` (= `vocab=1_000_000, n_embd=16`): keeps llama-server in its loading state, every
    route answering 503 `{"error":{"message":"Loading model","type":"unavailable_error","code":503}}`,
    for ~4 s on this 2-core machine with the flags of server_args() (measured 3.8-4.3 s idle, up to
    6.5 s with other load; 600 K tokens gave 2.0-3.1 s, 800 K 3.0-3.1 s: too close to 2 s). File
    ~153 MB, written in ~1.4 s.
    Where the time goes: llama.cpp's vocabulary load (~2 µs per token: parse the GGUF string array,
    build the token maps, the EOG scan, the token-to-piece cache), done twice, because the default
    `--fit on` first loads the model without weights to measure memory. So do NOT pass `-fit off`
    (it halves the window: 1.8 s). The weights hardly matter: they are read at page-cache speed (the
    file was just written), so n_embd/n_layer only add file size; a 1.5 M x 64 vocabulary (806 MB)
    loads no slower than 1.5 M x 16 (230 MB). `--no-mmap` no longer exists in this llama.cpp (it is
    `-lm/--load-mode none|mmap|dio`, and neither setting changes the window measurably).
    """
    import gguf
    import numpy as np

    if size is not None:
        preset = _PRESETS[size]
        n_layer = preset.get("n_layer", n_layer)
        n_embd = preset.get("n_embd", n_embd)
        vocab = preset.get("vocab", vocab)
    n_ff = n_ff or 2 * n_embd
    head_dim = n_embd // n_head
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = build_vocab(vocab)
    # user-defined tokens (matched in text, rendered as text), e.g. Hermes/Qwen2.5's `<tool_call>`
    tokens, scores, types = tokens + list(extra_tokens), scores + [0.0] * len(extra_tokens), \
        types + [_USER_DEFINED] * len(extra_tokens)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    w = _writer_class()(str(path), "llama")
    w.add_name(name)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if not add_space_prefix:  # SentencePiece's "▁" before text, also after a special token: off
        w.add_add_space_prefix(False)
    w.add_chat_template(CHATML_TEMPLATE)

    def rand(rows: int, cols: int = 0, scale: float = 0.02) -> Any:
        shape = (rows, cols) if cols else (rows,)
        if rows * max(cols, 1) <= 1 << 20:
            return rng.standard_normal(shape, dtype=np.float32) * scale
        # big tensors (the "loading" model): 64 K random rows repeated; the content does not matter there
        block = rng.standard_normal((1 << 16, cols), dtype=np.float32) * scale
        return np.resize(block, shape)

    # numpy shape (rows, cols) = ggml ne (cols, rows): a Linear(in, out) weight is (out, in)
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd, scale=1.0))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd, scale=0.5))
    kv = n_head_kv * head_dim
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def server_args(binary: str | os.PathLike[str], model: str | os.PathLike[str], port: int, *,
                alias: str | None = None, ctx: int = 256, parallel: int = 2, threads: int = 2,
                extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """argv for llama-server on 127.0.0.1:port with /metrics on, no web UI, no warm-up run, no GPU."""
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx),
            "-np", str(parallel), "-t", str(threads), "--metrics", "--no-webui"]
    if alias:
        argv += ["--alias", alias]
    return argv + list(extra)


def wait_ready(proc: Any, url: str, timeout: float = 60.0) -> None:
    """Until /health says 200: llama-server listens first and answers 503 "Loading model" meanwhile."""
    import httpx

    proc.wait_http(url + "/health", timeout)
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/health").status_code != 200:
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"llama-server not ready:\n{proc.output()}")
        time.sleep(0.05)
