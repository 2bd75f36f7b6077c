"""Which model the quickstart serves: the largest of a few small instruct GGUFs that the sizing estimator
(gateway/recipes) fits to this machine, on the GPU when NVML sees one, else on the CPU.

Budget: on a GPU, the estimate (weights + KV cache for CONTEXT tokens + runtime overhead) must fit what NVML
reports free on GPU 0; on the CPU, half the memory the kernel reports available (the rest is the user's),
and the 1.5B model only with at least 4 cores (fewer make it too slow to feel like a chat)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.quickstart.cuda import Gpu, read_gpu
from gateway.recipes import SizingError, size_model
from gateway.recipes.sizing import human

CONTEXT = 4096
CPU_CORES_FOR_LARGER = 4


@dataclass(frozen=True, slots=True)
class QuickModel:
    alias: str      # the name it is served under
    repo: str       # Hugging Face hub repository
    filename: str   # the GGUF file in it
    arch: str       # the estimator's built-in architecture (gateway/recipes/architectures.py)


# Qwen's own GGUF repositories, Q4_K_M; the largest first.
CATALOG = (
    QuickModel("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf",
               "Qwen/Qwen2.5-1.5B-Instruct"),
    QuickModel("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf",
               "Qwen/Qwen2.5-0.5B-Instruct"),
)


@dataclass(frozen=True, slots=True)
class Machine:
    gpu_free: int | None   # bytes free on GPU 0 (NVML), None: no GPU seen
    ram_available: int     # bytes
    cores: int
    gpu: Gpu | None = None  # GPU 0's architecture and driver (NVML), for the CUDA build


@dataclass(frozen=True, slots=True)
class Choice:
    model: QuickModel
    gpus: list[int]        # [0] or [] (CPU)
    why: str


def this_machine() -> Machine:
    from gateway.recipes.gpus import nvml_memory

    try:
        gpu: int | None = nvml_memory([0], "free")[0]
    except Exception:  # no driver, no device, no nvidia-ml-py (NvmlUnavailable), a broken one: the CPU it is
        gpu = None
    return Machine(gpu, available_memory(), os.cpu_count() or 1, read_gpu(0) if gpu is not None else None)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def needed_bytes(m: QuickModel) -> int:
    """The estimator's total for one slot of CONTEXT tokens, Q4_K_M, llama.cpp."""
    return size_model(m.arch, gpus=[1 << 50], format="q4_k_m", context=CONTEXT, slots=1,
                      engine="llamacpp").total_bytes


def choose(machine: Machine) -> Choice:
    needs = {m.alias: needed_bytes(m) for m in CATALOG}
    for m in CATALOG:
        need = needs[m.alias]
        if machine.gpu_free is not None and need <= machine.gpu_free:
            return Choice(m, [0], f"GPU 0 has {human(machine.gpu_free)} free; {m.alias} needs about {human(need)}")
    budget = machine.ram_available // 2
    for m in CATALOG:
        need = needs[m.alias]
        if m is CATALOG[0] and machine.cores < CPU_CORES_FOR_LARGER:
            continue
        if need <= budget:
            where = "no GPU seen by NVML" if machine.gpu_free is None else "the GPU has too little free memory"
            return Choice(m, [], f"{where}: on the CPU ({machine.cores} cores, {human(machine.ram_available)} "
                                 f"available); {m.alias} needs about {human(need)}")
    smallest = CATALOG[-1]
    return Choice(smallest, [], f"little memory available ({human(machine.ram_available)}): trying the smallest, "
                                f"{smallest.alias} (about {human(needs[smallest.alias])})")


def sized_file(path: str, machine: Machine) -> tuple[list[int], str]:
    """GPU or CPU for a GGUF the user gave (--model), by the estimator reading the file's metadata."""
    try:
        need = size_model(path, gpus=[1 << 50], context=CONTEXT, slots=1, engine="llamacpp").total_bytes
    except SizingError as exc:
        return ([0] if machine.gpu_free else []), f"the estimator cannot read it ({exc})"
    if machine.gpu_free is not None and need <= machine.gpu_free:
        return [0], f"needs about {human(need)}; GPU 0 has {human(machine.gpu_free)} free"
    return [], f"needs about {human(need)}; on the CPU"
