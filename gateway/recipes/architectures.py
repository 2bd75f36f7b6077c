"""Model architectures for the sizing estimator: a built-in table keyed by hub id, a local HF
`config.json`, or a GGUF file's metadata (read with the `gguf` package, which memory-maps the file and
never loads the weights)."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class SizingError(ValueError):
    """Bad input to the estimator: the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class Architecture:
    name: str
    params: float            # all parameters; a MoE counts every expert (all are loaded)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 0
    intermediate: int = 0
    tied_embeddings: bool = False
    max_context: int | None = None
    sliding_window: int | None = None  # tokens a sliding-window layer keeps
    swa_layers: int = 0                # how many layers use the window (the rest keep everything)
    kv_lora_rank: int = 0              # MLA: per token and layer the cache holds kv_lora_rank + rope_dim values
    rope_dim: int = 0
    experts: int = 1
    source: str = ""
    weights_bytes: int | None = None   # exact tensor bytes (a GGUF file), overrides params x bpw
    file_format: str | None = None     # the format the file is stored in (GGUF file type, HF quantization)

    @property
    def embedding_params(self) -> int:
        """Token embeddings + output head: the tensors GPTQ/AWQ/ChatGLM-int4 leave in FP16."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


def _a(name: str, params: float, layers: int, hidden: int, heads: int, kv: int, head_dim: int, vocab: int,
       inter: int, ctx: int, *, src: str, tied: bool = False, **kw: Any) -> Architecture:
    return Architecture(name, params, layers, hidden, heads, kv, head_dim, vocab, inter, tied, ctx, source=src, **kw)


_HF = "https://huggingface.co/{}/blob/main/config.json"
# Each entry: the figures of its config.json (URL in `source`); params = the safetensors parameter count
# the hub page shows (ChatGLM-6B: summed from its config, the card says "6.2B").
_TABLE: list[tuple[tuple[str, ...], Architecture]] = [
    (("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct"),
     _a("Llama-3-8B", 8.03e9, 32, 4096, 32, 8, 128, 128256, 14336, 8192, src=_HF.format("meta-llama/Meta-Llama-3-8B"))),
    (("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct"),
     _a("Llama-3.1-8B", 8.03e9, 32, 4096, 32, 8, 128, 128256, 14336, 131072,
        src=_HF.format("meta-llama/Llama-3.1-8B-Instruct"))),
    (("meta-llama/Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B-Instruct"),
     _a("Llama-3-70B", 70.55e9, 80, 8192, 64, 8, 128, 128256, 28672, 8192,
        src=_HF.format("meta-llama/Meta-Llama-3-70B"))),
    (("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"),
     _a("Llama-3.1-70B", 70.55e9, 80, 8192, 64, 8, 128, 128256, 28672, 131072,
        src=_HF.format("meta-llama/Llama-3.1-70B-Instruct"))),
    (("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf"),
     _a("Llama-2-7B", 6.74e9, 32, 4096, 32, 32, 128, 32000, 11008, 4096, src=_HF.format("meta-llama/Llama-2-7b-hf"))),
    (("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf"),
     _a("Llama-2-13B", 13.02e9, 40, 5120, 40, 40, 128, 32000, 13824, 4096,
        src=_HF.format("meta-llama/Llama-2-13b-hf"))),
    (("meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b-chat-hf"),
     _a("Llama-2-70B", 68.98e9, 80, 8192, 64, 8, 128, 32000, 28672, 4096,
        src=_HF.format("meta-llama/Llama-2-70b-hf"))),
    # Qwen2.5 configs carry sliding_window but use_sliding_window=false: no window
    # the quickstart's models (gateway/quickstart/models.py); tie_word_embeddings true
    (("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"),
     _a("Qwen2.5-0.5B", 0.49e9, 24, 896, 14, 2, 64, 151936, 4864, 32768, tied=True,
        src=_HF.format("Qwen/Qwen2.5-0.5B-Instruct"))),
    (("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B-Instruct"),
     _a("Qwen2.5-1.5B", 1.54e9, 28, 1536, 12, 2, 128, 151936, 8960, 32768, tied=True,
        src=_HF.format("Qwen/Qwen2.5-1.5B-Instruct"))),
    (("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"),
     _a("Qwen2.5-7B", 7.62e9, 28, 3584, 28, 4, 128, 152064, 18944, 32768, src=_HF.format("Qwen/Qwen2.5-7B-Instruct"))),
    (("Qwen/Qwen2.5-14B", "Qwen/Qwen2.5-14B-Instruct"),
     _a("Qwen2.5-14B", 14.77e9, 48, 5120, 40, 8, 128, 152064, 13824, 32768,
        src=_HF.format("Qwen/Qwen2.5-14B-Instruct"))),
    (("Qwen/Qwen2.5-72B", "Qwen/Qwen2.5-72B-Instruct"),
     _a("Qwen2.5-72B", 72.71e9, 80, 8192, 64, 8, 128, 152064, 29568, 32768,
        src=_HF.format("Qwen/Qwen2.5-72B-Instruct"))),
    (("Qwen/Qwen-7B", "Qwen/Qwen-7B-Chat"),  # first-generation Qwen, the guides' 8K model
     _a("Qwen-7B", 7.72e9, 32, 4096, 32, 32, 128, 151936, 11008, 8192, src=_HF.format("Qwen/Qwen-7B-Chat"))),
    # ChatGLM-6B: transformers ties lm_head to word_embeddings (get_output_embeddings/tie_weights with the
    # config's default tie_word_embeddings=true); its own int4 is per-row (~4.0 bpw), a little under our int4
    # (its config.json: num_layers 28, hidden_size 4096, inner_hidden_size 16384, vocab_size 130528,
    # max_sequence_length 2048, no tie_word_embeddings key)
    (("THUDM/chatglm-6b", "zai-org/chatglm-6b"),
     _a("ChatGLM-6B", 6.17e9, 28, 4096, 32, 32, 128, 130528, 16384, 2048, tied=True,
        src=_HF.format("THUDM/chatglm-6b"))),
    (("THUDM/chatglm2-6b", "zai-org/chatglm2-6b"),  # multi_query_group_num 2
     _a("ChatGLM2-6B", 6.24e9, 28, 4096, 32, 2, 128, 65024, 13696, 32768, src=_HF.format("THUDM/chatglm2-6b"))),
    (("THUDM/chatglm3-6b", "zai-org/chatglm3-6b"),
     _a("ChatGLM3-6B", 6.24e9, 28, 4096, 32, 2, 128, 65024, 13696, 8192, src=_HF.format("THUDM/chatglm3-6b"))),
    (("baichuan-inc/Baichuan2-7B-Chat", "baichuan-inc/Baichuan2-7B-Base"),
     _a("Baichuan2-7B", 7.51e9, 32, 4096, 32, 32, 128, 125696, 11008, 4096,
        src=_HF.format("baichuan-inc/Baichuan2-7B-Chat"))),
    (("baichuan-inc/Baichuan2-13B-Chat", "baichuan-inc/Baichuan2-13B-Base"),  # ALiBi, no RoPE
     _a("Baichuan2-13B", 13.9e9, 40, 5120, 40, 40, 128, 125696, 13696, 4096,
        src=_HF.format("baichuan-inc/Baichuan2-13B-Chat"))),
    (("01-ai/Yi-6B", "01-ai/Yi-6B-Chat"),
     _a("Yi-6B", 6.06e9, 32, 4096, 32, 4, 128, 64000, 11008, 4096, src=_HF.format("01-ai/Yi-6B"))),
    (("01-ai/Yi-34B", "01-ai/Yi-34B-Chat"),
     _a("Yi-34B", 34.39e9, 60, 7168, 56, 8, 128, 64000, 20480, 4096, src=_HF.format("01-ai/Yi-34B"))),
    (("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),  # sliding_window 4096 on every layer
     _a("Mistral-7B-v0.1", 7.24e9, 32, 4096, 32, 8, 128, 32000, 14336, 32768, sliding_window=4096, swa_layers=32,
        src=_HF.format("mistralai/Mistral-7B-v0.1"))),
    (("mistralai/Mistral-7B-Instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"),
     _a("Mistral-7B", 7.24e9, 32, 4096, 32, 8, 128, 32768, 14336, 32768,
        src=_HF.format("mistralai/Mistral-7B-Instruct-v0.2"))),
    (("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),  # 8 experts, 2 active: all loaded
     _a("Mixtral-8x7B", 46.7e9, 32, 4096, 32, 8, 128, 32000, 14336, 32768, experts=8,
        src=_HF.format("mistralai/Mixtral-8x7B-v0.1"))),
    (("google/gemma-2-9b", "google/gemma-2-9b-it"),  # sliding window 4096 on every other layer
     _a("Gemma-2-9B", 9.24e9, 42, 3584, 16, 8, 256, 256000, 14336, 8192, tied=True, sliding_window=4096,
        swa_layers=21, src=_HF.format("google/gemma-2-9b-it"))),
    # MLA: kv_lora_rank 512 + qk_rope_head_dim 64 cached per token and layer
    (("deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V2-Lite-Chat"),
     _a("DeepSeek-V2-Lite", 15.7e9, 27, 2048, 16, 16, 192, 102400, 10944, 163840, kv_lora_rank=512, rope_dim=64,
        experts=64, src=_HF.format("deepseek-ai/DeepSeek-V2-Lite-Chat"))),
    (("deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1"),
     _a("DeepSeek-V3", 671e9, 61, 7168, 128, 128, 192, 129280, 18432, 163840, kv_lora_rank=512, rope_dim=64,
        experts=256, src=_HF.format("deepseek-ai/DeepSeek-V3"))),
]
BUILTIN: dict[str, Architecture] = {k.lower(): arch for keys, arch in _TABLE for k in keys}


def lookup(model: str) -> Architecture | None:
    """Hub id, case-insensitive; a bare name (`llama-3.1-8b-instruct`) matches the part after the owner."""
    key = model.strip().lower()
    if key in BUILTIN:
        return BUILTIN[key]
    tail = key.rsplit("/", 1)[-1]
    hits = {id(a): a for k, a in BUILTIN.items() if k.rsplit("/", 1)[-1] == tail}
    return next(iter(hits.values())) if len(hits) == 1 else None


def swa_layer_count(layers: int, family: str, pattern: Any) -> int:
    """How many layers use the sliding window: a per-layer list (HF `layer_types`, GGUF
    `sliding_window_pattern` array), a period p (every p-th layer is global), else by family: Gemma 2
    alternates (llama.cpp hard-codes 2), Gemma 3 has 5 local to 1 global; Mistral-style windows all layers."""
    if isinstance(pattern, list):
        return sum(1 for x in pattern if x is True or x == "sliding_attention")
    if isinstance(pattern, int) and pattern > 1:
        return layers - layers // pattern
    family = family.lower()
    if family.startswith("gemma2"):
        return layers // 2
    if family.startswith("gemma3"):
        return layers - layers // 6
    return layers


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def params_from_shape(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
                      inter: int, tied: bool, experts: int = 1, gated: bool = True) -> float:
    """Dense/MoE decoder: attention + experts x (3 gated | 2 plain) x hidden x intermediate; biases left out."""
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = (3 if gated else 2) * hidden * inter * experts + (hidden * experts if experts > 1 else 0)
    return layers * (attn + mlp + 2 * hidden) + vocab * hidden * (1 if tied else 2) + hidden


_ST_FORMAT = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}


def safetensors_totals(directory: Path) -> tuple[int, int, str | None] | None:
    """(tensor bytes, elements, the dtype holding most bytes) of the *.safetensors beside a config.json, from
    their headers only (u64 length + JSON with each tensor's dtype, shape and data_offsets); None without any."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    size = elements = 0
    by_dtype: dict[str, int] = {}
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100 << 20:
                    raise ValueError(f"header of {n} bytes")
                header = json.loads(fh.read(n))
            for name, t in header.items():
                if name == "__metadata__":
                    continue
                start, end = t["data_offsets"]
                size += end - start
                elements += math.prod(t["shape"])
                by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + end - start
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            raise SizingError(f"cannot read safetensors header of {f}: {exc}") from None
    return size, elements, max(by_dtype, key=lambda d: by_dtype[d]) if by_dtype else None


def from_config_json(path: Path) -> Architecture:
    """A Hugging Face config.json (Llama/Qwen/Mistral/Mixtral/Yi/Baichuan/ChatGLM/DeepSeek key names)."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SizingError(f"cannot read {path}: {exc}") from None
    cfg = {**cfg.get("text_config", {}), **cfg}  # multimodal configs nest the language model
    layers = _first(cfg, "num_hidden_layers", "num_layers", "n_layer", "n_layers")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first(cfg, "num_attention_heads", "n_head", "n_heads")
    if not (layers and hidden and heads):
        raise SizingError(f"{path}: no num_hidden_layers/hidden_size/num_attention_heads; give --layers etc.")
    kv = _first(cfg, "num_key_value_heads", "n_head_kv")
    if kv is None and cfg.get("multi_query_attention"):  # ChatGLM2/3
        kv = cfg.get("multi_query_group_num")
    kv = int(kv or heads)
    head_dim = int(_first(cfg, "head_dim", "kv_channels", default=hidden // heads))
    vocab = int(_first(cfg, "vocab_size", "padded_vocab_size", default=0))
    inter = int(_first(cfg, "intermediate_size", "ffn_hidden_size", "inner_hidden_size", default=4 * hidden))
    experts = int(_first(cfg, "num_local_experts", "n_routed_experts", "num_experts", default=1))
    tied = bool(cfg.get("tie_word_embeddings", True))  # transformers' PretrainedConfig default (ChatGLM-6B omits it)
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) is not False else None
    kv_lora = int(cfg.get("kv_lora_rank") or 0)
    fmt = None
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") in ("gptq", "awq") and q.get("bits") == 4:
        fmt = q["quant_method"]
    elif q.get("quant_method") == "fp8":
        fmt = "fp8"
    elif cfg.get("torch_dtype") in ("bfloat16", "float16", "float32"):
        fmt = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[cfg["torch_dtype"]]
    # plain (not gated) MLP: GELU models other than Gemma's GeGLU, and ChatGLM-6B v1 (inner_hidden_size)
    act = str(cfg.get("hidden_act") or cfg.get("activation_function") or "")
    gated = not ("inner_hidden_size" in cfg or (act.startswith("gelu") and "gemma" not in str(cfg.get("model_type"))))
    params = params_from_shape(layers, hidden, heads, kv, head_dim, vocab, inter, tied, experts, gated)
    weights = None
    st = safetensors_totals(path.parent)
    if st is not None:  # the checkpoint beside it: its exact tensor bytes (GPUStack sizes by files too)
        weights = st[0]
        if not q and st[2] in _ST_FORMAT:  # unquantized: every element is a parameter
            params, fmt = float(st[1]), _ST_FORMAT[st[2]]
    return Architecture(
        name=str(_first(cfg, "_name_or_path", default=path.parent.name) or path.parent.name), params=params,
        layers=int(layers), hidden=int(hidden), heads=int(heads), kv_heads=kv, head_dim=head_dim, vocab=vocab,
        intermediate=inter, tied_embeddings=tied,
        max_context=_first(cfg, "max_position_embeddings", "seq_length", "max_sequence_length", "n_positions"),
        sliding_window=int(window) if window else None,
        swa_layers=swa_layer_count(int(layers), str(cfg.get("model_type", "")),
                                   _first(cfg, "layer_types", "sliding_window_pattern")) if window else 0,
        kv_lora_rank=kv_lora, rope_dim=int(cfg.get("qk_rope_head_dim") or 0), experts=experts,
        source=str(path), weights_bytes=weights if fmt else None, file_format=fmt)


def from_gguf(path: Path) -> Architecture:
    """GGUF metadata (llama.cpp key names, gguf-py constants.Keys) plus the exact tensor bytes."""
    try:
        from gguf import GGUFReader, LlamaFileType
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad input file
        raise SizingError(f"cannot read GGUF {path}: {exc}") from None

    def get(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None or not f.data else f.contents()  # a scalar, or a list for an array

    arch = get("general.architecture", "llama")
    layers = get(f"{arch}.block_count")
    hidden = get(f"{arch}.embedding_length")
    heads = get(f"{arch}.attention.head_count")
    if not (layers and hidden and heads):
        raise SizingError(f"{path}: GGUF metadata lacks {arch}.block_count/embedding_length/attention.head_count")
    heads = max(heads) if isinstance(heads, list) else heads
    kv = get(f"{arch}.attention.head_count_kv", heads)
    kv = max(kv) if isinstance(kv, list) else kv  # per-layer arrays (hybrid models): the largest
    head_dim = get(f"{arch}.attention.key_length", hidden // heads)
    window = get(f"{arch}.attention.sliding_window")
    ff = get(f"{arch}.feed_forward_length", 0) or 0
    weights = sum(int(t.n_bytes) for t in reader.tensors)
    params = sum(int(t.n_elements) for t in reader.tensors)
    ftype = get("general.file_type")
    fmt = None
    if ftype is not None:
        try:
            fmt = LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "")
        except ValueError:
            fmt = None
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else 0
    return Architecture(
        name=str(get("general.name", path.stem)), params=float(params), layers=int(layers), hidden=int(hidden),
        heads=int(heads), kv_heads=int(kv), head_dim=int(head_dim), vocab=int(get(f"{arch}.vocab_size", vocab)),
        intermediate=int(max(ff) if isinstance(ff, list) else ff),
        max_context=get(f"{arch}.context_length"), sliding_window=int(window) if window else None,
        swa_layers=swa_layer_count(int(layers), str(arch), get(f"{arch}.attention.sliding_window_pattern"))
        if window else 0, kv_lora_rank=int(get(f"{arch}.attention.kv_lora_rank", 0) or 0),
        rope_dim=int(get(f"{arch}.rope.dimension_count", 0) or 0) if get(f"{arch}.attention.kv_lora_rank") else 0,
        experts=int(get(f"{arch}.expert_count", 1) or 1), source=str(path), weights_bytes=weights, file_format=fmt)


def resolve(model: str, **overrides: Any) -> Architecture:
    """`model`: a GGUF file, a config.json or a directory holding one, or a hub id of the built-in table.
    `overrides` (layers=, kv_heads=, head_dim=, params=, ...) replace figures, or describe a model from
    scratch when it is none of those (then params, layers, kv_heads and head_dim are required)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    p = Path(model).expanduser()
    arch: Architecture | None = None
    if p.is_dir() and (p / "config.json").is_file():
        arch = from_config_json(p / "config.json")
    elif p.is_file():
        arch = from_gguf(p) if p.suffix.lower() == ".gguf" else from_config_json(p)
    else:
        arch = lookup(model)
    if arch is None:
        need = [k for k in ("params", "layers", "kv_heads", "head_dim") if k not in given]
        if need:
            raise SizingError(f"unknown model {model!r} (not a file, directory or built-in hub id); "
                              f"describe it with --{' --'.join(n.replace('_', '-') for n in need)}")
        heads = int(given.get("heads", given["kv_heads"]))
        arch = Architecture(name=model, params=float(given["params"]), layers=int(given["layers"]),
                            hidden=int(given.get("hidden", heads * given["head_dim"])), heads=heads,
                            kv_heads=int(given["kv_heads"]), head_dim=int(given["head_dim"]), source="flags")
    if given:
        if "params" in given and arch.weights_bytes is None:
            given["params"] = float(given["params"])
        arch = replace(arch, **{k: v for k, v in given.items() if hasattr(arch, k)})
    return arch
