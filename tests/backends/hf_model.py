"""A tiny random-weight Hugging Face llama model, written locally for the real-backend tests.

`write_tiny_llama(dir)` writes a complete model directory that `transformers` (4.x and 5.x) and vLLM
load offline: config.json, model.safetensors, generation_config.json, and a byte-level BPE tokenizer
(tokenizer.json, tokenizer_config.json with a ChatML `chat_template`, special_tokens_map.json).

Nothing is downloaded and nothing beyond the standard library is needed: the safetensors file and
tokenizer.json are plain, documented formats, written here byte by byte (the tokenizer's BPE merges are
trained here on a small in-code corpus, GPT-2 style byte-level). The files were checked to load with
`tokenizers`, transformers 4.57 and 5.19 and vLLM 0.32 (same greedy text in HF and vLLM). That keeps
the gateway's own test environment free of torch/transformers; the backends load the files in their
own virtualenvs. The result is deterministic for a given set of arguments (seeded weights).

Behaviour built into the weights, so that tests against a real server are predictable:
* Only printable-ASCII tokens can win: the output-projection rows of the special tokens (eos
  included) and of every token that is not printable ASCII are zero, while the others give logits
  with a standard deviation of about 5. So the model never stops by itself (finish_reason "length"
  unless a stop string or `max_tokens` ends it) and every completion is clean ASCII text.
  Pass `emit_eos=True` to leave the eos row random as well (then it may stop early).
* Greedy decoding (temperature 0) gives the same text for the same prompt on every run.
"""

from __future__ import annotations

import json
import math
import random
import re
import struct
import sys
from array import array
from collections import Counter
from pathlib import Path

BOS = "<s>"
EOS = "<|im_end|>"          # end of a chat turn: what a chat server should stop on
PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
SPECIALS = [PAD, BOS, IM_START, EOS]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The gateway finds a ready backend that serves the model, forwards the request in that backend's
dialect, streams the answer back token by token, and exports Prometheus metrics. Every client talks
to one URL with one API key and names a model. Hello! How are you today? I am fine, thank you.
Write a haiku about GPUs: silicon rivers, warm fans hum in the server room, tokens fall like rain.
Once upon a time there was a small model that could only say a few words, but it said them quickly.
The quick brown fox jumps over the lazy dog. A stream of tokens flows from the server to the client.
What is the capital of France? Paris is the capital of France. Count to ten: 1 2 3 4 5 6 7 8 9 10.
def hello(name): return "Hello, " + name + "!"  # a line of Python for good measure
Requests wait in a queue when the batch is full; the scheduler picks the next one when a slot frees.
"""

# GPT-2's byte-level pre-tokenization regex, restricted to what `re` knows (\p{L} -> letters, ...).
_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2's byte-level BPE (used by `tokenizers`)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _train_merges(corpus: str, n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE training (most frequent adjacent pair first, ties broken by the pair itself)."""
    b2u = _bytes_to_unicode()
    words = Counter("".join(b2u[b] for b in w.encode()) for w in _PRETOKENIZE.findall(corpus))
    seqs = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, seq in seqs.items():
            i, out = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return merges


def _tokenizer(vocab_size: int) -> tuple[dict, list[str], dict[str, int]]:
    """Returns (tokenizer.json content, id -> token string, special token -> id)."""
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    n_merges = vocab_size - 256 - len(SPECIALS)
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIALS)}")
    merges = _train_merges(_CORPUS, n_merges)
    tokens += [a + b for a, b in merges]
    specials = SPECIALS + [f"<|reserved_{i}|>" for i in range(n_merges - len(merges))]
    special_ids = {}
    for s in specials:
        special_ids[s] = len(tokens)
        tokens.append(s)
    assert len(tokens) == vocab_size and len(set(tokens)) == vocab_size
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for s, i in special_ids.items()
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens[:256 + len(merges)])},
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }
    return tok, tokens, special_ids


def _printable_ascii(token: str, u2b: dict[str, int]) -> bool:
    return all(c in u2b and 0x20 <= u2b[c] <= 0x7E for c in token)


def _safetensors(tensors: dict[str, tuple[list[int], array]]) -> bytes:
    """The safetensors format: u64 header length, JSON header, then the raw little-endian data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, (shape, data) in tensors.items():
        if sys.byteorder != "little":
            data = array("f", data)
            data.byteswap()
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def write_tiny_llama(dir: Path, *, vocab_size: int = 512, hidden: int = 64, layers: int = 2, heads: int = 4,
                     max_pos: int = 512, kv_heads: int | None = None, head_dim: int | None = None,
                     intermediate: int | None = None, seed: int = 0, emit_eos: bool = False) -> Path:
    """Writes a tiny random llama model with its tokenizer into `dir` (created) and returns `dir`.

    `head_dim` defaults to max(hidden // heads, 32): vLLM's CPU attention kernels accept only some head
    sizes (32 and up), so the attention projections are wider than `hidden` when `heads` is large.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    kv_heads = kv_heads or heads
    head_dim = head_dim or max(hidden // heads, 32)
    intermediate = intermediate or 2 * hidden
    if heads % kv_heads:
        raise ValueError("heads must be a multiple of kv_heads")

    tok, tokens, special_ids = _tokenizer(vocab_size)
    u2b = {u: b for b, u in _bytes_to_unicode().items()}

    rng = random.Random(seed)

    def mat(rows: int, cols: int, std: float) -> tuple[list[int], array]:
        return [rows, cols], array("f", [rng.gauss(0.0, std) for _ in range(rows * cols)])

    def ones(n: int) -> tuple[list[int], array]:
        return [n], array("f", [1.0] * n)

    t: dict[str, tuple[list[int], array]] = {"model.embed_tokens.weight": mat(vocab_size, hidden, 1.0)}
    proj_std = 1.0 / math.sqrt(hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ones(hidden)
        t[p + "self_attn.q_proj.weight"] = mat(heads * head_dim, hidden, proj_std)
        t[p + "self_attn.k_proj.weight"] = mat(kv_heads * head_dim, hidden, proj_std)
        t[p + "self_attn.v_proj.weight"] = mat(kv_heads * head_dim, hidden, proj_std)
        t[p + "self_attn.o_proj.weight"] = mat(hidden, heads * head_dim, 1.0 / math.sqrt(heads * head_dim))
        t[p + "post_attention_layernorm.weight"] = ones(hidden)
        t[p + "mlp.gate_proj.weight"] = mat(intermediate, hidden, proj_std)
        t[p + "mlp.up_proj.weight"] = mat(intermediate, hidden, proj_std)
        t[p + "mlp.down_proj.weight"] = mat(hidden, intermediate, 1.0 / math.sqrt(intermediate))
    t["model.norm.weight"] = ones(hidden)
    # Logits = lm_head @ rmsnorm(h): rows of std 5/sqrt(hidden) give logits of std ~5, so the best
    # printable token always beats the zero rows (specials, control and non-ASCII bytes) by far.
    shape, lm_head = mat(vocab_size, hidden, 5.0 / math.sqrt(hidden))
    for tid, token in enumerate(tokens):
        allowed = (emit_eos and token == EOS) or (token not in special_ids and _printable_ascii(token, u2b))
        if not allowed:
            lm_head[tid * hidden:(tid + 1) * hidden] = array("f", [0.0] * hidden)
    t["lm_head.weight"] = (shape, lm_head)
    (dir / "model.safetensors").write_bytes(_safetensors(t))

    bos_id, eos_id, pad_id = special_ids[BOS], special_ids[EOS], special_ids[PAD]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_pos,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "transformers_version": "4.46.0",
    }
    _write_json(dir / "config.json", config)
    _write_json(dir / "generation_config.json", {
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
        "transformers_version": "4.46.0",
    })

    _write_json(dir / "tokenizer.json", tok)
    _write_json(dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_pos,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for s, i in special_ids.items()
        },
        "additional_special_tokens": [IM_START],
        "chat_template": CHAT_TEMPLATE,
    })
    _write_json(dir / "special_tokens_map.json", {
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": [IM_START],
    })
    return dir


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":  # python -m tests.backends.hf_model DIR
    print(write_tiny_llama(Path(sys.argv[1])))
