"""The CUDA build of llama-server, for a machine where NVML sees a GPU: the CUDA compiler found here, the GPU
architecture to compile for, and the checks that say in seconds (not after a 20-minute build) why a CUDA build
cannot be made here or would not run.

- nvcc: $CUDACXX (CMake's own variable), `nvcc` on PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin.
- The host compiler: $CUDAHOSTCXX (CMake's own variable), else nvcc's default (NVIDIA's: gcc on PATH;
  Debian's nvcc: the newest g++-N it supports). Each CUDA release accepts only some GCC versions ("unsupported
  GNU version"), so a one-line kernel is compiled with it, and linked with cuBLAS (which a toolkit assembled
  from parts may lack), before a build starts.
- The architecture: the GPU's compute capability (NVML), 8.6 -> "86". A GPU newer than the toolkit gets the
  newest PTX this nvcc makes ("90-virtual"), which the driver compiles when the binary loads.
- The driver: a toolkit of a newer CUDA major than the driver runs (or, for PTX, any newer release) builds a
  binary that cannot use the GPU; that is refused before building.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BUILD_MINUTES = "about 20 minutes on 2 cores for one GPU architecture, less on more cores"
STANDARD_HOME = "/usr/local/cuda"   # where NVIDIA's installers put the toolkit (a link to cuda-X.Y)
PROGRAM = "__global__ void k(float *x) { x[threadIdx.x] *= 2.0f; }\nint main() { return 0; }\n"


class CudaUnavailable(Exception):
    """Why the CUDA build cannot be made or used here, and the fix."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    capability: tuple[int, int]   # compute capability, (8, 6)
    driver_cuda: int              # the newest CUDA the driver runs: 12040 is 12.4


@dataclass(frozen=True, slots=True)
class CudaTarget:
    nvcc: Path
    release: tuple[int, int]      # the toolkit's CUDA release, (11, 8)
    arch: str                     # CMAKE_CUDA_ARCHITECTURES: "86", or "90-virtual" (PTX)

    def cmake_flags(self) -> tuple[str, ...]:
        """What the build is (its recipe); the compilers' paths are not: any nvcc of this release will do."""
        return ("-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={self.arch}")

    @property
    def tag(self) -> str:
        """The build's name in the cache: release and architecture (cuda11.8-sm75, cuda12.4-compute90)."""
        arch = f"compute{self.arch.split('-')[0]}" if self.arch.endswith("-virtual") else f"sm{self.arch}"
        return f"cuda{self.release[0]}.{self.release[1]}-{arch}"


def read_gpu(index: int = 0) -> Gpu | None:
    """GPU `index` as NVML describes it; None without nvidia-ml-py, a driver or the device."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            driver = int(pynvml.nvmlSystemGetCudaDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # ImportError, NVMLError, an old binding without these calls: no GPU to build for
        return None
    return Gpu(name.decode() if isinstance(name, bytes) else str(name), (int(major), int(minor)), driver)


def find_nvcc() -> Path | None:
    given = os.environ.get("CUDACXX")
    if given:
        return Path(given) if os.access(given, os.X_OK) else None
    on_path = shutil.which("nvcc")
    if on_path:
        return Path(on_path)
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), STANDARD_HOME]
    for home in filter(None, homes):
        nvcc = Path(home) / "bin" / "nvcc"
        if os.access(nvcc, os.X_OK):
            return nvcc
    return None


def _nvcc(nvcc: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([str(nvcc), *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:  # not a program here, or hung
        raise CudaUnavailable(f"{nvcc} {' '.join(args[:1])} cannot run: {exc}",
                              fix="reinstall the CUDA toolkit, or point CUDACXX at a working nvcc") from None


def release(nvcc: Path) -> tuple[int, int]:
    out = _nvcc(nvcc, "--version")
    m = re.search(r"release (\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or not m:
        raise CudaUnavailable(f"{nvcc} --version did not say its release: {(out.stdout + out.stderr).strip()[:300]}",
                              fix="reinstall the CUDA toolkit, or point CUDACXX at a working nvcc")
    return int(m[1]), int(m[2])


def choose_arch(nvcc: Path, capability: tuple[int, int]) -> str:
    """CMAKE_CUDA_ARCHITECTURES for a GPU of `capability` with this nvcc."""
    cc = capability[0] * 10 + capability[1]
    real = {int(n) for n in re.findall(r"\bsm_(\d+)\b", _nvcc(nvcc, "--list-gpu-code").stdout)}
    virtual = {int(n) for n in re.findall(r"\bcompute_(\d+)\b", _nvcc(nvcc, "--list-gpu-arch").stdout)}
    if not real and not virtual:
        raise CudaUnavailable(f"{nvcc} does not list the GPU architectures it compiles for (--list-gpu-code)",
                              fix="install a newer CUDA toolkit")
    if cc in real:
        return str(cc)
    older = [v for v in virtual if v <= cc]
    if not older:
        raise CudaUnavailable(f"this CUDA toolkit no longer compiles for compute capability "
                              f"{capability[0]}.{capability[1]} (its oldest is {min(virtual or real)})",
                              fix="install an older CUDA toolkit that supports this GPU, or put a llama-server "
                                  "built for it on PATH")
    return f"{max(older)}-virtual"


def check_driver(gpu: Gpu, toolkit: tuple[int, int], arch: str) -> None:
    driver = (gpu.driver_cuda // 1000, gpu.driver_cuda % 1000 // 10)
    # Within one major, a binary of a newer minor runs on an older driver; PTX is compiled by the driver,
    # which must then be at least the toolkit's release.
    too_new = toolkit[0] > driver[0] or (arch.endswith("-virtual") and toolkit > driver)
    if too_new:
        raise CudaUnavailable(
            f"the NVIDIA driver runs CUDA up to {driver[0]}.{driver[1]}, and the toolkit here is "
            f"{toolkit[0]}.{toolkit[1]}: a build with it could not use the GPU",
            fix=f"update the NVIDIA driver, or point CUDACXX at a CUDA {driver[0]}.x nvcc")


def _builds(nvcc: Path, host: str | None, arch: str) -> str | None:
    """None if nvcc (with this host compiler) compiles a kernel for `arch` and links it with cuBLAS, as
    llama.cpp's CUDA backend is linked; else what it said."""
    number = arch.split("-")[0]
    gencode = f"-arch=compute_{number}" if arch.endswith("-virtual") else f"-arch=sm_{number}"
    with tempfile.TemporaryDirectory(prefix="llm-gateway-nvcc-") as d:
        (Path(d) / "k.cu").write_text(PROGRAM)
        args = [gencode, str(Path(d) / "k.cu"), "-o", str(Path(d) / "k"), "-lcublas"]
        out = _nvcc(nvcc, *(["-ccbin", host] if host else []), *args, timeout=300)
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()


def check_toolchain(t: CudaTarget) -> str | None:
    """The host compiler for nvcc (None: its default), proven with the rest of the toolchain by building a
    kernel program linked with cuBLAS (about a second)."""
    nvcc, toolkit, arch = t.nvcc, t.release, t.arch
    given = os.environ.get("CUDAHOSTCXX")
    said = _builds(nvcc, given, arch)
    if said is None:
        return given
    first = "\n".join(said.splitlines()[:6])
    if "-lcublas" in said:
        raise CudaUnavailable(
            f"the CUDA toolkit of {nvcc} has no cuBLAS (libcublas), which llama.cpp's CUDA backend links:\n{first}",
            fix="install the toolkit's cuBLAS development files (NVIDIA's packages: libcublas-dev-X-Y; conda: "
                "libcublas-dev) or a complete CUDA toolkit; or put a CUDA llama-server on PATH")
    fix = (f"CUDA {toolkit[0]}.{toolkit[1]} accepts only some GCC versions (NVIDIA's installation guide lists "
           f"them): install one (Debian/Ubuntu: sudo apt-get install g++-N) and set CUDAHOSTCXX=g++-N"
           if "unsupported" in said else "repair the CUDA toolkit or the host compiler (the error above)")
    raise CudaUnavailable(
        f"{nvcc} cannot compile a kernel with {'CUDAHOSTCXX=' + given if given else 'its default host compiler'}:"
        f"\n{first}", fix=f"{fix}; or put a CUDA llama-server on PATH")


def target_for(gpu: Gpu) -> CudaTarget:
    """The CUDA build for `gpu` with the toolkit found here (a few nvcc queries, well under a second);
    CudaUnavailable says why there is none. The host compiler is checked only before a build
    (check_toolchain), not when the build is in the cache already."""
    nvcc = find_nvcc()
    if nvcc is None and os.environ.get("CUDACXX"):
        raise CudaUnavailable(f"CUDACXX={os.environ['CUDACXX']} is not an executable file",
                              fix="point CUDACXX at the toolkit's nvcc, or unset it to look on PATH")
    if nvcc is None:
        raise CudaUnavailable(
            "no CUDA compiler (nvcc) found: not in CUDACXX, on PATH, in CUDA_HOME or /usr/local/cuda",
            fix="install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads, or Debian/Ubuntu's "
                "nvidia-cuda-toolkit) so the gateway builds llama-server for the GPU, or put a CUDA llama-server "
                "on PATH (llama.cpp's releases) or give it with --llama-server")
    toolkit = release(nvcc)
    arch = choose_arch(nvcc, gpu.capability)
    check_driver(gpu, toolkit, arch)
    return CudaTarget(nvcc, toolkit, arch)
