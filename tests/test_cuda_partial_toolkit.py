"""A CUDA toolkit assembled from parts, without cuBLAS, is refused in about a second, before the quickstart
downloads or builds anything (gateway/quickstart/cuda.py `check_toolchain`). The machines this project runs
on carry one: /usr/local/cuda is CUDA 13.0 put together from NVIDIA's PyPI wheels (nvcc, cudart, no cuBLAS),
as conda's and pip's partial installs often are. Elsewhere this test skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.quickstart import cuda

PARTIAL = Path("/usr/local/cuda")


def test_a_toolkit_without_cublas_is_refused_before_a_build(monkeypatch: pytest.MonkeyPatch) -> None:
    nvcc = PARTIAL / "bin" / "nvcc"
    if not nvcc.exists() or any(PARTIAL.resolve().rglob("libcublas.so*")):
        pytest.skip(f"no CUDA toolkit without cuBLAS at {PARTIAL} on this machine")
    monkeypatch.delenv("CUDAHOSTCXX", raising=False)
    release = cuda.release(nvcc)
    target = cuda.CudaTarget(nvcc, release, cuda.choose_arch(nvcc, (8, 6)))
    assert target.arch == "86"
    with pytest.raises(cuda.CudaUnavailable) as e:
        cuda.check_toolchain(target)
    assert "has no cuBLAS (libcublas)" in e.value.message and "cannot find -lcublas" in e.value.message
    assert "libcublas-dev" in e.value.fix and "llama-server on PATH" in e.value.fix
