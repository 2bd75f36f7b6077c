"""GPU specs in one vocabulary for sizing and recipes: `2x24GiB`, `24GiB,16GiB`, `1x80GB` (sizes), or device
indices `0,1` whose sizes NVML (nvidia-ml-py) reports."""

from __future__ import annotations

import re

from gateway.recipes.architectures import SizingError
from gateway.recipes.sizing import GiB

_UNITS = {"": GiB, "g": GiB, "gib": GiB, "gb": 10**9, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
          "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}
_SIZE = re.compile(r"^(?:(\d+)\s*[x×*]\s*)?(\d+(?:\.\d+)?)\s*([a-z]*)$")


def parse_gpus(spec: str) -> list[int]:
    """`2x24GiB`, `24GiB,16GiB`, `1x80GB` -> bytes per GPU (GB = 10^9, GiB or bare G = 2^30);
    `0,1` (indices) -> the sizes NVML reports for those devices."""
    items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not items:
        raise SizingError("--gpus is empty: use 2x24GiB or 0,1")
    if all(s.isdigit() for s in items):
        return _nvml_sizes([int(s) for s in items], spec)
    sizes: list[int] = []
    for s in items:
        m = _SIZE.match(s)
        if not m or m.group(3) not in _UNITS or (m.group(3) == "" and "x" not in s):
            raise SizingError(f"bad --gpus item {s!r}: use 2x24GiB, 24GiB,16GiB or device indices 0,1")
        count = int(m.group(1) or 1)
        size = int(float(m.group(2)) * _UNITS[m.group(3)])
        if count < 1 or size <= 0:
            raise SizingError(f"bad --gpus item {s!r}: count and size must be positive")
        sizes += [size] * count
    return sizes


class NvmlUnavailable(Exception):
    """nvidia-ml-py is missing (`missing`), or NVML cannot read the devices (the message says why)."""

    def __init__(self, why: str, missing: bool = False) -> None:
        super().__init__(why)
        self.missing = missing


def nvml_memory(indices: list[int], field: str = "total") -> list[int]:
    """Bytes per device as NVML reports them: `total` or `free` (what other processes leave)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py is not installed", missing=True) from None
    try:
        pynvml.nvmlInit()
        try:
            return [int(getattr(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)), field))
                    for i in indices]
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(str(exc)) from None


def _nvml_sizes(indices: list[int], spec: str) -> list[int]:
    try:
        return nvml_memory(indices)
    except NvmlUnavailable as exc:
        if exc.missing:
            raise SizingError(f"--gpus {spec}: reading GPU sizes needs nvidia-ml-py (pip install nvidia-ml-py); "
                              f"or give the sizes, e.g. --gpus {len(indices)}x24GiB") from None
        raise SizingError(f"--gpus {spec}: NVML cannot read the GPUs ({exc}); give the sizes, e.g. "
                          f"--gpus {len(indices)}x24GiB") from None
