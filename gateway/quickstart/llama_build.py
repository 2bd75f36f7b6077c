"""Building llama.cpp's `llama-server` from source, once per machine and version (the quickstart and the tests
share it).

The source is the llama.cpp vendored in the `llama-cpp-python` sdist from PyPI (`vendor/llama.cpp`; for
0.3.36 ggml-org/llama.cpp@0c1e57098), fetched with pip (PyPI is reachable where the hub may not be). Only the
`llama-server` target is built: static libraries, no web UI, no SSL, nothing downloaded at build
time (~8 min on 2 cores). It is installed into <cache>/llama-server-<VERSION>/ (the cache is
~/.cache/llm-gateway, or LLM_GATEWAY_CACHE_DIR). A marker file written last records the recipe, so a
half-finished or differently configured build is redone; a lock file serialises concurrent builds.

With a `CudaTarget` (cuda.py: a GPU seen by NVML and a CUDA toolkit here) the same build adds
`-DGGML_CUDA=ON` for that GPU's architecture alone (~20 min on 2 cores), into
<cache>/llama-server-<VERSION>-<cuda tag>/ (cuda11.8-sm75). Its binary links the toolkit's libcudart and
libcublas where they are (the build's RUNPATH) and the driver's libcuda; where CUDA finds no device it runs
on the CPU.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.quickstart.cuda import CudaTarget

BUILD_MINUTES = "about 8 minutes on 2 cores, less on more"
TOOLS = ("cmake", "g++", "make")


def cache_root() -> Path:
    return Path(os.environ.get("LLM_GATEWAY_CACHE_DIR") or Path.home() / ".cache" / "llm-gateway")


LLAMA_CPP_PYTHON_VERSION = "0.3.36"   # vendors ggml-org/llama.cpp@0c1e57098 (its CHANGELOG)

# CPU only; nothing fetched at build time: the web UI is neither built (npm) nor downloaded (HF bucket),
# no BoringSSL/LibreSSL/OpenMP fetch, no SSL at all (the tests talk plain HTTP on loopback). Static
# libraries, so the installed binary needs only system libraries (libc, libstdc++, libgomp).
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_CCACHE=OFF",
    "-DGGML_OPENMP_FETCH=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_BORINGSSL=OFF",
    "-DLLAMA_BUILD_LIBRESSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
)
JOB_MEMORY = 2 << 30   # a compiler job's worst case here (nvcc on the flash-attention kernels)


def build_jobs() -> int:
    """One compiler job per core, as many as the memory holds."""
    from gateway.quickstart.models import available_memory

    return max(1, min(os.cpu_count() or 1, available_memory() // JOB_MEMORY))


class LlamaServerUnavailable(RuntimeError):
    """The binary could not be built here (the reason is in the message and the build log)."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def _log(msg: str) -> None:
    print(f"[llama-server build] {msg}", file=sys.stderr, flush=True)


def install_dir(version: str = LLAMA_CPP_PYTHON_VERSION, cuda: CudaTarget | None = None) -> Path:
    return cache_root() / (f"llama-server-{version}-{cuda.tag}" if cuda else f"llama-server-{version}")


def _recipe(version: str, cuda: CudaTarget | None = None) -> dict[str, Any]:
    flags = [*CMAKE_FLAGS, *(cuda.cmake_flags() if cuda else ())]
    return {"llama_cpp_python": version, "cmake_flags": flags, "target": "llama-server"}


def installed(version: str = LLAMA_CPP_PYTHON_VERSION, cuda: CudaTarget | None = None) -> Path | None:
    """The cached build of `version` (for `cuda`, else the CPU one), if complete; a CUDA build whose
    toolkit libraries are gone (ldd: not found) is not."""
    dest = install_dir(version, cuda)
    binary, marker = dest / "llama-server", dest / "BUILD-COMPLETE.json"
    try:
        if not binary.is_file() or json.loads(marker.read_text()).get("recipe") != _recipe(version, cuda):
            return None
    except (OSError, ValueError):
        return None
    return None if cuda and unresolved_libraries(binary) else binary


def unresolved_libraries(binary: Path) -> list[str]:
    try:
        ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    except OSError:  # no ldd: the binary's own start will say what is missing
        return []
    return re.findall(r"^\s*(\S+) => not found", ldd, re.M)


def ensure_llama_server(version: str = LLAMA_CPP_PYTHON_VERSION,
                        toolchain: Callable[[Path], None] | None = None,
                        cuda: CudaTarget | None = None, host_cxx: str | None = None) -> Path:
    """The path of the cached `llama-server`; builds it (once per machine, version and CUDA target) if
    missing. `toolchain(log)` may install missing build tools first (the tests' CI does, with apt-get);
    `host_cxx` is the host compiler nvcc is to use (cuda.check_toolchain)."""
    found = installed(version, cuda)
    if found is not None:
        return found
    cache_root().mkdir(parents=True, exist_ok=True)
    dest = install_dir(version, cuda)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        if installed(version, cuda) is None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log(f"another process is building {dest.name}; waiting for its lock")
                fcntl.flock(lock, fcntl.LOCK_EX)
        if installed(version, cuda) is None:   # re-check: whoever held the lock may have finished it
            compilers = () if cuda is None else (
                f"-DCMAKE_CUDA_COMPILER={cuda.nvcc}",
                *((f"-DCMAKE_CUDA_HOST_COMPILER={host_cxx}",) if host_cxx else ()))
            _build(version, _recipe(version, cuda), compilers, dest, toolchain)
    found = installed(version, cuda)
    if found is None:
        raise LlamaServerUnavailable(f"{dest / 'llama-server'} was built but cannot find its libraries: "
                                     f"{', '.join(unresolved_libraries(dest / 'llama-server'))}")
    return found


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(argv: list[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None,
         progress: bool = False) -> None:
    """Runs argv appending its output to `log`; with progress, echoes cmake's "[ NN%]" every 10%."""
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        p = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        assert p.stdout is not None
        shown = -10
        for line in p.stdout:
            f.write(line)
            if progress and (m := re.match(rb"\[\s*(\d+)%\]", line)) and int(m[1]) >= shown + 10:
                shown = int(m[1])
                _log(f"{shown}% {line.decode(errors='replace').strip()[7:][:100]}")
        rc = p.wait()
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise LlamaServerUnavailable(f"{' '.join(argv[:3])}… failed with exit code {rc} (log: {log}):\n"
                                     f"{tail}")


def _build(version: str, recipe: dict[str, Any], compilers: tuple[str, ...], dest: Path,
           toolchain: Callable[[Path], None] | None) -> None:
    from gateway.quickstart.cuda import BUILD_MINUTES as CUDA_MINUTES

    t0 = time.monotonic()
    binary, marker = dest / "llama-server", dest / "BUILD-COMPLETE.json"
    log = dest.with_name(dest.name + "-build.log")
    log.write_text("")
    work = dest.with_name(dest.name + "-build")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    work.mkdir(parents=True)
    what = "llama-server with CUDA" if compilers else "llama-server"
    _log(f"building {what} from llama-cpp-python {version} ({CUDA_MINUTES if compilers else BUILD_MINUTES}); "
         f"log: {log}")
    if toolchain is not None:
        toolchain(log)
    if missing := missing_tools():
        raise LlamaServerUnavailable(f"building llama-server needs {', '.join(missing)}, not found on PATH",
                                     fix="install a C++ toolchain and CMake (Debian/Ubuntu: sudo apt-get install "
                                         "cmake g++ make; macOS: xcode-select --install && brew install cmake), "
                                         "or give the path of a llama-server you have with --llama-server")

    _log("downloading the llama-cpp-python sdist from PyPI")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          f"llama-cpp-python=={version}", "-d", str(work / "sdist")], log)
    sdists = list((work / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if len(sdists) != 1:
        raise LlamaServerUnavailable(f"pip download produced {sdists}, expected one sdist (log: {log})")
    _log(f"extracting vendor/llama.cpp from {sdists[0].name}")
    prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/"
    with tarfile.open(sdists[0]) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix + "vendor/llama.cpp/") or m.name == prefix + "CHANGELOG.md"]
        tar.extractall(work, members=members, filter="data")
    src = work / prefix / "vendor" / "llama.cpp"
    changelog = (work / prefix / "CHANGELOG.md").read_text(errors="replace")
    m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", changelog)
    commit = m[1] if m else "unknown"

    build = work / "build"
    # Stop llama.cpp's build-info from asking git about some enclosing repository.
    env = {"GIT_CEILING_DIRECTORIES": str(work)}
    _log(f"configuring llama.cpp@{commit} with cmake")
    _run(["cmake", "-S", str(src), "-B", str(build), *recipe["cmake_flags"], *compilers,
          f"-DLLAMA_BUILD_COMMIT={commit}"], log, env=env)
    jobs = build_jobs()
    _log(f"compiling the llama-server target with -j{jobs}")
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)], log, env=env,
         progress=True)

    built = build / "bin" / "llama-server"
    if not built.is_file():
        raise LlamaServerUnavailable(f"the build finished without {built} (log: {log})")
    staging = dest.with_name(dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copy2(built, staging / "llama-server")
    # A static build needs no library of its own; if some configuration produced shared ones anyway, copy
    # those the binary resolves into the build tree and point the binary at them.
    ldd = subprocess.run(["ldd", str(built)], capture_output=True, text=True, check=False).stdout
    own = [Path(p) for p in re.findall(r"=>\s*(\S+)", ldd) if p.startswith(str(work))]
    for lib in own:
        shutil.copy2(lib, staging / lib.name)
    if own:
        if shutil.which("patchelf") is None:
            raise LlamaServerUnavailable(f"llama-server links build-tree libraries {own}; install patchelf")
        subprocess.run(["patchelf", "--set-rpath", "$ORIGIN", str(staging / "llama-server")], check=True)
    out = subprocess.run([str(staging / "llama-server"), "--version"], capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0:
        raise LlamaServerUnavailable(f"built llama-server does not run: {out.stdout}{out.stderr}")
    staging.rename(dest)
    seconds = round(time.monotonic() - t0)
    marker.write_text(json.dumps({"recipe": recipe, "llama_cpp_commit": commit,
                                  "version_output": (out.stdout + out.stderr).strip(),
                                  "build_seconds": seconds}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    _log(f"installed {binary} in {seconds} s")
