"""gateway.supervisor.launcher: a rendered launch brought up as real child processes.

The real llama-server through its recipe (ready, answers a chat completion, stopped with its port freed; a
bad model path fails at once quoting llama-server's own error lines), and start-up judged by progress with
the slow_start double: silence fails after stall_timeout, output or 503 answers keep it going, the plan's
budget still bounds it; post-start steps (HTTP and commands), process order, cancellation, the environment.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from gateway.recipes.plan import EnvVar, Launch, LaunchParams, Plan, Step, build
from gateway.supervisor.child import Child
from gateway.supervisor.launcher import StartFailed, bring_up, env_for, http_call
from gateway.supervisor.logs import LogRing
from tests.procs import ROOT, free_port
from tests.test_supervisor_child import gone


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def fake_plan(port: int, *args: str, name: str = "fake", budget: float = 30.0, steps: list[Step] | None = None,
              env: list[EnvVar] | None = None, argv: list[str] | None = None) -> Plan:
    return Plan(kind="fake", service=name, process="server",
                argv=argv or [sys.executable, "-m", "tests.doubles.slow_start", "--port", str(port), *args],
                image_argv=[], env=env or [], image=None, build=None, host="127.0.0.1", port=port,
                ready_url=f"http://127.0.0.1:{port}/health", ready_method="GET", ready_budget_s=budget,
                healthcheck=[], metrics_path=None, gpus=[], volumes=[], depends_on=[], post_start=steps or [])


def launch_of(*plans: Plan) -> Launch:
    return Launch("fake", "host", list(plans), f"http://127.0.0.1:{plans[0].port}")


async def stop_all(children: list[Child]) -> None:
    for c in reversed(children):
        await c.stop(5)


@pytest.fixture(autouse=True)
def _cwd_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)      # `python -m tests.doubles...` is found from the checkout


# -- the real llama-server through its recipe ---------------------------------------------------------------
@pytest.mark.llamacpp
def test_llama_server_ready_answers_and_stops(llama_binary: Path, tiny_gguf: Path) -> None:
    port = free_port()
    launch = build("llamacpp", LaunchParams(model=str(tiny_gguf), host="127.0.0.1", port=port, gpus=[],
                                            context=256, binary=str(llama_binary)))
    logs, phases = LogRing(), []

    async def run() -> tuple[float, float, int, int | None]:
        t0 = time.monotonic()
        children = await bring_up(launch, logs, stall_timeout=10, on_progress=phases.append)
        up = time.monotonic() - t0
        try:
            answer = await http_call("POST", launch.backend_url + "/v1/chat/completions",
                                     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            assert answer is not None and answer[0] == 200, answer
            assert b'"chat.completion"' in answer[1]
            (child,) = children
            program = child.program_pid
            assert program is not None and child.pid is not None and not gone(program)
        finally:
            t1 = time.monotonic()
            rc = await children[0].stop(10)
            down = time.monotonic() - t1
        return up, down, children[0].pid, program, rc  # type: ignore[return-value]

    up, down, reaper, program, rc = asyncio.run(run())
    assert phases[0] == "starting" and phases[-1] == "ready"
    assert gone(reaper) and gone(program) and port_free(port)
    assert rc == 0, rc                       # llama-server exits cleanly on SIGTERM
    assert down < 5 and up < 20
    assert any("listening" in line or "main: model loaded" in line for line in logs.tail())
    sys.stderr.write(f"\nllama-server (tiny GGUF) via bring_up: ready in {up:.3f}s, stop() in {down:.3f}s\n")


@pytest.mark.llamacpp
def test_bad_model_path_fails_fast_quoting_llama_server(llama_binary: Path, tmp_path: Path) -> None:
    launch = build("llamacpp", LaunchParams(model=str(tmp_path / "missing.gguf"), host="127.0.0.1",
                                            port=free_port(), gpus=[], binary=str(llama_binary)))
    t0 = time.monotonic()
    with pytest.raises(StartFailed) as info:
        asyncio.run(bring_up(launch, LogRing(), stall_timeout=60))
    took = time.monotonic() - t0
    assert took < 5, f"{took:.1f}s: it must fail when llama-server exits, not after a timeout"
    assert "exited with code 1" in info.value.reason and "\n" not in info.value.reason
    tail = "\n".join(info.value.log_tail)
    assert "missing.gguf" in tail and "failed to load model" in tail, tail
    assert len(info.value.log_tail) <= 20


# -- progress, not a fixed timeout ----------------------------------------------------------------------------
def test_silent_child_fails_after_stall_timeout() -> None:
    plan = fake_plan(free_port(), argv=[sys.executable, "-c", "import time; time.sleep(1e6)"])
    logs = LogRing()
    t0 = time.monotonic()
    with pytest.raises(StartFailed) as info:
        asyncio.run(bring_up(launch_of(plan), logs, stall_timeout=1.0))
    took = time.monotonic() - t0
    assert 1.0 <= took < 4.0, took
    assert "no progress for 1s" in info.value.reason and "did not answer" in info.value.reason


def test_chatty_child_outlives_stall_timeout() -> None:
    port = free_port()
    logs = LogRing()

    async def run() -> float:
        t0 = time.monotonic()
        children = await bring_up(launch_of(fake_plan(port, "--chatter", "2.5")), logs, stall_timeout=1.0)
        took = time.monotonic() - t0
        await stop_all(children)
        return took

    took = asyncio.run(run())
    assert took >= 2.5, took          # it was ready only after 2.5 s of output, well past the 1 s stall timeout
    assert sum("still loading" in line for line in logs.tail()) >= 10


def test_partial_lines_count_as_progress() -> None:
    port, logs = free_port(), LogRing()

    async def run() -> float:
        t0 = time.monotonic()
        children = await bring_up(launch_of(fake_plan(port, "--dots", "2.5")), logs, stall_timeout=1.0)
        took = time.monotonic() - t0
        await stop_all(children)
        return took

    assert asyncio.run(run()) >= 2.5
    assert logs.tail()[0].startswith("..........")     # one line of dots, ended by the next print


def test_503_answers_count_as_progress() -> None:
    port, phases = free_port(), []

    async def run() -> float:
        t0 = time.monotonic()
        children = await bring_up(launch_of(fake_plan(port, "--answer-503", "2.5")), LogRing(), stall_timeout=1.0,
                                  on_progress=phases.append)
        took = time.monotonic() - t0
        await stop_all(children)
        return took

    assert asyncio.run(run()) >= 2.5
    assert phases == ["starting", "loading", "ready"]


def test_budget_bounds_a_child_that_keeps_talking() -> None:
    plan = fake_plan(free_port(), "--never-ready", budget=1.5)
    t0 = time.monotonic()
    with pytest.raises(StartFailed) as info:
        asyncio.run(bring_up(launch_of(plan), LogRing(), stall_timeout=1.0))
    assert 1.5 <= time.monotonic() - t0 < 4.5
    assert "budget of 1.5s" in info.value.reason
    assert info.value.log_tail[-1].startswith("still loading")


def test_a_port_already_in_use_is_refused_before_starting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StartFailed) as info:
            asyncio.run(bring_up(launch_of(fake_plan(port)), LogRing(), stall_timeout=5))
    assert info.value.reason == f"127.0.0.1:{port} is already in use by another process; fake was not started"


def test_injected_probe_is_used() -> None:
    calls: list[tuple[str, str]] = []

    async def probe(method: str, url: str) -> int | None:
        calls.append((method, url))
        return 200 if len(calls) >= 3 else 503

    plan = fake_plan(free_port(), argv=[sys.executable, "-c", "import time; time.sleep(1e6)"])

    async def run() -> None:
        await stop_all(await bring_up(launch_of(plan), LogRing(), stall_timeout=5, http_probe=probe))

    asyncio.run(run())
    assert calls == [("GET", plan.ready_url)] * 3


# -- order, steps, failure clean-up, cancellation --------------------------------------------------------------
def test_plans_start_in_order_and_steps_run(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    record = tmp_path / "posts.txt"
    marker = tmp_path / "pulled"
    steps = [Step("load", 10, [], url=f"http://127.0.0.1:{second}/switch-model", method="POST", body={"model": "m"}),
             Step("pull", 10, [EnvVar("STEP_VAR", "x")],
                  argv=["sh", "-c", f'echo "pulling $STEP_VAR"; touch {marker}'])]
    plans = [fake_plan(first, "--chatter", "0.5", name="controller"),
             fake_plan(second, "--needs", f"http://127.0.0.1:{first}/health", "--record", str(record),
                       name="worker", steps=steps)]

    async def run() -> list[Child]:
        children = await bring_up(launch_of(*plans), logs, stall_timeout=10)
        await stop_all(children)
        return children

    logs = LogRing()
    children = asyncio.run(run())
    assert [c.name for c in children] == ["controller", "worker"]
    assert record.read_text() == '/switch-model {"model": "m"}\n'
    assert marker.exists() and "pulling x" in logs.tail()


@pytest.mark.parametrize("step", [
    Step("pull", 10, [], argv=["sh", "-c", "echo 'pull: manifest not found'; exit 3"]),
    Step("slow", 0.5, [], argv=["sleep", "30"]),
])
def test_failing_step_stops_what_was_started(step: Step) -> None:
    first, second = free_port(), free_port()
    plans = [fake_plan(first, name="controller"), fake_plan(second, name="worker", steps=[step])]
    with pytest.raises(StartFailed) as info:
        asyncio.run(bring_up(launch_of(*plans), LogRing(), stall_timeout=10))
    assert f"post-start step {step.name} failed" in info.value.reason
    if step.name == "pull":
        assert "exited with code 3" in info.value.reason
        assert "pull: manifest not found" in info.value.log_tail
    else:
        assert "did not finish within 0.5s" in info.value.reason
    assert port_free(first) and port_free(second)


def test_cancelled_bring_up_stops_its_children() -> None:
    port = free_port()
    logs = LogRing()

    async def run() -> int:
        task = asyncio.ensure_future(bring_up(launch_of(fake_plan(port, "--never-ready")), logs, stall_timeout=30))
        while logs.count == 0:
            await asyncio.sleep(0.05)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(int(p), str(port))]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids[0]

    pid = asyncio.run(run())
    assert gone(pid)


def _cmdline_has(pid: int, word: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word.encode() in f.read().split(b"\0")
    except OSError:
        return False


# -- the environment ------------------------------------------------------------------------------------------
def test_env_for_literals_and_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-secret")
    monkeypatch.setenv("LLAMA_API_KEY", "inherited")
    monkeypatch.setenv("OTHER_API_KEY", "inherited-too")
    monkeypatch.delenv("ABSENT_KEY", raising=False)
    plan = fake_plan(1, env=[EnvVar("CUDA_VISIBLE_DEVICES", "0,1"), EnvVar("LLAMA_API_KEY", from_env="MY_KEY"),
                             EnvVar("OTHER_API_KEY", from_env="ABSENT_KEY"), EnvVar("HF_TOKEN", from_env="HF_TOKEN")])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    env = env_for(plan)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["LLAMA_API_KEY"] == "sk-secret"
    assert "OTHER_API_KEY" not in env and "HF_TOKEN" not in env and "ABSENT_KEY" not in env
    assert "MY_KEY" in env and env["PATH"] == os.environ["PATH"]
    assert "ABSENT_KEY" not in env.values()        # never rendered as a literal
    assert env["PYTHONUNBUFFERED"] == "1"


# -- a real two-process launch: FastChat's controller, then its worker (ready by POST) ----------------------
@pytest.mark.fastchat
def test_fastchat_controller_then_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.backends import fastchat_env
    from tests.backends.availability import unavailable
    from tests.backends.hf_model import write_tiny_llama
    try:
        venv = fastchat_env.ensure_fastchat_venv()
    except fastchat_env.FastChatUnavailable as exc:
        unavailable("FastChat", exc)
    for k, v in fastchat_env.controller_args(venv, 1)[1].items():   # CPU, one thread: through os.environ
        monkeypatch.setenv(k, v)
    port = free_port()
    launch = build("fastchat", LaunchParams(model=str(write_tiny_llama(tmp_path / "tiny-llama")), host="127.0.0.1",
                                            port=port, gpus=[], dtype="fp32", served_name="tiny-sup",
                                            binary=str(venv / "bin" / "python"),
                                            args=["--conv-template", "vicuna_v1.1"]))
    assert [p.ready_method for p in launch.plans] == ["GET", "POST"]
    logs, phases = LogRing(), []

    async def run() -> tuple[list[Child], list[int], float, bytes]:
        t0 = time.monotonic()
        children = await bring_up(launch, logs, stall_timeout=60, on_progress=phases.append)
        took = time.monotonic() - t0
        try:
            models = await http_call("POST", launch.backend_url + "/list_models")
            assert models is not None and models[0] == 200
            pids = [p for c in children for p in (c.pid, c.program_pid) if p is not None]
        finally:
            await stop_all(children)
        return children, pids, took, models[1]

    children, pids, took, models = asyncio.run(run())
    assert [c.name for c in children] == ["fastchat-controller", "fastchat-worker"]
    assert b"tiny-sup" in models                       # the worker registered with the controller started first
    assert phases == ["starting", "starting", "ready"]
    assert len(pids) == 4 and all(gone(p) for p in pids) and port_free(port) and port_free(port + 1)
    sys.stderr.write(f"\nFastChat controller + worker (tiny llama, CPU) via bring_up: ready in {took:.1f}s\n")


def test_http_call_reads_a_body_sent_after_its_headers() -> None:
    """A server that writes its headers, then (later) its body: http_call returns the body, not b""."""
    async def run() -> tuple[int, bytes] | None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b'{"models": ["m"]}')
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await http_call("POST", f"http://127.0.0.1:{port}/list_models")

    assert asyncio.run(run()) == (200, b'{"models": ["m"]}')
