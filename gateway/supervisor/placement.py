"""VRAM-aware placement: before a member of a swap group with GPUs (`supervisor.groups`) starts, its launch is
sized by the estimator (gateway/recipes/fit.py) against what is free on those GPUs: NVML's figure when
nvidia-ml-py can read them (other processes' use counts), else the configured `gpu_memory`. A launch that
will not fit is refused before any process starts, with the estimator's advice."""

from __future__ import annotations

import logging

from gateway.recipes.fit import check_sizes
from gateway.recipes.gpus import NvmlUnavailable, nvml_memory, parse_gpus
from gateway.recipes.plan import LaunchParams
from gateway.settings import SwapGroupSettings

log = logging.getLogger("gateway.supervisor")


def free_bytes(gpus: list[int]) -> list[int] | None:
    """Free memory per GPU as NVML reports it; None without nvidia-ml-py or a readable GPU."""
    try:
        return nvml_memory(gpus, "free")
    except NvmlUnavailable as exc:
        if not exc.missing:
            log.warning("NVML cannot read GPUs %s (%s): placement uses the configured sizes", gpus, exc)
        return None


def refusal(kind: str, p: LaunchParams, group: SwapGroupSettings) -> str | None:
    """Why this launch must not start on its group's GPUs, or None (it fits, or it cannot be told)."""
    gpus = p.gpus if p.gpus else group.gpus
    free = free_bytes(gpus)
    what = " free (NVML)"
    if free is None:
        if group.gpu_memory is None:
            return None
        free, what = parse_gpus(f"{len(gpus)}x{group.gpu_memory}"), " (configured)"
    fits, why = check_sizes(kind, p.model_copy(update={"gpus": gpus}), free, what)
    if fits is None:
        log.info("placement of %s not checked: %s", p.model, why)
    return why if fits is False else None
