"""A stand-in for nvidia-ml-py's `pynvml` on a machine without a GPU: the calls the gateway makes (placement,
sizing, the quickstart), answering for GPUs whose figures come from the environment. A test puts this
directory first on the gateway's PYTHONPATH.

STAND_IN_FREE: bytes free (and total) on each device; STAND_IN_GPUS: how many (1); STAND_IN_CAPABILITY: the
compute capability ("7.5"); STAND_IN_DRIVER_CUDA: the newest CUDA the driver runs (12040 = 12.4);
STAND_IN_GPU_NAME. The real module's error type and names are kept, so the gateway's handling is the real one.
"""

from __future__ import annotations

import os


class NVMLError(Exception):
    pass


class _Mem:
    def __init__(self, free: int) -> None:
        self.free = self.total = free
        self.used = 0


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return int(os.environ.get("STAND_IN_GPUS", "1"))


def nvmlDeviceGetHandleByIndex(i: int) -> int:
    if not 0 <= i < nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return i


def nvmlDeviceGetMemoryInfo(h: int) -> _Mem:
    return _Mem(int(os.environ["STAND_IN_FREE"]))


def nvmlDeviceGetName(h: int) -> str:
    return os.environ.get("STAND_IN_GPU_NAME", "Stand-in GPU")


def nvmlDeviceGetCudaComputeCapability(h: int) -> tuple[int, int]:
    major, minor = os.environ.get("STAND_IN_CAPABILITY", "7.5").split(".")
    return int(major), int(minor)


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(os.environ.get("STAND_IN_DRIVER_CUDA", "12040"))
