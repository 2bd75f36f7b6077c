"""Where the quickstart's `llama-server` comes from: the path given (`--llama-server`), PATH, else the cache of
an earlier build or a build from source (llama_build.py), its duration said before it starts. When NVML sees a
GPU and a CUDA toolkit is here (cuda.py), that build is the CUDA one for this GPU; without a toolkit the reason
is said and the CPU build is used."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gateway.quickstart import QuickstartError, cuda, llama_build

NO_TOOLS_FIX = ("install llama.cpp (its releases, `brew install llama.cpp`) and put llama-server on PATH, or "
                "install a C++ toolchain and CMake so the gateway can build it (Debian/Ubuntu: sudo apt-get "
                "install cmake g++ make; macOS: xcode-select --install && brew install cmake)")


def find_llama_server(given: str | None, say: Callable[[str], None], gpu: cuda.Gpu | None = None) -> Path:
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise QuickstartError(f"--llama-server {given}: no executable file there",
                                  fix="give the path of a llama-server binary, or leave the option out")
        say(f"llama-server: {path} (given)")
        return path
    on_path = shutil.which("llama-server")
    if on_path:
        say(f"llama-server: {on_path} (on PATH)")
        return Path(on_path)
    if gpu is not None and (built := cuda_build(gpu, say)) is not None:
        return built
    cached = llama_build.installed()
    if cached is not None:
        say(f"llama-server: {cached} (built earlier)")
        return cached
    if missing := llama_build.missing_tools():  # say so now, not after the sdist download
        raise QuickstartError(f"no llama-server on PATH or in {llama_build.cache_root()}, and building one needs "
                              f"{', '.join(missing)}, not found", fix=NO_TOOLS_FIX)
    say(f"llama-server: none on PATH or in the cache; building it from the llama.cpp sources in the "
        f"llama-cpp-python {llama_build.LLAMA_CPP_PYTHON_VERSION} sdist ({llama_build.BUILD_MINUTES}; "
        f"only once: later starts reuse it)")
    try:
        return llama_build.ensure_llama_server()
    except llama_build.LlamaServerUnavailable as exc:
        raise QuickstartError(f"building llama-server failed: {str(exc).splitlines()[0]}",
                              fix=exc.fix or "read the build log named above; or put a llama-server on PATH") from None


def cuda_build(gpu: cuda.Gpu, say: Callable[[str], None]) -> Path | None:
    """The CUDA llama-server for `gpu`: cached, else built now; None (the reason said) when it cannot be made
    here, so the CPU build is used."""
    where = f"{gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]})"
    try:
        target = cuda.target_for(gpu)
        cached = llama_build.installed(cuda=target)
        if cached is not None:
            say(f"llama-server: {cached} (built earlier with CUDA for {where})")
            return cached
        if missing := llama_build.missing_tools():
            raise cuda.CudaUnavailable(f"building it needs {', '.join(missing)}, not found", fix=NO_TOOLS_FIX)
        host = cuda.check_toolchain(target)
    except cuda.CudaUnavailable as exc:
        say(f"no CUDA build of llama-server for {where}: {exc.message}\n  fix: {exc.fix}")
        return None
    say(f"llama-server: none on PATH or in the cache; building it with CUDA {target.release[0]}."
        f"{target.release[1]} ({target.nvcc}{', host compiler ' + host if host else ''}) for {where} from the "
        f"llama.cpp sources in the llama-cpp-python {llama_build.LLAMA_CPP_PYTHON_VERSION} sdist "
        f"({cuda.BUILD_MINUTES}; only once: later starts reuse it)")
    try:
        return llama_build.ensure_llama_server(cuda=target, host_cxx=host)
    except llama_build.LlamaServerUnavailable as exc:
        raise QuickstartError(f"building llama-server with CUDA failed: {str(exc).splitlines()[0]}",
                              fix=exc.fix or "read the build log named above; or put a CUDA llama-server on PATH "
                                             "or give one with --llama-server") from None
