"""Peer gateways the benchmark compares against: how each is installed (once, cached under
~/.cache/llm-gateway/bench/<name>-<version>) and started, pointed at the same fixed upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CACHE = Path.home() / ".cache" / "llm-gateway" / "bench"

# LiteLLM: pinned to a 2025 release. Never 1.107.0 (a compromised release) nor 1.82.7/1.82.8
# (pulled from PyPI after a compromise).
LITELLM_VERSION = "1.77.7"


@dataclass
class Peer:
    version: str
    # (work dir, port, upstream base URL, cpu) -> (process, readiness URL, readiness headers)
    start: Callable[[Path, int, str, str], tuple[subprocess.Popen[bytes], str, dict[str, str]]]
    warmup_seconds: float = 10.0


def _venv(name: str, version: str, requirement: str) -> Path:
    venv = CACHE / f"{name}-{version}"
    marker = venv / ".installed"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", requirement], check=True)
        marker.write_text(requirement)
    return venv


def start_litellm(work: Path, port: int, upstream: str,
                  cpu: str) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    venv = _venv("litellm", LITELLM_VERSION, f"litellm[proxy]=={LITELLM_VERSION}")
    cfg = work / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        "    litellm_params:\n"
        "      model: openai/bench-model\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: dummy\n"
        "litellm_settings:\n  telemetry: false\n"
        "general_settings:\n  master_key: sk-bench-0123456789abcdef\n")
    env = {k: v for k, v in os.environ.items() if k not in
           ("DATABASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    # bundled price map (no fetch from the internet), no telemetry
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
               LITELLM_DONT_SHOW_FEEDBACK_BOX="True", NO_PROXY="*", no_proxy="*")
    log = open(work / "litellm.log", "wb")
    proc = subprocess.Popen(["taskset", "-c", cpu, str(venv / "bin" / "litellm"), "--config", str(cfg),
                             "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
    return proc, f"http://127.0.0.1:{port}/health/liveliness", {}


VLLM_ROUTER_VERSION = "0.1.17"


def start_vllm_router(work: Path, port: int, upstream: str,
                      cpu: str) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    # The Rust router (tokio) behind a Python launcher; it health-checks its workers at /health,
    # which the benchmark's nginx answers.
    venv = _venv("vllm-router", VLLM_ROUTER_VERSION, f"vllm-router=={VLLM_ROUTER_VERSION}")
    log = open(work / "vllm-router.log", "wb")
    proc = subprocess.Popen(["taskset", "-c", cpu, str(venv / "bin" / "vllm-router"), "--host", "127.0.0.1",
                             "--port", str(port), "--worker-urls", upstream, "--policy", "round_robin",
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    return proc, f"http://127.0.0.1:{port}/health", {}


PEERS: dict[str, Peer] = {
    "litellm": Peer(LITELLM_VERSION, start_litellm),
    "vllm-router": Peer(VLLM_ROUTER_VERSION, start_vllm_router, warmup_seconds=3.0),
}
