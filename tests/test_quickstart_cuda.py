"""The quickstart's CUDA build of llama-server (gateway/quickstart/cuda.py, llama_build.py), with a real CUDA
toolkit and no GPU: Debian's CUDA 11.8, unpacked under the cache (tests/backends/cuda_toolkit.py), builds the
same recipe a GPU box gets, for compute capability 7.5. The GPU itself is the one thing that is not here: a
stand-in NVML (tests/doubles/nvml) says there is one, the CUDA runtime then finds no device, and the binary runs
on the CPU. So these tests check the build, the choice between the CUDA and CPU builds and every refusal with
its reason (against the real nvcc), and end to end that `serve --quickstart` on a "GPU machine" launches the
CUDA build and streams an answer. That it computes on a GPU cannot be checked here."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.quickstart import cuda, llama_build
from gateway.quickstart.binary import find_llama_server
from gateway.quickstart.cuda import CudaUnavailable, Gpu
from tests.backends.availability import unavailable
from tests.backends.cuda_toolkit import Toolkit
from tests.procs import STAND_IN_NVML, Spawner
from tests.test_quickstart import said, stream

pytestmark = pytest.mark.llamacpp
T4 = Gpu("Stand-in T4", (7, 5), 12040)   # what the cached build is for, with a CUDA 12.4 driver


@pytest.fixture(scope="module")
def toolkit() -> Toolkit:
    from tests.backends import cuda_toolkit
    try:
        return cuda_toolkit.ensure_toolkit()
    except cuda_toolkit.CudaToolkitUnavailable as exc:
        unavailable("CUDA toolkit", exc)


@pytest.fixture(scope="module")
def cuda_binary(toolkit: Toolkit, llama_binary: Path) -> Path:
    from tests.backends import cuda_toolkit
    try:
        return cuda_toolkit.ensure_cuda_llama_server()
    except llama_build.LlamaServerUnavailable as exc:
        unavailable("llama-server (CUDA)", f"it could not be built on this machine: {exc}")


@pytest.fixture
def nvcc_env(toolkit: Toolkit, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process finds the unpacked toolkit's nvcc as a user's CUDACXX would name it, and no llama-server
    on PATH."""
    nvcc = toolkit.nvcc
    monkeypatch.setenv("CUDACXX", str(nvcc))
    monkeypatch.delenv("CUDAHOSTCXX", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    yield nvcc


def test_the_cuda_build_links_cuda_and_runs_without_a_device(cuda_binary: Path, llama_binary: Path,
                                                            toolkit: Toolkit) -> None:
    marker = json.loads((cuda_binary.parent / "BUILD-COMPLETE.json").read_text())
    assert {"-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=75"} <= set(marker["recipe"]["cmake_flags"])
    assert cuda_binary.parent.name == f"llama-server-{llama_build.LLAMA_CPP_PYTHON_VERSION}-cuda11.8-sm75"
    ldd = subprocess.run(["ldd", str(cuda_binary)], capture_output=True, text=True, check=True).stdout
    root = str(toolkit.root)
    for lib in ("libcudart.so.11.0", "libcublas.so.11", "libcuda.so.1"):
        assert any(line.strip().startswith(lib) and root in line for line in ldd.splitlines()), (lib, ldd)
    assert "not found" not in ldd
    out = subprocess.run([str(cuda_binary), "--list-devices"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # its CUDA backend initialises, finds no device, and says so; the CPU build has no CUDA backend at all
    assert "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device" in out.stderr, out.stderr
    assert "Available devices:\n  (none)" in out.stdout
    cpu = subprocess.run([str(llama_binary), "--list-devices"], capture_output=True, text=True, timeout=60)
    assert cpu.returncode == 0 and "ggml_cuda_init" not in cpu.stdout + cpu.stderr


def test_a_gpu_with_a_toolkit_gets_the_cuda_build(cuda_binary: Path, nvcc_env: Path) -> None:
    lines, say = said()
    assert find_llama_server(None, say, T4) == cuda_binary
    assert "built earlier with CUDA for Stand-in T4 (compute capability 7.5)" in lines[0]
    # without a GPU, the CPU build, as before
    lines, say = said()
    assert find_llama_server(None, say, None) == llama_build.installed()


def test_the_architecture_follows_the_gpu_and_this_nvcc(nvcc_env: Path) -> None:
    assert cuda.choose_arch(nvcc_env, (8, 6)) == "86"
    assert cuda.choose_arch(nvcc_env, (7, 5)) == "75"
    # a GPU newer than CUDA 11.8 knows: the newest PTX it makes, compiled by the driver at load
    assert cuda.choose_arch(nvcc_env, (12, 0)) == "90-virtual"
    assert cuda.target_for(Gpu("new", (12, 0), 12080)).tag == "cuda11.8-compute90"
    with pytest.raises(CudaUnavailable) as e:  # one CUDA 11.8 no longer compiles for
        cuda.choose_arch(nvcc_env, (3, 0))
    assert "no longer compiles for compute capability 3.0" in e.value.message and "older CUDA" in e.value.fix


def test_each_reason_for_no_cuda_build_is_said_and_the_cpu_build_used(cuda_binary: Path, nvcc_env: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    cpu = llama_build.installed()

    def cpu_with(gpu: Gpu, reason: str, fix: str) -> None:
        lines, say = said()
        assert find_llama_server(None, say, gpu) == cpu
        text = "\n".join(lines)
        assert reason in text and fix in text.partition("fix: ")[2] and "built earlier" in lines[-1], text

    # the driver runs CUDA 10.2: a CUDA 11.8 build could not use the GPU
    cpu_with(Gpu("old driver", (7, 5), 10020), "the NVIDIA driver runs CUDA up to 10.2, and the toolkit here is 11.8",
             "update the NVIDIA driver")
    # PTX for a GPU newer than the toolkit needs a driver at least as new as the toolkit
    cpu_with(Gpu("new GPU", (12, 0), 11040), "runs CUDA up to 11.4", "point CUDACXX at a CUDA 11.x nvcc")
    # a GPU with no build cached: a host compiler this CUDA refuses, then no build tools; each said in seconds,
    # before anything is downloaded
    a100 = Gpu("A100", (8, 0), 12040)
    monkeypatch.setenv("CUDAHOSTCXX", "/usr/bin/g++")   # GCC 12; CUDA 11.8 takes up to 11
    cpu_with(a100, "cannot compile a kernel with CUDAHOSTCXX=/usr/bin/g++", "set CUDAHOSTCXX")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cpu_with(a100, "building it needs cmake", "apt-get install cmake g++ make")
    assert not llama_build.install_dir(cuda=cuda.target_for(a100)).exists()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    # no nvcc anywhere
    monkeypatch.delenv("CUDACXX")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(cuda, "STANDARD_HOME", str(tmp_path / "usr-local-cuda"))  # this machine has a CUDA 13 there
    cpu_with(T4, "no CUDA compiler (nvcc) found", "install the CUDA toolkit")
    # CUDACXX naming no program, or one that cannot run
    monkeypatch.setenv("CUDACXX", str(tmp_path / "nvcc"))
    cpu_with(T4, f"CUDACXX={tmp_path / 'nvcc'} is not an executable file", "point CUDACXX at the toolkit's nvcc")
    (tmp_path / "nvcc").write_text("not a program\n")
    (tmp_path / "nvcc").chmod(0o755)
    cpu_with(T4, f"{tmp_path / 'nvcc'} --version cannot run", "point CUDACXX at a working nvcc")
    monkeypatch.delenv("CUDACXX")
    # CUDA_HOME is where it looks next
    monkeypatch.setenv("CUDA_HOME", str(nvcc_env.parent.parent))
    assert cuda.find_nvcc() == nvcc_env


def test_the_host_compiler_is_checked_before_a_build(nvcc_env: Path, toolkit: Toolkit,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = cuda.CudaTarget(nvcc_env, (11, 8), "75")
    gxx = subprocess.run(["g++", "-dumpversion"], capture_output=True, text=True, check=True).stdout.strip()
    assert int(gxx.split(".")[0]) > 11  # this machine's g++ is newer than CUDA 11.8 accepts
    monkeypatch.setenv("CUDAHOSTCXX", "/usr/bin/g++")
    with pytest.raises(CudaUnavailable) as e:
        cuda.check_toolchain(target)
    assert "unsupported GNU version" in e.value.message and "CUDAHOSTCXX" in e.value.fix
    # not set: nvcc's default, which for Debian's nvcc is the newest g++-N it supports (its g++ wrapper)
    monkeypatch.delenv("CUDAHOSTCXX")
    assert cuda.check_toolchain(target) is None
    monkeypatch.setenv("CUDAHOSTCXX", str(toolkit.host_cxx))
    assert cuda.check_toolchain(target) == str(toolkit.host_cxx)


def test_serve_quickstart_on_a_gpu_machine_launches_the_cuda_build(spawn: Spawner, cuda_binary: Path,
                                                                    nvcc_env: Path, tmp_path: Path) -> None:
    from tests.backends.llamacpp import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "Tiny-Chat.gguf")
    env = {"PYTHONPATH": f"{STAND_IN_NVML}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "STAND_IN_FREE": str(16 << 30), "STAND_IN_GPU_NAME": "Stand-in T4", "STAND_IN_CAPABILITY": "7.5",
           "STAND_IN_DRIVER_CUDA": "12040", "CUDACXX": str(nvcc_env), "PATH": "/usr/bin:/bin",
           "GATEWAY_AUTODISCOVER__PORTS": "[]"}
    gw = spawn.gateway(None, extra=("--quickstart", "--model", str(gguf)), env=env)
    assert stream(gw.url, "tiny-chat")
    out = gw.proc.output()
    assert f"llama-server: {cuda_binary} (built earlier with CUDA for Stand-in T4" in out
    assert "GPU 0 has 16.00 GiB free" in out and f"launching: {cuda_binary} -m {gguf}" in out and "-ngl all" in out
    assert "the GPU is not used" not in out
    log = httpx.get(gw.url + "/admin/backends/quickstart/logs").json()
    text = "\n".join(log["lines"])
    # the CUDA build, offloading all layers to a GPU it does not find: it says so and answers on the CPU
    assert "ggml_cuda_init: failed to initialize CUDA" in text, text[-2000:]


def test_a_build_is_announced_with_its_time_and_its_failure_is_one_message(
        nvcc_env: Path, toolkit: Toolkit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gateway.quickstart import QuickstartError

    monkeypatch.setenv("LLM_GATEWAY_CACHE_DIR", str(tmp_path / "cache"))   # nothing cached for this GPU
    monkeypatch.setenv("CUDAHOSTCXX", str(toolkit.host_cxx))
    asked: list[tuple[object, object]] = []

    def failing_build(*, cuda: object, host_cxx: object) -> Path:  # the 20-minute build itself is prepare's
        asked.append((cuda, host_cxx))
        raise llama_build.LlamaServerUnavailable("cmake --build … failed with exit code 2 (log: /x.log):\nerror")

    monkeypatch.setattr(llama_build, "ensure_llama_server", failing_build)
    lines, say = said()
    with pytest.raises(QuickstartError) as e:
        find_llama_server(None, say, Gpu("L4", (8, 9), 12020))
    assert "building it with CUDA 11.8" in lines[-1] and "for L4 (compute capability 8.9)" in lines[-1]
    assert "about 20 minutes on 2 cores" in lines[-1] and f"host compiler {toolkit.host_cxx}" in lines[-1]
    [(target, host)] = asked
    assert (target.arch, target.tag, host) == ("89", "cuda11.8-sm89", str(toolkit.host_cxx))
    assert e.value.message.startswith("building llama-server with CUDA failed: cmake --build")
    assert "--llama-server" in e.value.fix and "Traceback" not in str(e.value)


def test_a_cuda_build_whose_toolkit_libraries_are_gone_is_not_used(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA binary links the toolkit's libraries where they are: without them it is no build at all."""
    monkeypatch.setenv("LLM_GATEWAY_CACHE_DIR", str(tmp_path / "cache"))
    target = cuda.CudaTarget(Path("/nowhere/nvcc"), (12, 4), "86")
    dest = llama_build.install_dir(cuda=target)
    dest.mkdir(parents=True)
    lib = tmp_path / "toolkit"
    lib.mkdir()
    (tmp_path / "cublas.c").write_text("int cublas_stand_in(void) { return 7; }\n")
    (tmp_path / "main.c").write_text("int cublas_stand_in(void);\nint main(void) { return cublas_stand_in(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcublas.so.12", "-o", str(lib / "libcublas.so.12"),
                    str(tmp_path / "cublas.c")], check=True)
    subprocess.run(["gcc", "-o", str(dest / "llama-server"), str(tmp_path / "main.c"), str(lib / "libcublas.so.12"),
                    f"-Wl,-rpath,{lib}"], check=True)
    (dest / "BUILD-COMPLETE.json").write_text(json.dumps({"recipe": llama_build._recipe(
        llama_build.LLAMA_CPP_PYTHON_VERSION, target)}))
    assert llama_build.installed(cuda=target) == dest / "llama-server"
    assert llama_build.installed() is None  # the CPU build is another directory
    (lib / "libcublas.so.12").unlink()      # the toolkit was removed
    assert llama_build.unresolved_libraries(dest / "llama-server") == ["libcublas.so.12"]
    assert llama_build.installed(cuda=target) is None
