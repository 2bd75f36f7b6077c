"""`llm-gateway serve --quickstart` (gateway/quickstart/): the model download against a local Hugging Face hub
(tests/doubles/hf_hub.py, serving a tiny GGUF this test writes: no hub access), the llama-server binary from
the cached build, the model choice by the sizing estimator, and end to end: the gateway launches llama-server
itself and streams an answer to the `openai` client, with a given file and with the hub's. Failures (hub
unreachable, a corrupt download, no disk space, no build tools) give their one message and fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.quickstart import QuickstartError, llama_build
from gateway.quickstart.binary import find_llama_server
from gateway.quickstart.download import fetch
from gateway.quickstart.models import CATALOG, Machine, choose
from tests.procs import ROOT, Spawner, free_port

pytestmark = pytest.mark.llamacpp
REPO, FILE = CATALOG[-1].repo, CATALOG[-1].filename  # what a small CPU-only machine gets
# huggingface_hub writes what it received in 10 MiB pieces (constants.DOWNLOAD_CHUNK_SIZE): a cut is resumable
# from the last whole piece, so the file cut in the resume test is bigger than two
BIG_REPO, BIG_FILE, BIG_SIZE = "test-owner/big", "big.gguf", 24 << 20


@pytest.fixture(scope="module")
def gguf(llama_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # llama_binary: the session's build, in the cache where the quickstart finds it
    from tests.backends.llamacpp import write_tiny_gguf
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "Tiny-Chat.gguf")


@pytest.fixture(scope="module")
def hub(module_spawn: Spawner, gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hub")
    (root / REPO).mkdir(parents=True)
    shutil.copy(gguf, root / REPO / FILE)
    (root / BIG_REPO).mkdir(parents=True)
    (root / BIG_REPO / BIG_FILE).write_bytes(os.urandom(BIG_SIZE))
    port = free_port()
    p = module_spawn.proc([sys.executable, "-m", "tests.doubles.hf_hub", "--port", str(port), "--root", str(root)],
                          "hf-hub")
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/_health")
    yield url


@pytest.fixture
def mode(hub: str) -> Iterator[Any]:
    def set_(**kw: int) -> None:
        httpx.post(hub + "/_mode", params=kw).raise_for_status()
    yield set_
    set_()


@pytest.fixture
def env(hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    vals = {"HF_ENDPOINT": hub, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1"}
    for k, v in vals.items():
        monkeypatch.setenv(k, v)
    return vals


def said() -> tuple[list[str], Any]:
    lines: list[str] = []
    return lines, lines.append


def test_downloads_verifies_and_then_needs_no_network(env: dict[str, str], gguf: Path, hub: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lines, say = said()
    path = fetch(REPO, FILE, say)
    assert path.read_bytes() == gguf.read_bytes() and str(path).startswith(env["HF_HUB_CACHE"])
    assert any("downloading" in s and hub in s for s in lines) and any("sha256" in s for s in lines)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there now
    lines, say = said()
    assert fetch(REPO, FILE, say) == path and "downloaded earlier" in lines[0]


def test_an_interrupted_download_resumes(env: dict[str, str], hub: str, mode: Any) -> None:
    mode(drop=15 << 20)  # every answer stops 15 MiB into what it sends
    with pytest.raises(QuickstartError) as e:
        fetch(BIG_REPO, BIG_FILE, said()[1])
    assert "stopped" in e.value.message and "run the same command again" in e.value.fix
    mode()
    before = len(httpx.get(hub + "/_ranges").json())
    path = fetch(BIG_REPO, BIG_FILE, said()[1])  # the sha256 the hub gave is checked inside
    assert path.stat().st_size == BIG_SIZE
    resumed = httpx.get(hub + "/_ranges").json()[before:]
    assert resumed == [f"bytes={10 << 20}-"], resumed  # asked only for what was missing


def test_a_corrupt_download_is_deleted(env: dict[str, str], mode: Any) -> None:
    mode(corrupt=1)  # the same size, one byte flipped
    with pytest.raises(QuickstartError) as e:
        fetch(REPO, FILE, said()[1])
    assert "corrupt" in e.value.message and "sha256" in e.value.message and "again" in e.value.fix
    left = [p for p in Path(env["HF_HUB_CACHE"]).rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert left == []  # nothing that could be taken for the model later
    mode()
    assert fetch(REPO, FILE, said()[1]).is_file()  # and the next run gets it whole


def test_no_disk_space_and_no_hub_say_what_to_do(env: dict[str, str], mode: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    mode(size=1 << 60)  # the hub says the file is an exabyte
    with pytest.raises(QuickstartError) as e:
        fetch(REPO, FILE, said()[1])
    assert "not enough disk space" in e.value.message and "HF_HOME" in e.value.fix
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(QuickstartError) as e:
        fetch(REPO, FILE, said()[1])
    assert "cannot get" in e.value.message and "--model" in e.value.fix and "HF_ENDPOINT" in e.value.fix


def test_the_binary_from_path_the_cache_or_a_clear_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = llama_build.installed()
    assert built is not None  # the session's build (tests/backends/llamacpp.py uses the same)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no llama-server, no compiler
    lines, say = said()
    assert find_llama_server(None, say) == built and "built earlier" in lines[0]
    (tmp_path / "bin").mkdir()
    os.symlink(built, tmp_path / "bin" / "llama-server")
    lines, say = said()
    assert find_llama_server(None, say) == tmp_path / "bin" / "llama-server" and "on PATH" in lines[0]
    with pytest.raises(QuickstartError) as e:
        find_llama_server(str(tmp_path / "nothing"), say)
    assert "no executable" in e.value.message
    (tmp_path / "bin" / "llama-server").unlink()
    monkeypatch.setenv("LLM_GATEWAY_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(QuickstartError) as e:  # before any download: the tools are missing
        find_llama_server(None, say)
    assert "cmake" in e.value.message and "apt-get install cmake g++ make" in e.value.fix
    assert not (tmp_path / "empty-cache").exists()


def test_the_estimator_picks_the_model_for_the_machine() -> None:
    big, small = CATALOG
    assert choose(Machine(gpu_free=8 << 30, ram_available=4 << 30, cores=2)).model is big
    gpu = choose(Machine(gpu_free=8 << 30, ram_available=4 << 30, cores=2))
    assert gpu.gpus == [0] and "GPU 0" in gpu.why
    tiny_gpu = choose(Machine(gpu_free=512 << 20, ram_available=16 << 30, cores=8))
    assert (tiny_gpu.model, tiny_gpu.gpus) == (big, []) and "too little free memory" in tiny_gpu.why
    assert choose(Machine(None, 16 << 30, 2)).model is small  # two cores: the small one answers faster
    assert choose(Machine(None, 16 << 30, 8)).model is big
    assert choose(Machine(None, 2 << 30, 8)).model is small  # 1 GiB of budget: only the small one fits


def stream(url: str, model: str) -> str:
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True) if ch.choices]
    c.close()
    return "".join(parts)


def test_serve_quickstart_with_a_given_model_streams_an_answer(spawn: Spawner, gguf: Path) -> None:
    gw = spawn.gateway(None, extra=("--quickstart", "--model", str(gguf)),
                       env={"GATEWAY_AUTODISCOVER__PORTS": "[]"})
    assert stream(gw.url, "tiny-chat")
    out = gw.proc.output()
    assert "served as 'tiny-chat'" in out and f"-m {gguf}" in out and "launching:" in out
    status = httpx.get(gw.url + "/admin/backends").json()
    assert any(b["name"] == "quickstart" for b in (status if isinstance(status, list) else status["backends"]))


def test_serve_quickstart_downloads_from_the_hub_and_streams(spawn: Spawner, env: dict[str, str]) -> None:
    gw = spawn.gateway(None, extra=("--quickstart",), env={**env, "GATEWAY_AUTODISCOVER__PORTS": "[]"})
    # this machine (2 cores, no GPU) gets the small model; the hub double serves the tiny GGUF as that file
    assert stream(gw.url, CATALOG[-1].alias)
    assert f"downloading {env['HF_ENDPOINT']}/{REPO}" in gw.proc.output()


def test_print_config_is_a_config_file(gguf: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "gateway", "serve", "--quickstart", "--model", str(gguf),
                        "--print-config"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    launch = doc["backends"][0]["launch"]
    assert (launch["model"], launch["served_name"], launch["gpus"]) == (str(gguf), "tiny-chat", [])
    assert (launch["start"], launch["idle_timeout"]) == ("at_boot", 1800.0)  # stopped when idle, like any other
    (tmp_path / "qs.yaml").write_text(r.stdout)
    check = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(tmp_path / "qs.yaml")],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert check.returncode == 0 and "tiny-chat" in check.stdout, check.stdout + check.stderr


def test_a_failing_step_is_one_message_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(tmp_path / "hf"),
           "GATEWAY_AUTODISCOVER__PORTS": "[]"}
    r = subprocess.run([sys.executable, "-m", "gateway", "serve", "--quickstart"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot start: cannot get" in r.stderr and "fix:" in r.stderr and "--model" in r.stderr


def test_nothing_is_launched_when_a_server_is_found_or_configured(spawn: Spawner) -> None:
    dbl = spawn.double("qs-found", "found-model")
    gw = spawn.gateway(None, extra=("--quickstart",), env={"GATEWAY_AUTODISCOVER__PORTS": f"[{dbl.port}]"})
    assert [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]] == ["found-model"]
    assert f"at http://127.0.0.1:{dbl.port}: serving that instead" in gw.proc.output()
    assert "launching:" not in gw.proc.output()
    gw = spawn.gateway({"backends": [{"name": "d", "kind": "openai", "url": dbl.url}]}, extra=("--quickstart",))
    assert "backends are configured; nothing to launch" in gw.proc.output()
    assert "launching:" not in gw.proc.output()


def test_a_gpu_with_the_cpu_build_is_said_and_sized_for_the_cpu(gguf: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    from gateway.quickstart import setup

    monkeypatch.setattr(setup, "this_machine", lambda: Machine(gpu_free=24 << 30, ram_available=16 << 30, cores=8))
    monkeypatch.setenv("PATH", "/nonexistent")  # only the cached (CPU) build is found
    p = setup.plan(str(gguf), None)
    assert p.gpus == [] and p.binary == llama_build.installed()
    assert "the GPU is not used: the llama-server built here is CPU only" in capsys.readouterr().err
    os.symlink(llama_build.installed(), tmp_path / "llama-server")  # another build, maybe CUDA's: the GPU is used
    assert setup.plan(str(gguf), str(tmp_path / "llama-server")).gpus == [0]
