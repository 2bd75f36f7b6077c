"""Launch recipes and the GPU sizing estimator.

A recipe checks a launch before it is tried with `size_model(...)` (or, holding an Architecture already,
`estimate(SizingRequest(...))`): the Estimate has the breakdown, per-GPU shares, `fits` and `advice`."""

from __future__ import annotations

from gateway.recipes.architectures import Architecture, SizingError, resolve
from gateway.recipes.gpus import parse_gpus
from gateway.recipes.sizing import Estimate, SizingRequest, estimate

__all__ = ["Architecture", "Estimate", "SizingError", "SizingRequest", "estimate", "parse_gpus", "resolve",
           "size_model"]


def size_model(model: str, *, gpus: str | list[int] | None = None, format: str | None = None,
               context: int | None = None, slots: int = 1, engine: str | None = None,
               gpu_memory_utilization: float | None = None, gpu_layers: int | None = None,
               cache_type: str = "f16") -> Estimate:
    """`model` as `llm-gateway size --model` takes it; `gpus` a spec (`2x24GiB`, `0,1`) or bytes per GPU.
    `engine` is the backend kind's sizing behaviour: llamacpp, vllm, tgi or transformers (FastChat).
    Raises SizingError on bad input."""
    sizes = parse_gpus(gpus) if isinstance(gpus, str) else list(gpus or [])
    return estimate(SizingRequest(resolve(model), format=format, context=context, slots=slots, gpus=sizes,
                                  engine=engine, gpu_memory_utilization=gpu_memory_utilization,
                                  gpu_layers=gpu_layers, cache_type=cache_type))
