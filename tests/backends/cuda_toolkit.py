"""A real CUDA toolkit for the tests, without a GPU and without touching the system: Debian bookworm's
`nvidia-cuda-toolkit` (CUDA 11.8, in the non-free component this machine's apt sources leave out) and
`g++-11` (CUDA 11.8 accepts GCC up to 11; bookworm's g++ is 12), downloaded with apt-get into a private
state and unpacked with `dpkg -x` under ~/.cache/llm-gateway/cuda-toolkit-<VERSION>/ (~5 GB, about a minute
on a first run; a marker written last keys it by version).

Nothing is installed system-wide: the packages bring the driver's user-space libraries (libcuda1,
libnvidia-ml1), which would change what NVML answers to the no-GPU tests. In the unpacked tree they stand
for what a machine with the NVIDIA driver and no visible device has: `libcuda.so.1` is linked where the
driver package's alternatives would put it, so the CUDA llama-server starts, finds no device, and runs on the
CPU.

`ensure_cuda_llama_server()` builds the quickstart's CUDA llama-server (gateway/quickstart/llama_build.py)
with this toolkit for compute capability 7.5, the one the tests' stand-in NVML reports.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.quickstart import llama_build
from gateway.quickstart.cuda import CudaTarget, check_toolchain, release
from gateway.quickstart.llama_build import LlamaServerUnavailable, _run, cache_root

DEBIAN_TOOLKIT = "11.8.89~11.8.0-5~deb12u1"   # bookworm non-free's nvidia-cuda-toolkit
PACKAGES = (f"nvidia-cuda-toolkit={DEBIAN_TOOLKIT}", "g++-11")
ARCH = "75"                                    # what tests/doubles/nvml (the stand-in) says GPU 0 is: 7.5
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class CudaToolkitUnavailable(LlamaServerUnavailable):
    """The toolkit cannot be had here (not Debian bookworm, no apt-get, no archive)."""


@dataclass(frozen=True, slots=True)
class Toolkit:
    root: Path        # the unpacked tree: root/usr/...
    nvcc: Path
    host_cxx: Path


def toolkit_dir() -> Path:
    return cache_root() / f"cuda-toolkit-{DEBIAN_TOOLKIT.replace('~', '_')}"


def _toolkit(root: Path) -> Toolkit:
    return Toolkit(root, root / "usr/lib/nvidia-cuda-toolkit/bin/nvcc", root / "usr/bin/g++-11")


def ensure_toolkit() -> Toolkit:
    dest = toolkit_dir()
    marker = dest / "UNPACKED.json"
    if marker.is_file():
        return _toolkit(dest)
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.is_file():
            _unpack(dest, marker)
    return _toolkit(dest)


def _apt_mirror() -> str:
    """The Debian archive this machine's apt uses (its first `URIs:` or `deb` line for the main archive)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            uris = words[1:] if words[:1] == ["URIs:"] else [w for w in words[1:] if "://" in w][:1] \
                if words[:1] == ["deb"] else []
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _unpack(dest: Path, marker: Path) -> None:
    t0 = time.monotonic()
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None or not Path(KEYRING).is_file():
        raise CudaToolkitUnavailable("the test CUDA toolkit comes from Debian's archive: needs apt-get, dpkg "
                                     f"and {KEYRING}")
    work = dest.with_name(dest.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    for d in ("lists/partial", "cache", "debs/partial"):
        (work / d).mkdir(parents=True)
    log = dest.with_name(dest.name + ".log")
    log.write_text("")
    (work / "sources.list").write_text(f"deb [signed-by={KEYRING}] {_apt_mirror()} bookworm main contrib non-free\n")
    # A private package list and download cache: the system's apt state is read (what is installed), never
    # written.
    opts = [f"-oDir::Etc::sourcelist={work / 'sources.list'}", "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={work / 'lists'}", f"-oDir::Cache={work / 'cache'}",
            f"-oDir::Cache::archives={work / 'debs'}", "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root"]
    print(f"cuda toolkit: downloading {' '.join(PACKAGES)} from Debian non-free (~1.6 GB); log {log}", flush=True)
    _run(["apt-get", *opts, "update", "-q"], log)
    _run(["apt-get", *opts, "install", "-q", "-y", "--download-only", "--no-install-recommends", *PACKAGES], log)
    debs = sorted((work / "debs").glob("*.deb"))
    if not debs:
        raise CudaToolkitUnavailable(f"apt-get downloaded no packages (log: {log})")
    staging = work / "root"
    print(f"cuda toolkit: unpacking {len(debs)} packages", flush=True)
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(staging)], log)
    lib = staging / "usr/lib/x86_64-linux-gnu"
    driver = sorted((lib / "nvidia/current").glob("libcuda.so.*.*"))
    if driver:  # what libcuda1's alternatives would link on an installed system
        (lib / "libcuda.so.1").symlink_to(driver[-1].relative_to(lib))
    _write_profile(staging, dest)
    # The package's /usr/bin/nvcc execs /usr/lib/nvidia-cuda-toolkit/bin/nvcc; CMake's toolkit search runs it
    wrapper = staging / "usr/bin/nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec "{dest}/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$@"\n')
    staging.rename(dest)
    marker.write_text(json.dumps({"packages": [d.name for d in debs], "seconds": round(time.monotonic() - t0)},
                                 indent=2))
    shutil.rmtree(work, ignore_errors=True)


def _write_profile(staging: Path, dest: Path) -> None:
    """nvcc reads nvcc.profile beside it (the package's is a link to /etc/nvcc.profile, for /usr): this one
    points the toolkit's paths at the unpacked tree, where it will be once renamed to `dest`."""
    usr = dest / "usr"
    bindir = usr / "lib/nvidia-cuda-toolkit/bin"
    profile = staging / "usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile"
    profile.unlink(missing_ok=True)
    profile.write_text(
        f"TOP = {usr}\n"
        f"NVVMIR_LIBRARY_DIR = {usr}/lib/cuda/nvvm/libdevice\n"   # CMake wants the path to end nvvm/libdevice
        f"PATH += {bindir}:{usr}/bin:\n"
        f'INCLUDES += "-I{usr}/include" $(_SPACE_)\n'
        f"LIBRARIES =+ $(_SPACE_) -L{usr}/lib/x86_64-linux-gnu/stubs -L{usr}/lib/x86_64-linux-gnu\n")


def target(tk: Toolkit) -> CudaTarget:
    return CudaTarget(tk.nvcc, release(tk.nvcc), ARCH)


def ensure_cuda_llama_server() -> Path:
    """The quickstart's CUDA build for compute capability 7.5, made with the unpacked toolkit (~20 min on 2
    cores, once per machine and version)."""
    from tests.backends.llamacpp import _ensure_toolchain

    tk = ensure_toolkit()
    t = target(tk)
    found = llama_build.installed(cuda=t)
    if found is not None:
        return found
    # CMake's own variable for a toolkit outside the usual places (the quickstart honours it as users set it)
    os.environ["CUDAToolkit_ROOT"] = str(tk.root / "usr")
    # the quickstart's check, as on a user's machine: nvcc's default (Debian's picks its g++-11) or CUDAHOSTCXX
    return llama_build.ensure_llama_server(toolchain=_ensure_toolchain, cuda=t, host_cxx=check_toolchain(t))

