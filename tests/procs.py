"""Real processes on loopback for the tests: the gateway under uvicorn, backend doubles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAND_IN_NVML = ROOT / "tests" / "doubles" / "nvml"   # pynvml for a GPU that is not here (its docstring)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited ({self.popen.returncode}):\n{self.output()}")
            try:
                httpx.get(url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"{url} did not answer within {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


class Double:
    """An OpenAI-compatible upstream double (tests/doubles/openai_server.py) in its own process."""

    def __init__(self, proc: Proc, port: int, name: str) -> None:
        self.proc, self.port, self.name = proc, port, name
        self.url = f"http://127.0.0.1:{port}"

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "/_requests").json()

    def stats(self) -> dict[str, int]:
        return httpx.get(self.url + "/_stats").json()

    def release(self) -> None:
        httpx.post(self.url + "/_release")

    def reset(self) -> None:
        httpx.post(self.url + "/_reset")


class Gateway:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"
        self.v1 = self.url + "/v1"


class Spawner:
    """Starts processes for one test (or module) and stops them all afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def proc(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(args, self.tmp / f"{name}.log", env)
        self.procs.append(p)
        return p

    def double(self, name: str, models: str = "test-model", *extra: str, port: int | None = None) -> Double:
        """The OpenAI-compatible double (vLLM's wire format)."""
        return self.start_double("openai_server", "/health", "--name", name, "--models", models, *extra,
                                 name=name, port=port)

    def start_double(self, module: str, ready_path: str, *args: str, name: str | None = None,
                     port: int | None = None) -> Double:
        """Any double in tests/doubles/ (they share the /_requests, /_stats, /_release hooks)."""
        port = port or free_port()
        p = self.proc([sys.executable, "-m", f"tests.doubles.{module}", "--port", str(port), *args],
                      f"{module}-{name or port}")
        p.wait_http(f"http://127.0.0.1:{port}{ready_path}")
        return Double(p, port, name or module)

    def gateway(self, config: dict[str, Any] | None, env: dict[str, str] | None = None,
                wait: bool = True, extra: tuple[str, ...] = ()) -> Gateway:
        port = free_port()
        args = [sys.executable, "-m", "gateway", "serve", "--port", str(port), *extra]
        if config is not None:
            path = self.tmp / f"gateway-{port}.yaml"
            path.write_text(yaml.safe_dump(config))
            args += ["--config", str(path)]
        if not ((config or {}).get("state") or {}).get("sqlite"):
            # usage of keyed requests goes to a file of this test's own, not ./llm-gateway-usage.db in the checkout
            env = {"GATEWAY_STATE__SQLITE": str(self.tmp / f"usage-{port}.db"), **(env or {})}
        p = self.proc(args, f"gateway-{port}", env)
        g = Gateway(p, port)
        if wait:
            p.wait_http(g.url + "/healthz")
        return g

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
