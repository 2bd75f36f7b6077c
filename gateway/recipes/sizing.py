"""GPU memory estimator: weights + KV cache + runtime overhead, per GPU, with advice when it does not fit.

A recipe calls `estimate(SizingRequest(...))`; the CLI (`llm-gateway size`) is a thin layer over it.
Sources of every figure are cited where it is defined; the README "Sizing" section states the formula."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.recipes.architectures import Architecture, SizingError

GiB = 1 << 30
MiB = 1 << 20

# --- weights: bits per weight ---------------------------------------------------------------------------
# Hugging Face checkpoints. GPTQ/AWQ INT4 (group_size 128): 4-bit weights + one FP16 scale and one packed
# 4-bit zero point per group of 128 -> 4 + (16 + 4) / 128 = 4.156 bpw (AutoGPTQ/AutoAWQ qweight/qzeros/scales
# layout); the token embeddings and lm_head stay FP16. Checked: Llama-2-13B GPTQ is 7.26 GB (seed 004:297).
INT4_GROUP_BPW = 4 + (16 + 4) / 128
HF_BPW: dict[str, float] = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": INT4_GROUP_BPW,
                            "gptq": INT4_GROUP_BPW, "awq": INT4_GROUP_BPW}
# Embeddings + output head stay 16-bit: vLLM quantizes LinearBase layers only (its fp8/GPTQ/AWQ methods leave
# VocabParallelEmbedding and ParallelLMHead unquantized unless lm_head quantization is asked for).
QUANT_BODY = {"fp8", "int8", "int4", "gptq", "awq"}


def _gib_over_llama3_8b(size_gib: float) -> float:
    # llama.cpp tools/quantize/quantize.cpp QUANT_OPTIONS gives each file type's size on Llama-3-8B
    # (8.03e9 params, sizes in GiB). A k-quant "type" is a mix (output.weight and some attn_v/ffn_down in
    # Q6_K, llama-quant.cpp), so its effective bpw over the whole file is what matters, not the block bpw.
    return size_gib * GiB * 8 / 8.03e9


# GGUF file types: effective bits per weight over the whole file.
GGUF_BPW: dict[str, float] = {
    "q2_k": _gib_over_llama3_8b(2.96), "q3_k_s": _gib_over_llama3_8b(3.41), "q3_k_m": _gib_over_llama3_8b(3.74),
    "q3_k_l": _gib_over_llama3_8b(4.03), "q4_0": _gib_over_llama3_8b(4.34), "q4_1": _gib_over_llama3_8b(4.78),
    "q4_k_s": _gib_over_llama3_8b(4.37), "q4_k_m": _gib_over_llama3_8b(4.58), "q5_0": _gib_over_llama3_8b(5.21),
    "q5_1": _gib_over_llama3_8b(5.65), "q5_k_s": _gib_over_llama3_8b(5.21), "q5_k_m": _gib_over_llama3_8b(5.33),
    "q6_k": _gib_over_llama3_8b(6.14), "q8_0": _gib_over_llama3_8b(7.96),
    # the i-quants: the nominal bpw quantize.cpp prints for them
    "iq1_s": 1.56, "iq1_m": 1.75, "iq2_xxs": 2.06, "iq2_xs": 2.31, "iq2_s": 2.5, "iq2_m": 2.7, "iq3_xxs": 3.06,
    "iq3_xs": 3.3, "iq3_s": 3.44, "iq3_m": 3.66, "iq4_xs": 4.25, "iq4_nl": 4.5, "f16": 16, "bf16": 16, "f32": 32,
}
ALIASES = {"half": "fp16", "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "fp8_e4m3": "fp8",
           "w4a16": "int4", "q4_k": "q4_k_m", "q5_k": "q5_k_m", "q3_k": "q3_k_m", "q2_k_s": "q2_k"}
HF_LADDER = ["bf16", "fp8", "int8", "int4"]
GGUF_LADDER = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]

# --- KV cache: bytes per element ------------------------------------------------------------------------
# ggml block sizes (ggml/src/ggml-common.h, mirrored in gguf-py GGML_QUANT_SIZES): q8_0 = 34 B / 32,
# q4_0 = 18 B / 32, q4_1 = 20 / 32, q5_0 = 22 / 32, q5_1 = 24 / 32, iq4_nl = 18 / 32 (llama.cpp
# --cache-type-k/v); fp8 is vLLM's --kv-cache-dtype fp8 (1 byte).
CACHE_BYTES: dict[str, float] = {"f16": 2, "fp16": 2, "bf16": 2, "f32": 4, "fp32": 4, "auto": 2, "q8_0": 34 / 32,
                                 "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
                                 "iq4_nl": 18 / 32, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}

# --- runtime overhead, per GPU --------------------------------------------------------------------------
# llama.cpp: gguf-parser-go's default platform footprint, 250 MiB VRAM for the CUDA context
# (file_estimate_option.go "--platform-footprint 150,250"), plus the compute buffer (below).
LLAMACPP_CONTEXT = 250 * MiB
LLAMACPP_UBATCH = 512  # llama.cpp's default -ub
# vLLM/TGI/transformers: CUDA context + non-torch memory (cuBLAS workspaces, NCCL) ~0.5 GiB, and vLLM/TGI
# CUDA graphs 0.5 GiB (GPUStack's estimate_model_vram says graphs "can take additional 1~3 GiB" in its 2 GiB
# framework overhead; vLLM's own start-up log shows ~0.5 GiB for 7-8B models).
TORCH_CONTEXT = GiB // 2
CUDA_GRAPHS = GiB // 2
# vLLM's OpenAI-server defaults (vllm/engine/arg_utils.py EngineArgs.get_batch_defaults): max_num_batched_tokens
# 2048 and max_num_seqs 256, or 8192 and 1024 on GPUs of >= 70 GiB other than A100 (taken here for every such GPU:
# the larger figure). The profile run pushes that many tokens through and samples that many sequences.
VLLM_BATCH_DEFAULTS = ((70 * GiB, 8192, 1024), (0, 2048, 256))
ENGINE_UTILIZATION = {"vllm": 0.9, "tgi": 1.0}  # vLLM --gpu-memory-utilization, TGI --cuda-memory-fraction
ENGINES = ("llamacpp", "vllm", "tgi", "transformers")
SLOW_OFFLOAD_RULE = 0.5  # seed 001:358: GPU memory should not be below half of the model, or it is slow


def normalize_format(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in HF_BPW and key not in GGUF_BPW:
        known = ", ".join(sorted({*HF_BPW, *GGUF_BPW}))
        raise SizingError(f"unknown format {name!r}; known: {known}")
    return key


def is_gguf_format(fmt: str) -> bool:
    return fmt in GGUF_BPW and fmt not in HF_BPW


def weights_bytes(arch: Architecture, fmt: str) -> int:
    """Exact tensor bytes when the model is a file stored in `fmt`; else params x bpw (FP16 embeddings
    for the INT4/INT8 formats that keep them)."""
    if arch.weights_bytes is not None and arch.file_format and normalize_format(arch.file_format) == fmt:
        return arch.weights_bytes
    if fmt in QUANT_BODY and arch.embedding_params:
        body = max(arch.params - arch.embedding_params, 0)
        return int(body * HF_BPW[fmt] / 8 + arch.embedding_params * 2)
    bpw = HF_BPW.get(fmt, GGUF_BPW.get(fmt))
    assert bpw is not None
    return int(arch.params * bpw / 8)


def kv_elements_per_token_layer(arch: Architecture) -> int:
    """K and V: 2 x KV heads x head dim (GQA: KV heads, not query heads); MLA: the compressed latent."""
    if arch.kv_lora_rank:
        return arch.kv_lora_rank + arch.rope_dim
    return 2 * arch.kv_heads * arch.head_dim


def kv_cache_bytes(arch: Architecture, context: int, slots: int, cache_type: str) -> int:
    """Sliding-window layers keep at most `window` tokens per sequence (gguf-parser: min(n_kv, window...))."""
    per = kv_elements_per_token_layer(arch) * CACHE_BYTES[cache_type]
    swa = arch.swa_layers if arch.sliding_window else 0
    swa_tokens = min(context, arch.sliding_window or context)
    return int(per * slots * ((arch.layers - swa) * context + swa * swa_tokens))


@dataclass
class SizingRequest:
    arch: Architecture
    format: str | None = None          # None: the model file's own format, else bf16 (or q4_k_m for llama.cpp)
    context: int | None = None         # tokens per sequence; None: the model's maximum (the engines' default)
    slots: int = 1                     # concurrent sequences at full context
    gpus: list[int] = field(default_factory=list)  # bytes per GPU; empty: no fit check
    engine: str | None = None          # llamacpp | vllm | tgi | transformers; None: by format
    gpu_memory_utilization: float | None = None
    gpu_layers: int | None = None      # llama.cpp -ngl; None: all
    cache_type: str = "f16"


@dataclass
class GpuShare:
    index: int
    total_bytes: int
    budget_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "total_bytes": self.total_bytes, "budget_bytes": self.budget_bytes,
                "weights_bytes": self.weights_bytes, "kv_cache_bytes": self.kv_cache_bytes,
                "overhead_bytes": self.overhead_bytes, "used_bytes": self.used_bytes,
                "fits": self.used_bytes <= self.budget_bytes}


@dataclass
class Estimate:
    model: str
    format: str
    engine: str
    context: int
    slots: int
    cache_type: str
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    kv_bytes_per_token: int
    per_gpu: list[GpuShare]
    fits: bool
    gpu_layers: int | None = None
    ram_bytes: int = 0                # llama.cpp partial offload: weights + KV of the layers left in RAM
    vllm_kv_tokens: int | None = None  # vLLM/TGI: tokens of KV cache the pre-allocated pool holds
    advice: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "format": self.format, "engine": self.engine, "context": self.context,
                "slots": self.slots, "cache_type": self.cache_type, "weights_bytes": self.weights_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "overhead_bytes": self.overhead_bytes,
                "total_bytes": self.total_bytes, "kv_bytes_per_token": self.kv_bytes_per_token,
                "gpu_layers": self.gpu_layers, "ram_bytes": self.ram_bytes, "kv_cache_tokens": self.vllm_kv_tokens,
                "fits": self.fits, "per_gpu": [g.as_dict() for g in self.per_gpu], "advice": self.advice}


def _overhead(arch: Architecture, engine: str, context: int, slots: int, tp: int, gpu_bytes: int) -> int:
    """Per GPU. llama.cpp compute buffer with flash attention (its default where supported): the graph's
    largest node, ubatch x max(vocab logits, FFN activations) x 4 B, plus the f16 KQ mask ubatch x n_kv
    (the terms gguf-parser-go's estimator counts; its graph overhead per node is left out)."""
    ub = LLAMACPP_UBATCH
    widest = max(arch.vocab, arch.intermediate + 2 * arch.hidden)
    if engine == "llamacpp":
        return LLAMACPP_CONTEXT + ub * widest * 4 + ub * context * slots * 2
    if engine == "transformers":  # one full prompt in flight per slot, fp16 activations/logits
        return TORCH_CONTEXT + context * slots * widest * 2
    # vLLM/TGI profile run: max_num_batched_tokens through the layers + fp32 logits for max_num_seqs
    tokens, seqs = next((t, s) for floor, t, s in VLLM_BATCH_DEFAULTS if gpu_bytes >= floor)
    act = tokens * 2 * (4 * arch.hidden + 3 * arch.intermediate // tp)
    return TORCH_CONTEXT + CUDA_GRAPHS + act + seqs * arch.vocab * 4 // tp


def _kv_share(arch: Architecture, tp: int) -> float:
    """Fraction of the KV cache one tensor-parallel rank holds: KV heads split, replicated when tp > heads;
    MLA's latent is replicated on every rank."""
    if arch.kv_lora_rank or tp == 1:
        return 1.0
    return max(1, arch.kv_heads // tp) / arch.kv_heads


def _default_engine(fmt: str | None, arch: Architecture) -> str:
    f = fmt or arch.file_format
    return "llamacpp" if f and is_gguf_format(normalize_format(f)) else "vllm"


def estimate(req: SizingRequest, *, advise: bool = True) -> Estimate:
    arch = req.arch
    engine = (req.engine or _default_engine(req.format, arch)).lower()
    if engine not in ENGINES:
        raise SizingError(f"unknown engine {req.engine!r}; known: {', '.join(ENGINES)}")
    if req.format:
        fmt = normalize_format(req.format)
    elif arch.file_format:
        fmt = normalize_format(arch.file_format)
    else:
        fmt = "q4_k_m" if engine == "llamacpp" else "bf16"
    if engine == "llamacpp" and fmt in ("fp8", "int8", "int4", "gptq", "awq"):
        raise SizingError(f"llama.cpp loads GGUF files: format {fmt} is not one (try q8_0, q4_k_m, f16)")
    if engine != "llamacpp" and is_gguf_format(fmt):
        raise SizingError(f"format {fmt} is a GGUF type: only --engine llamacpp loads it")
    cache = req.cache_type.lower()
    if cache == "auto":  # vLLM's --kv-cache-dtype auto: the model's dtype (16-bit for quantized weights)
        cache = "f32" if fmt == "fp32" else "f16"
    if cache not in CACHE_BYTES:
        raise SizingError(f"unknown cache type {req.cache_type!r}; known: {', '.join(CACHE_BYTES)}")
    context = req.context if req.context is not None else (arch.max_context or 4096)
    if context <= 0 or req.slots <= 0:
        raise SizingError("--context and --slots must be positive")
    util = req.gpu_memory_utilization
    if util is None:
        util = ENGINE_UTILIZATION.get(engine, 1.0)
    if not 0 < util <= 1:
        raise SizingError(f"--gpu-memory-utilization must be in (0, 1], got {util}")
    if req.gpu_layers is not None and (engine != "llamacpp" or req.gpu_layers < 0):
        raise SizingError("--gpu-layers is llama.cpp's -ngl: a count >= 0, with a GGUF format")

    w = weights_bytes(arch, fmt)
    kv = kv_cache_bytes(arch, context, req.slots, cache)
    per_token = kv_cache_bytes(arch, 1, 1, cache)
    n = max(len(req.gpus), 1)
    tensor_parallel = engine in ("vllm", "tgi")
    oh1 = _overhead(arch, engine, context, req.slots, n if tensor_parallel else 1, min(req.gpus, default=0))
    ngl = arch.layers if req.gpu_layers is None else min(req.gpu_layers, arch.layers)
    on_gpu = ngl / arch.layers if engine == "llamacpp" else 1.0
    est = Estimate(model=arch.name, format=fmt, engine=engine, context=context, slots=req.slots, cache_type=cache,
                   weights_bytes=w, kv_cache_bytes=kv, overhead_bytes=oh1 * n, kv_bytes_per_token=per_token,
                   per_gpu=[], fits=False, gpu_layers=ngl if engine == "llamacpp" else None,
                   ram_bytes=int((w + kv) * (1 - on_gpu)))
    total_mem = sum(req.gpus)
    for i, size in enumerate(req.gpus):
        budget = int(size * util)
        if tensor_parallel:
            share = GpuShare(i, size, budget, w // n, int(kv * _kv_share(arch, n)), oh1)
        else:  # layer split in proportion to memory (llama.cpp's default --tensor-split, HF device_map)
            part = size / total_mem
            share = GpuShare(i, size, budget, int(w * on_gpu * part), int(kv * on_gpu * part), oh1)
        est.per_gpu.append(share)
    est.fits = bool(est.per_gpu) and all(g.used_bytes <= g.budget_bytes for g in est.per_gpu)
    if tensor_parallel and arch.heads % n:  # vLLM/TGI refuse to start: heads are split evenly over the ranks
        est.fits = False
    if tensor_parallel and est.per_gpu:
        pool = min(g.budget_bytes - g.weights_bytes - g.overhead_bytes for g in est.per_gpu)
        rank_token = per_token * _kv_share(arch, n)
        est.vllm_kv_tokens = max(0, int(pool / rank_token)) if rank_token else None
    if advise:
        est.advice = _advice(req, est, arch, n)
    return est


def _fits(req: SizingRequest, **changes: Any) -> Estimate | None:
    try:
        e = estimate(replace(req, **changes), advise=False)
    except SizingError:
        return None
    return e if e.fits else None


def human(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _advice(req: SizingRequest, est: Estimate, arch: Architecture, n: int) -> list[str]:
    out: list[str] = []
    if arch.experts > 1:
        out.append(f"MoE: all {arch.experts} experts are loaded, so memory follows the total parameters "
                   f"({arch.params / 1e9:.1f}B); only speed follows the active ones")
    if not req.gpus:
        need = estimate(replace(req, gpus=[1 << 50]), advise=False).per_gpu[0].used_bytes
        out.append(f"no GPUs given (--gpus 1x24GiB or --gpus 0,1): one GPU would need {human(need)}")
        return out
    if est.engine == "llamacpp" and est.gpu_layers is not None and est.gpu_layers < arch.layers:
        out.append(_offload_line(est, arch))
    if est.engine in ("vllm", "tgi") and arch.heads % n:
        out.append(f"{est.engine} splits the {arch.heads} attention heads evenly over the GPUs: {n} GPUs cannot "
                   f"serve it (use {', '.join(str(k) for k in range(1, 9) if arch.heads % k == 0)})")
    if est.vllm_kv_tokens is not None:
        seqs = est.vllm_kv_tokens // est.context
        out.append(f"{est.engine} pre-allocates {req.gpu_memory_utilization or ENGINE_UTILIZATION[est.engine]:g} "
                   f"of each GPU and fills what weights and activations leave with KV cache: {est.vllm_kv_tokens} "
                   f"tokens, {seqs} concurrent sequence(s) of {est.context}")
        if not est.fits and seqs >= 1:
            out.append(f"{est.engine} would still start (one sequence of {est.context} fits) but serves at most "
                       f"{seqs} at full context, fewer than --slots {req.slots}")
    if est.fits:
        return out
    informative = len(out)
    ladder = GGUF_LADDER if est.engine == "llamacpp" else HF_LADDER
    bpw = {**GGUF_BPW, **HF_BPW}
    for fmt in ladder:
        if bpw[fmt] < bpw[est.format] and (e := _fits(req, format=fmt)):
            out.append(f"smaller quantization: --format {fmt} fits ({human(e.per_gpu[0].used_bytes)} on GPU 0)")
            break
    lo, hi, best = 1, est.context // 256, 0
    while lo <= hi:  # largest multiple of 256 tokens that fits
        mid = (lo + hi) // 2
        if _fits(req, context=mid * 256):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best:
        out.append(f"shorter context: --context {best * 256} fits (x {req.slots} slot(s))")
    size = req.gpus[0]
    for more in range(n + 1, 17):
        if est.engine in ("vllm", "tgi") and arch.heads % more:
            continue  # tensor parallel needs the attention heads divisible by the GPU count
        if _fits(req, gpus=[size] * more):
            out.append(f"more GPUs: --gpus {more}x{size / GiB:g}GiB fits")
            break
    if est.engine == "llamacpp":
        for layers in range((est.gpu_layers or arch.layers) - 1, -1, -1):
            if e := _fits(req, gpu_layers=layers):
                out.append(f"fewer GPU layers: --gpu-layers {layers} fits, {human(e.ram_bytes)} of weights and KV "
                           f"cache stay in RAM")
                if layers / arch.layers < SLOW_OFFLOAD_RULE:
                    out.append(_slow_line(layers / arch.layers))
                break
    if len(out) == informative:
        out.append("nothing smaller fits these GPUs: a larger GPU or a smaller model")
    return out


def _offload_line(est: Estimate, arch: Architecture) -> str:
    frac = (est.gpu_layers or 0) / arch.layers
    line = (f"partial offload: {est.gpu_layers}/{arch.layers} layers on GPU, {human(est.ram_bytes)} in RAM "
            f"(make sure RAM holds it besides the OS)")
    return line + ("; " + _slow_line(frac) if frac < SLOW_OFFLOAD_RULE else "")


def _slow_line(frac: float) -> str:
    return (f"slow: the GPUs hold {math.floor(frac * 100)}% of the model, below half (the guides' rule: GPU memory "
            f"should be at least half the model size; the bigger the share, the faster)")
