"""Will a recipe's launch fit the GPUs it is given? The sizing estimator (gateway.recipes.size_model) asked
with the launch's own model, format, context, slots and GPUs, before anything is started."""

from __future__ import annotations

from gateway.recipes.architectures import SizingError
from gateway.recipes.catalog import RecipeError
from gateway.recipes.plan import LaunchParams, canonical
from gateway.recipes.sizing import human

# How each kind uses GPU memory, in the estimator's terms (RWKV-Runner's recurrent state is not modelled).
ENGINES = {"llamacpp": "llamacpp", "ollama": "llamacpp", "vllm": "vllm", "tgi": "tgi", "fastchat": "transformers"}
_DTYPE_FORMAT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def check(kind: str, p: LaunchParams, gpus: list[int], gpu_memory: str | None) -> tuple[bool | None, str]:
    """(fits, why): fits is None when it cannot be told (CPU, a kind or model the estimator does not know,
    GPU sizes unknown); `why` is one line either way."""
    from gateway.recipes.gpus import parse_gpus

    if not gpus:
        return None, "CPU only"
    if kind not in ENGINES:
        return None, f"the estimator does not model {kind}"
    try:
        sizes = parse_gpus(f"{len(gpus)}x{gpu_memory}" if gpu_memory else ",".join(map(str, gpus)))
    except SizingError as exc:
        if gpu_memory:
            raise RecipeError(f"bad --gpu-memory {gpu_memory!r}: use a size like 24GiB or 80GB") from None
        return None, str(exc)
    return check_sizes(kind, p, sizes)


def check_sizes(kind: str, p: LaunchParams, sizes: list[int], what: str = "") -> tuple[bool | None, str]:
    """check() against known byte counts per GPU (their size, or what is free on them: `what` says which)."""
    from gateway.recipes import size_model

    engine = ENGINES.get(kind)
    if engine is None:
        return None, f"the estimator does not model {kind}"
    fmt = canonical("quantization", p.quantization) if p.quantization else None
    if fmt is None and p.dtype:
        fmt = _DTYPE_FORMAT.get(canonical("dtype", p.dtype))
    try:
        est = size_model(p.model, gpus=sizes, format=fmt, context=p.context, slots=p.slots or 1, engine=engine,
                         gpu_memory_utilization=p.gpu_memory_utilization,
                         gpu_layers=p.gpu_layers if engine == "llamacpp" else None)
    except SizingError as exc:
        return None, str(exc)
    gpu_text = f"{len(sizes)} GPU(s) of {human(sizes[0])}{what}"
    if est.fits:
        return True, f"fits {gpu_text}: {human(est.total_bytes)} in all"
    advice = "; ".join(est.advice) or "no smaller setting fits"
    return False, f"{kind}: {p.model} will not fit {gpu_text} (needs {human(est.total_bytes)}): {advice}"
