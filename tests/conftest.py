from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.availability import REAL_MARKERS, in_ci, unavailable
from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner


# -- real backends: in CI a skip of their tests is a failure; locally it is a loud skip ---------------
def _real_backend_test(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) is not None for m in REAL_MARKERS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:  # type: ignore[type-arg]
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and in_ci() and _real_backend_test(item) and not hasattr(report, "wasxfail"):
        # Whatever skipped it (a fixture, the test, a plugin): CI must not go green without it.
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a real-backend test may not skip; it skipped with: {reason}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "REAL " in reason and " NOT TESTED" in reason:
            reasons.add(reason.removeprefix("Skipped: "))
    for reason in sorted(reasons):
        terminalreporter.write_line(f"WARNING: {reason} (in CI this fails the run)", yellow=True, bold=True)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    s = Spawner(tmp_path)
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def module_spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    s = Spawner(tmp_path_factory.mktemp("procs"))
    yield s
    s.stop_all()


@pytest.fixture(scope="session")
def session_spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    """For heavy backends: started once per test session, shared by every module."""
    s = Spawner(tmp_path_factory.mktemp("session-procs"))
    yield s
    s.stop_all()


@pytest.fixture(scope="session")
def backend_vllm_double(session_spawn: Spawner) -> BackendUnderTest:
    d = session_spawn.double("conf-vllm-double", "Qwen/Qwen2.5-0.5B-Instruct")
    return BackendUnderTest("vllm-double", "vllm", d.url, "Qwen/Qwen2.5-0.5B-Instruct")


@pytest.fixture(scope="session")
def backend_openai_double(session_spawn: Spawner) -> BackendUnderTest:
    """A generic OpenAI-compatible server (kind `openai`: no vLLM extras assumed)."""
    d = session_spawn.double("conf-openai-double", "generic-model", "--owned-by", "someone")
    return BackendUnderTest("openai-double", "openai", d.url, "generic-model")


@pytest.fixture(scope="session")
def backend_tgi_double(session_spawn: Spawner) -> BackendUnderTest:
    d = session_spawn.start_double("tgi_server", "/health", "--model-id", "meta-llama/Llama-3.1-8B-Instruct",
                                   "--max-input-tokens", "1000", "--max-total-tokens", "2048")
    return BackendUnderTest("tgi-double", "tgi", d.url, "meta-llama/Llama-3.1-8B-Instruct")


# -- real backends (built or installed once per machine, started once per session) --------------
@pytest.fixture(scope="session")
def llama_binary() -> Path:
    from tests.backends.llamacpp import LlamaServerUnavailable, ensure_llama_server
    try:
        return ensure_llama_server()
    except LlamaServerUnavailable as exc:  # the reason is in the message and the build log
        unavailable("llama-server", f"it could not be built on this machine: {exc}")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.backends.llamacpp import write_tiny_gguf
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llama_servers(session_spawn: Spawner, llama_binary: Path, tiny_gguf: Path) -> list[BackendUnderTest]:
    """Two real llama-servers with the same tiny model: one pool for the gateway."""
    from tests.backends.llamacpp import server_args, wait_ready
    from tests.procs import free_port
    out = []
    for i in range(2):
        port = free_port()
        p = session_spawn.proc(server_args(llama_binary, tiny_gguf, port, alias="tiny-llama", ctx=256, parallel=2),
                               f"llama-server-{i}")
        url = f"http://127.0.0.1:{port}"
        wait_ready(p, url, timeout=60)  # 200, not the 503 it answers while loading
        out.append(BackendUnderTest("llamacpp", "llamacpp", url, "tiny-llama"))
    return out


@pytest.fixture(scope="session")
def backend_llamacpp(llama_servers: list[BackendUnderTest]) -> BackendUnderTest:
    return llama_servers[0]


@pytest.fixture(scope="session")
def backend_vllm(session_spawn: Spawner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendUnderTest]:
    from tests.backends import vllm_cpu
    try:
        p, url = vllm_cpu.start_tiny(session_spawn, tmp_path_factory.mktemp("hf"), "vllm", "tiny-vllm")
    except vllm_cpu.VllmUnavailable as exc:
        unavailable("vLLM (CPU)", f"vllm-cpu cannot be installed on this machine: {exc}")
    yield BackendUnderTest("vllm", "vllm", url, "tiny-vllm")
    vllm_cpu.stop_server(p)


@pytest.fixture(scope="session")
def backend_ollama_double(session_spawn: Spawner) -> BackendUnderTest:
    d = session_spawn.start_double("ollama_server", "/api/version", "--models", "llama3.2", "--loaded", "llama3.2")
    return BackendUnderTest("ollama-double", "ollama", d.url, "llama3.2:latest")


@pytest.fixture(scope="session")
def backend_rwkv_double(session_spawn: Spawner) -> BackendUnderTest:
    d = session_spawn.start_double("rwkv_server", "/status", "--preload",
                                   "models/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth")
    return BackendUnderTest("rwkv-double", "rwkv-runner", d.url, "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096",
                            stream_usage=False)


@pytest.fixture(scope="session")
def fastchat_cluster(session_spawn: Spawner, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Real FastChat: a controller and two HF model workers (CPU) serving the same tiny llama."""
    from tests.backends import fastchat_env
    from tests.backends.hf_model import write_tiny_llama
    from tests.procs import free_port
    try:
        venv = fastchat_env.ensure_fastchat_venv()
    except fastchat_env.FastChatUnavailable as exc:
        unavailable("FastChat", f"its virtualenv cannot be built on this machine: {exc}")
    model_dir = write_tiny_llama(tmp_path_factory.mktemp("fc") / "tiny-llama")
    cport = free_port()
    controller = f"http://127.0.0.1:{cport}"
    argv, env = fastchat_env.controller_args(venv, cport)
    session_spawn.proc(argv, "fastchat-controller", env=env).wait_http(controller + "/test_connection")
    workers = []
    for i in range(2):
        wport = free_port()
        argv, env = fastchat_env.worker_args(venv, model_dir, wport, controller, model_names="tiny-fastchat",
                                             conv_template="vicuna_v1.1")
        p = session_spawn.proc(argv, f"fastchat-worker-{i}", env=env)
        fastchat_env.wait_worker_ready(f"http://127.0.0.1:{wport}", timeout=180, proc=p)
        workers.append({"url": f"http://127.0.0.1:{wport}", "proc": p})
    return {"controller": controller, "workers": workers, "model": "tiny-fastchat"}


@pytest.fixture(scope="session")
def backend_fastchat(fastchat_cluster: dict) -> BackendUnderTest:  # type: ignore[type-arg]
    return BackendUnderTest("fastchat", "fastchat", fastchat_cluster["controller"], fastchat_cluster["model"])


@pytest.fixture(scope="module")
def fronts_gateway(module_spawn: Spawner, backend_llamacpp: BackendUnderTest,
                   backend_tgi_double: BackendUnderTest) -> dict[str, Any]:
    """A gateway in front of a real llama-server, a vLLM-format double (`m-vllm`, which records what it
    receives) and the TGI double: the other protocols' tests (gateway/fronts/) run against three kinds.
    llama-server gets Anthropic's Messages passed through; the other two get them translated."""
    vllm = module_spawn.double("fronts-vllm", "m-vllm")
    gw = module_spawn.gateway({"backends": [
        {"name": "llama", "kind": "llamacpp", "url": backend_llamacpp.url},
        # the double serves no /v1/messages (a vLLM before it had one): the Anthropic front translates
        {"name": "vllm", "kind": "vllm", "url": vllm.url, "capabilities": {"messages": False}},
        {"name": "tgi", "kind": "tgi", "url": backend_tgi_double.url}]})
    return {"gw": gw, "vllm": vllm, "models": {"llamacpp": backend_llamacpp.model, "vllm": "m-vllm",
                                               "tgi": backend_tgi_double.model}}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of the module's own (Debian's package; .ci/run installs it)."""
    from tests.procs import free_port
    from tests.test_limits_redis import start_redis, stop

    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis") / "redis.log")
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture
def prefix() -> str:
    """Redis key prefix of one test: each test its own keys."""
    return f"t{uuid.uuid4().hex[:8]}:"
