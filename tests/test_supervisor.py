"""The gateway runs llama-servers itself (gateway/supervisor): real llama-server processes started from their
recipes by a real gateway under uvicorn, two tiny GGUF models, the official openai client.

On-demand start on the first request with the answer streamed, idle stop (process gone, port free), probes
and scrapes never waking a stopped backend, crash then restart, a failed start's 503 quoting the log, admin
start/stop/logs, and no process left behind when the gateway is SIGKILLed or SIGTERMed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.procs import STAND_IN_NVML, Gateway, Spawner, free_port

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.backends.llamacpp import write_tiny_gguf
    d = tmp_path_factory.mktemp("sup-gguf")
    return {"a": write_tiny_gguf(d / "sup-a.gguf", seed=1, name="sup-a"),
            "b": write_tiny_gguf(d / "sup-b.gguf", seed=2, name="sup-b")}


def backend(name: str, model: Path, binary: Path, **launch: Any) -> dict[str, Any]:
    return {"name": name, "kind": "llamacpp", "url": f"http://127.0.0.1:{free_port()}",
            "launch": {"model": str(model), "binary": str(binary), "gpus": [], "context": 256, "slots": 2,
                       "served_name": f"tiny-{name}", **launch}}


def config(*backends: dict[str, Any], **supervisor: Any) -> dict[str, Any]:
    return {"health": {"interval": 0.3, "not_ready_interval": 0.2},
            "supervisor": {"stop_grace": 5, "stall_timeout": 30, "restart_backoff": 0.2, **supervisor},
            "backends": list(backends)}


def pids_serving(model: Path) -> list[int]:
    """Processes whose command line names this model file (the llama-servers of that backend)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue      # a zombie has exited: only its parent's wait is missing
        except OSError:
            continue
        if str(model).encode() in args and args[0].endswith(b"llama-server"):   # not a wrapper naming it
            out.append(int(entry))
    return out


def port_open(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def state(gw: Gateway, name: str) -> dict[str, Any]:
    doc = httpx.get(gw.url + "/admin/backends", timeout=10).json()
    return next(b for b in doc["backends"] if b["name"] == name)


def wait_until(what: Callable[[], Any], timeout: float, why: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {why}")


def chat(gw: Gateway, model: str, **kw: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=120,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                            **kw})


def test_on_demand_start_streams_then_idle_stop_and_probes_never_wake_it(
        spawn: Spawner, llama_binary: Path, models: dict[str, Path]) -> None:
    a = backend("a", models["a"], llama_binary, start="on_demand", idle_timeout=2)
    gw = spawn.gateway(config(a))
    # Listed before it ever ran, stopped, and the gateway is ready (it can start it).
    assert [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]] == ["tiny-a"]
    assert state(gw, "a")["state"] == "stopped"
    assert httpx.get(gw.url + "/readyz").status_code == 200
    # Probes (every 0.3 s) and scrapes never start it.
    for _ in range(10):
        httpx.get(gw.url + "/metrics")
        time.sleep(0.1)
    assert not pids_serving(models["a"]) and not port_open(a["url"]) and state(gw, "a")["state"] == "stopped"

    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="tiny-a", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, stream=True)
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    running = pids_serving(models["a"])
    assert len(running) == 1 and port_open(a["url"])
    doc = state(gw, "a")
    assert doc["state"] == "ready" and doc["supervisor"]["starts"] == 1 and doc["models"] == ["tiny-a"]

    # Idle: no request for 2 s -> stopped, process gone, port free; /metrics scrapes meanwhile do not count.
    t_idle = time.monotonic()
    wait_until(lambda: state(gw, "a")["state"] == "stopped", 15, "the idle backend stops")
    stopped_after = time.monotonic() - t_idle
    assert not pids_serving(models["a"]) and not port_open(a["url"])
    assert 1.5 <= stopped_after <= 20, stopped_after   # not before idle_timeout; how late: bench/supervisor.py
    assert [m["id"] for m in httpx.get(gw.url + "/v1/models").json()["data"]] == ["tiny-a"]   # still listed
    text = httpx.get(gw.url + "/metrics").text
    assert 'llm_gateway_backend_starts_total{backend="a"} 1.0' in text
    assert 'llm_gateway_backend_stops_total{backend="a",reason="idle"} 1.0' in text
    assert 'llm_gateway_backend_startup_seconds_count{backend="a"} 1.0' in text
    assert 'llm_gateway_backend_state{backend="a",state="stopped"} 1.0' in text
    # ... and the next request starts it again.
    assert chat(gw, "tiny-a").status_code == 200
    assert state(gw, "a")["supervisor"]["starts"] == 2


def test_crash_is_visible_and_the_next_request_restarts_it(spawn: Spawner, llama_binary: Path,
                                                           models: dict[str, Path]) -> None:
    a = backend("a", models["a"], llama_binary, start="on_demand")
    gw = spawn.gateway(config(a))
    assert chat(gw, "tiny-a").status_code == 200
    [pid] = pids_serving(models["a"])
    os.kill(pid, signal.SIGKILL)
    doc = wait_until(lambda: (d := state(gw, "a"))["state"] == "crashed" and d, 10, "the crash is seen")
    assert "exit" in doc["detail"] and doc["supervisor"]["restarts"] == 0
    assert 'llm_gateway_backend_crashes_total{backend="a"} 1.0' in httpx.get(gw.url + "/metrics").text
    r = chat(gw, "tiny-a")
    assert r.status_code == 200, r.text
    doc = state(gw, "a")
    assert doc["state"] == "ready" and doc["supervisor"]["restarts"] == 1
    [new] = pids_serving(models["a"])
    assert new != pid


def test_a_start_that_fails_is_a_503_quoting_the_log(spawn: Spawner, llama_binary: Path, tmp_path: Path) -> None:
    bad = tmp_path / "missing.gguf"
    a = backend("a", bad, llama_binary, start="on_demand")
    gw = spawn.gateway(config(a))
    t0 = time.monotonic()
    r = chat(gw, "tiny-a")
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "backend_start_failed" and err["type"] == "server_error"
    assert "could not be started" in err["message"] and "exit" in err["message"]
    # llama-server's own words about the missing file are quoted
    log_lines = httpx.get(gw.url + "/admin/backends/a/logs").json()["lines"]
    assert any("missing.gguf" in line for line in log_lines), log_lines
    assert any(line in err["message"] for line in log_lines[-5:] if line.strip()), (err["message"], log_lines)
    assert took < 15, took               # its exit, not a timeout, ended the wait
    assert state(gw, "a")["state"] == "crashed"


def test_admin_start_stop_logs_and_the_status_command(spawn: Spawner, llama_binary: Path,
                                                      models: dict[str, Path]) -> None:
    a = backend("a", models["a"], llama_binary, start="on_demand")
    gw = spawn.gateway(config(a, log_lines=50))
    assert httpx.post(gw.url + "/admin/backends/a/start").status_code == 202
    wait_until(lambda: state(gw, "a")["state"] == "ready", 60, "admin start")
    lines = httpx.get(gw.url + "/admin/backends/a/logs", params={"lines": 1000}).json()["lines"]
    assert 0 < len(lines) <= 50 and any("listening" in line for line in lines), lines   # its own words
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--url", gw.url, "--logs", "a", "--lines", "5"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.splitlines()[0].startswith("# a (ready)")
    assert out.stdout.splitlines()[1:] == lines[-5:]
    table = subprocess.run([sys.executable, "-m", "gateway", "status", "--url", gw.url], capture_output=True,
                           text=True, timeout=30).stdout
    assert "[launched: pid" in table and "restarts 0" in table
    assert httpx.post(gw.url + "/admin/backends/a/stop").status_code == 202
    wait_until(lambda: state(gw, "a")["state"] == "stopped", 20, "admin stop")
    assert not pids_serving(models["a"])
    assert 'reason="admin"' in httpx.get(gw.url + "/metrics").text
    nope = httpx.post(gw.url + "/admin/backends/nope/start")
    assert nope.status_code == 404 and nope.json()["error"]["code"] == "backend_not_found"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_orphan_when_the_gateway_dies(spawn: Spawner, llama_binary: Path, models: dict[str, Path],
                                         sig: int) -> None:
    a = backend("a", models["a"], llama_binary)            # at_boot
    gw = spawn.gateway(config(a))
    wait_until(lambda: state(gw, "a")["state"] == "ready", 60, "started with the gateway")
    [pid] = pids_serving(models["a"])
    gw.proc.popen.send_signal(sig)
    gw.proc.popen.wait(30)
    wait_until(lambda: not pids_serving(models["a"]), 15, f"llama-server {pid} gone after the gateway's {sig!r}")
    assert not port_open(a["url"])


def test_placement_refuses_a_start_that_will_not_fit_what_nvml_says_is_free(
        spawn: Spawner, llama_binary: Path, models: dict[str, Path]) -> None:
    a = backend("a", models["a"], llama_binary, start="on_demand", group="gpu0", gpus=[0], gpu_layers=0)
    cfg = config(a, groups={"gpu0": {"gpus": [0]}})
    env = {"PYTHONPATH": f"{STAND_IN_NVML}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    gw = spawn.gateway(cfg, env={**env, "STAND_IN_FREE": str(1 << 20)})          # 1 MiB free
    r = chat(gw, "tiny-a")
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "backend_will_not_fit" and "will not fit 1 GPU(s) of 0.00 GiB free (NVML)" in err["message"]
    assert not pids_serving(models["a"]) and state(gw, "a")["state"] == "stopped"
    gw.proc.stop()
    gw = spawn.gateway(cfg, env={**env, "STAND_IN_FREE": str(8 << 30)})          # 8 GiB free: it starts
    r = chat(gw, "tiny-a")
    assert r.status_code == 200, r.text
    # without NVML, the configured size decides
    gw.proc.stop()
    small = config(a, groups={"gpu0": {"gpus": [0], "gpu_memory": "1MiB"}})
    gw = spawn.gateway(small)
    r = chat(gw, "tiny-a")
    assert r.status_code == 503 and "(configured)" in r.json()["error"]["message"], r.text


def test_an_at_boot_backend_that_crashes_is_restarted_at_once(spawn: Spawner, llama_binary: Path,
                                                              models: dict[str, Path]) -> None:
    a = backend("a", models["a"], llama_binary)            # at_boot: no request needed to bring it back
    gw = spawn.gateway(config(a))
    wait_until(lambda: state(gw, "a")["state"] == "ready", 60, "started with the gateway")
    [pid] = pids_serving(models["a"])
    os.kill(pid, signal.SIGKILL)
    doc = wait_until(lambda: (d := state(gw, "a"))["state"] == "ready" and d["supervisor"]["restarts"] == 1 and d,
                     60, "restarted without a request")
    assert pids_serving(models["a"]) != [pid] and doc["supervisor"]["starts"] == 2
    text = httpx.get(gw.url + "/metrics").text
    assert 'llm_gateway_backend_crashes_total{backend="a"} 1.0' in text
    assert 'llm_gateway_backend_restarts_total{backend="a"} 1.0' in text
    assert chat(gw, "tiny-a").status_code == 200


def test_requests_wait_behind_a_start_in_one_bounded_queue(spawn: Spawner, llama_binary: Path,
                                                            tmp_path: Path) -> None:
    """A model that loads for ~4 s: the first request starts it, the next ones wait behind it up to
    supervisor.max_waiting, and one more gets 429 queue_full at once; the waiting ones all get answers."""
    import concurrent.futures

    from tests.backends.llamacpp import write_tiny_gguf
    slow = write_tiny_gguf(tmp_path / "slow.gguf", size="loading", name="slow")
    a = backend("a", slow, llama_binary, start="on_demand")
    gw = spawn.gateway(config(a, max_waiting=3))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(chat, gw, "tiny-a") for _ in range(3)]
        wait_until(lambda: state(gw, "a")["supervisor"]["waiting"] == 3, 10, "three requests wait")
        assert state(gw, "a")["state"] in ("starting", "loading")
        t0 = time.monotonic()
        over = chat(gw, "tiny-a")
        assert time.monotonic() - t0 < 1
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
        assert "max_waiting" in over.json()["error"]["message"] and over.headers["retry-after"] == "5"
        assert [f.result().status_code for f in waiting] == [200, 200, 200]
    assert state(gw, "a")["supervisor"]["starts"] == 1      # one start served them all
