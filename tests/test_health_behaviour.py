"""Backend states and the `health.*` keys, observed on a running gateway.

The doubles record when each probe (GET /v1/models) arrives, so probe spacing is measured where it
lands. Lower bounds on spacing are firm (a sleep is never shorter than asked, load only lengthens
it); upper bounds keep a 5x margin for this loaded machine. The intervals are chosen so that each
check also rules out the neighbouring setting: a ready backend probed at not_ready_interval would
break the ready gap's lower bound, a loading one probed at `interval` its upper bound.
"""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.procs import Double, Gateway, Spawner

INTERVAL, NOT_READY, DOWN_MAX, TIMEOUT = 1.0, 0.1, 0.8, 0.5
MESSAGES = [{"role": "user", "content": "hi"}]


def wait_for(cond: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return got


def probes(d: Double) -> list[float]:
    return httpx.get(d.url + "/_probes").json()


def set_probe(d: Double, **query: str) -> int:
    """Make the double's GET /v1/models answer differently; returns the index of the first probe
    that gets the new answer."""
    return httpx.post(d.url + "/_probe", params=query).json()["from_probe"]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def backend(gw: Gateway, name: str) -> dict[str, Any]:
    return next(b for b in httpx.get(gw.url + "/admin/backends").json()["backends"] if b["name"] == name)


def chat(gw: Gateway, model: str) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", timeout=30, json={"model": model, "messages": MESSAGES})


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> Iterator[dict[str, Any]]:
    specs = {"steady": "m", "phoenix": "m", "loading": "lm", "wobbly": "wm"}
    with ThreadPoolExecutor(len(specs) + 1) as pool:
        futs = {n: pool.submit(module_spawn.double, n, m) for n, m in specs.items()}
        ollama = pool.submit(module_spawn.start_double, "ollama_server", "/api/version", "--models", "llama3.2")
    d: dict[str, Double] = {n: f.result() for n, f in futs.items()}
    set_probe(d["loading"], status="503")  # loading from its first probe on (llama-server / vLLM style)
    gw = module_spawn.gateway({
        "health": {"interval": INTERVAL, "not_ready_interval": NOT_READY, "down_max_interval": DOWN_MAX,
                   "timeout": TIMEOUT},
        # the plain OpenAI kind reads a 503 from GET /v1/models as `loading` (vLLM's as `down`)
        "backends": [*({"name": n, "kind": "openai" if n == "loading" else "vllm", "url": x.url}
                       for n, x in d.items()),
                     {"name": "cold", "kind": "ollama", "url": ollama.result().url}],
        "models": [{"name": "m", "backends": [{"backend": "phoenix", "weight": 100}, "steady"]}]})
    yield {"gw": gw, **d}


def test_swapped_out_backend_is_served_and_turns_ready(env: dict[str, Any]) -> None:
    gw = env["gw"]
    cold = backend(gw, "cold")  # Ollama with a model installed but none resident
    assert cold["state"] == "swapped_out" and cold["residency"] == {"llama3.2:latest": "unloaded"}
    assert "llama3.2:latest" in {m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]}
    assert httpx.get(gw.url + "/readyz").json()["backends"]["cold"] == "swapped_out"
    r = chat(gw, "llama3.2:latest")
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "cold"
    wait_for(lambda: backend(gw, "cold")["state"] == "ready", 5 * INTERVAL * 1.2 + 5)  # the request loaded it


def test_loading_backend_is_probed_every_not_ready_interval(env: dict[str, Any]) -> None:
    gw, d = env["gw"], env["loading"]
    b = backend(gw, "loading")
    assert b["state"] == "loading" and "injected probe failure" in b["detail"]
    assert chat(gw, "lm").status_code == 404  # a loading backend's models are not known yet
    times = wait_for(lambda: (t := probes(d)) and len(t) >= 8 and t, 8 * NOT_READY * 5 + 10)
    g = gaps(times[1:])  # from the monitor's loop on (the first was the start-up round)
    assert min(g) >= 0.8 * NOT_READY - 0.01, g
    assert statistics.median(g) <= 5 * NOT_READY, g


def test_ready_backend_is_probed_every_interval(env: dict[str, Any]) -> None:
    d = env["steady"]
    times = wait_for(lambda: (t := probes(d)) and len(t) >= 4 and t, 4 * INTERVAL * 5 + 10)
    g = gaps(times)
    assert min(g) >= 0.8 * INTERVAL - 0.01, g
    assert statistics.median(g) <= 5 * INTERVAL, g


def test_down_backend_backs_off_to_down_max_interval_then_a_probe_brings_it_back(env: dict[str, Any]) -> None:
    gw, d = env["gw"], env["wobbly"]
    first = set_probe(d, status="500")  # GET /v1/models now fails: the backend is down
    expected = [min(NOT_READY * 2 ** k, DOWN_MAX) for k in range(7)]  # 0.1, 0.2, 0.4, 0.8, 0.8 ...
    budget = INTERVAL * 1.2 + sum(expected) * 5 + 10
    times = wait_for(lambda: (t := probes(d)) and len(t) >= first + len(expected) + 1 and t, budget)
    g = gaps(times[first:first + len(expected) + 1])
    assert backend(gw, "wobbly")["state"] == "down"
    for got, want in zip(g, expected):
        assert got >= 0.8 * want - 0.01, (g, expected)  # doubling from not_ready_interval ...
    assert max(g[4:]) <= 5 * DOWN_MAX, g  # ... and capped (uncapped, the 7th gap would be 6.4 s)
    set_probe(d, status="0")
    wait_for(lambda: backend(gw, "wobbly")["state"] == "ready", 5 * DOWN_MAX * 1.2 + 5)
    assert chat(gw, "wm").status_code == 200


def test_probe_timeout_marks_a_wedged_backend_down(env: dict[str, Any]) -> None:
    gw, d = env["gw"], env["wobbly"]
    wait_for(lambda: backend(gw, "wobbly")["state"] == "ready", 10)
    first = set_probe(d, hang="1")  # GET /v1/models now never answers
    try:
        arrived = wait_for(lambda: (t := probes(d)) and len(t) > first and t[first], INTERVAL * 1.2 * 5 + 5)
        wait_for(lambda: backend(gw, "wobbly")["state"] == "down", TIMEOUT * 5 + 5)
        took = time.monotonic() - arrived  # both clocks are CLOCK_MONOTONIC: one per machine
        assert TIMEOUT - 0.05 <= took <= 5 * TIMEOUT, took  # health.timeout, not the 5 s default
        assert backend(gw, "wobbly")["detail"] == "probe timed out"
    finally:
        set_probe(d, status="0")
    wait_for(lambda: backend(gw, "wobbly")["state"] == "ready", 5 * DOWN_MAX * 1.2 + 5)


def test_refused_connection_marks_down_at_once_and_a_probe_brings_it_back(
        env: dict[str, Any], module_spawn: Spawner) -> None:
    gw, phoenix = env["gw"], env["phoenix"]
    assert chat(gw, "m").headers["x-llm-gateway-backend"] == "phoenix"  # weight 100: always first
    phoenix.proc.stop(signal.SIGKILL)
    r = chat(gw, "m")  # refused: phoenix is out at once, the request moves to steady
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "steady"
    assert backend(gw, "phoenix")["state"] == "down"
    assert chat(gw, "m").headers["x-llm-gateway-backend"] == "steady"
    module_spawn.start_double("openai_server", "/health", "--name", "phoenix", "--models", "m",
                              name="phoenix", port=phoenix.port)
    wait_for(lambda: backend(gw, "phoenix")["state"] == "ready", 5 * DOWN_MAX * 1.2 + 5)
    assert chat(gw, "m").headers["x-llm-gateway-backend"] == "phoenix"
