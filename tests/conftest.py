from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner


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
def backend_tgi_double(session_spawn: Spawner) -> BackendUnderTest:
    import sys

    from tests.procs import free_port
    port = free_port()
    p = session_spawn.proc([sys.executable, "-m", "tests.doubles.tgi_server", "--port", str(port),
                            "--model-id", "meta-llama/Llama-3.1-8B-Instruct", "--max-input-tokens", "1000",
                            "--max-total-tokens", "2048"], "conf-tgi-double")
    p.wait_http(f"http://127.0.0.1:{port}/health")
    return BackendUnderTest("tgi-double", "tgi", f"http://127.0.0.1:{port}", "meta-llama/Llama-3.1-8B-Instruct")
