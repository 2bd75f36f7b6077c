"""Bad days: backends dying, hanging, loading, clients leaving, the gateway itself shutting down."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import httpx

from tests.procs import Spawner

MESSAGES = [{"role": "user", "content": "hi"}]


def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a condition (an event or state, never a guess at how long something takes)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_backend_killed_under_steady_load_fails_no_request(spawn: Spawner) -> None:
    a = spawn.double("a", "m")
    b = spawn.double("b", "m")
    gw = spawn.gateway({"backends": [{"name": "a", "kind": "vllm", "url": a.url},
                                     {"name": "b", "kind": "vllm", "url": b.url}]})
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES,
                                                              "x_double": {"delay": 0.02}})
                statuses.append(r.status_code)

    def state() -> dict[str, str]:
        return {x["name"]: x["state"] for x in httpx.get(gw.url + "/admin/backends").json()["backends"]}

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    # steady load on both, then a dies with requests in flight on it (a count of answers, not a clock)
    wait_until(lambda: len(statuses) >= 30 and a.stats()["in_flight"] >= 1)
    a.proc.stop(signal.SIGKILL)
    at_kill = len(statuses)
    wait_until(lambda: state()["a"] == "down" and len(statuses) >= at_kill + 60, timeout=60)
    stop.set()
    for t in threads:
        t.join(30)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert state() == {"a": "down", "b": "ready"}


def test_sigterm_drains_in_flight_streams_then_exits(spawn: Spawner) -> None:
    up = spawn.double("drain", "m")
    gw = spawn.gateway({"server": {"drain_timeout": 20}, "backends": [{"name": "drain", "kind": "vllm",
                                                                       "url": up.url}]})
    events: list[str] = []

    def stream() -> None:  # 10 chunks; the upstream holds after the first until released
        with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30, json={
                "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"chunks": 10, "hold": True}}) as r:
            events.extend(ln for ln in r.iter_lines() if ln.startswith("data:"))

    def refused() -> bool:
        try:
            httpx.get(gw.url + "/healthz", timeout=2)
        except httpx.TransportError:
            return True
        return False

    t = threading.Thread(target=stream)
    t.start()
    wait_until(lambda: up.stats()["in_flight"] == 1)
    gw.proc.popen.send_signal(signal.SIGTERM)
    wait_until(refused)  # no longer accepting ...
    assert t.is_alive() and up.stats()["in_flight"] == 1  # ... while the stream is still held open
    up.release()
    t.join(30)
    assert events[-1] == "data: [DONE]" and len(events) >= 11  # the in-flight stream finished whole
    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is over (exit by signal)
    assert gw.proc.popen.wait(20) in (0, -signal.SIGTERM)
    log = gw.proc.output()
    assert "draining: 1 request(s) in flight" in log and "Finished server process" in log


def test_status_command_prints_the_backends(spawn: Spawner) -> None:
    import subprocess
    import sys
    up = spawn.double("st", "m")
    import os
    gw = spawn.gateway({"auth": {"api_keys": ["k-status-client-0001"], "admin_keys": ["k-status-admin-00001"]},
                        "backends": [{"name": "st", "kind": "vllm", "url": up.url},
                                     {"name": "gone", "kind": "vllm", "url": "http://127.0.0.1:9"}]})
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--url", gw.url],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "GATEWAY_ADMIN_KEY": "k-status-admin-00001"})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["BACKEND", "KIND", "STATE"]
    row = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert row["st"][1:3] == ["vllm", "ready"] and "m" in row["st"]
    assert row["gone"][2] == "starting"
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_ADMIN_KEY", "GATEWAY_API_KEY")}
    denied = subprocess.run([sys.executable, "-m", "gateway", "status", "--url", gw.url], capture_output=True,
                            text=True, timeout=30, env=env)
    assert denied.returncode == 1 and "401" in denied.stdout


def test_hanging_backend_times_out_then_the_request_is_retried_elsewhere(spawn: Spawner) -> None:
    hung = spawn.double("hung", "m", "--hang")
    good = spawn.double("good", "m")
    gw = spawn.gateway({"upstream": {"first_byte_timeout": 1.0},
                        "backends": [{"name": "hung", "kind": "vllm", "url": hung.url, "weight": 100},
                                     {"name": "good", "kind": "vllm", "url": good.url}]})
    started = time.monotonic()
    r = httpx.post(gw.v1 + "/chat/completions", timeout=30, json={"model": "m", "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "good"
    assert 1.0 <= time.monotonic() - started < 5
    assert hung.stats()["received"] == 1  # it was tried first (weight 100) and given up on
    assert 'llm_gateway_upstream_errors_total{backend="hung",code="upstream_timeout"} 1.0' in \
        httpx.get(gw.url + "/metrics").text


def test_keepalive_comments_while_the_first_token_is_awaited(spawn: Spawner) -> None:
    up = spawn.double("slowstart", "m")
    gw = spawn.gateway({"upstream": {"stream_keepalive": 0.1},
                        "backends": [{"name": "slowstart", "kind": "vllm", "url": up.url}]})
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30, json={
            "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"first_delay": 1.5}}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    first_data = next(i for i, ln in enumerate(lines) if ln.startswith("data:"))
    # sent while the prefill went on: 15 nominally (1.5 s / 0.1 s); 3 leaves a 5x margin for a busy machine
    assert lines[:first_data].count(": keepalive") >= 3
    assert lines[-1] == "data: [DONE]" and ": keepalive" not in lines[first_data:]


def test_session_affinity_keeps_a_session_on_one_replica(spawn: Spawner) -> None:
    ups = [spawn.double(n, "m") for n in ("r1", "r2", "r3")]
    gw = spawn.gateway({"routing": {"affinity_from_user": True},
                        "backends": [{"name": u.name, "kind": "vllm", "url": u.url} for u in ups]})

    def where(session: str, by_user: bool = False) -> str:
        kw = {"json": {"model": "m", "messages": MESSAGES, "user": session}} if by_user else {
            "json": {"model": "m", "messages": MESSAGES}, "headers": {"X-Session-Id": session}}
        return httpx.post(gw.v1 + "/chat/completions", timeout=10, **kw).headers["x-llm-gateway-backend"]

    homes = {s: where(s) for s in (f"session-{i}" for i in range(24))}
    assert len(set(homes.values())) == 3  # sessions spread over the replicas ...
    for s, home in list(homes.items())[:8]:
        assert {where(s) for _ in range(3)} == {home}  # ... and each stays on its own
    assert {where("alice", by_user=True) for _ in range(3)} == {where("alice")}  # `user` counts too (opt-in)
    # a replica going away moves only its own sessions
    lost = homes["session-0"]
    next(u for u in ups if u.name == lost).proc.stop(signal.SIGKILL)
    for s, home in homes.items():
        now = where(s)
        assert now != lost and (home == lost or now == home), (s, home, now)


def test_fallback_model_serves_when_the_model_cannot(spawn: Spawner) -> None:
    small = spawn.double("small", "small-model")
    gw = spawn.gateway({
        "backends": [{"name": "big", "kind": "vllm", "url": "http://127.0.0.1:9"},  # never up
                     {"name": "small", "kind": "vllm", "url": small.url}],
        "models": [{"name": "big-model", "backends": [{"backend": "big", "model": "x"}],
                    "fallbacks": ["small-model"]}]})
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "big-model", "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "small"
    assert small.requests()[-1]["body"]["model"] == "small-model"


def test_consecutive_server_errors_eject_a_backend(spawn: Spawner) -> None:
    bad = spawn.double("bad", "m")
    good = spawn.double("good", "m")
    gw = spawn.gateway({"routing": {"eject_after_errors": 3},
                        "backends": [{"name": "bad", "kind": "vllm", "url": bad.url, "weight": 100},
                                     {"name": "good", "kind": "vllm", "url": good.url}]})
    # three different requests (the same one resent counts once: tests/test_security_errors.py)
    fails = [{"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "x_double": {"status": 500}}
             for i in range(3)]
    codes = [httpx.post(gw.v1 + "/chat/completions", json=fail).status_code for fail in fails]
    assert codes == [502, 502, 502]  # a 500 is not retried (it may be the request's fault) ...
    state = {b["name"]: b["state"] for b in httpx.get(gw.url + "/admin/backends").json()["backends"]}
    assert state["bad"] == "down"  # ... but three of different requests in a row take the backend out
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert r.headers["x-llm-gateway-backend"] == "good"


def test_an_operator_drains_one_backend(spawn: Spawner) -> None:
    # TGI doubles: they count the /health requests of the gateway's probes, so the test can wait for
    # probe rounds instead of sleeping.
    a, b = (spawn.start_double("tgi_server", "/health", "--model-id", "m", name=n) for n in ("da", "db"))
    gw = spawn.gateway({"health": {"interval": 0.2, "not_ready_interval": 0.2},
                        "backends": [{"name": "da", "kind": "tgi", "url": a.url},
                                     {"name": "db", "kind": "tgi", "url": b.url}]})

    def states() -> dict[str, str]:
        return {x["name"]: x["state"] for x in httpx.get(gw.url + "/admin/backends").json()["backends"]}

    held = threading.Thread(target=lambda: httpx.post(gw.v1 + "/chat/completions", timeout=30, json={
        "model": "m", "messages": MESSAGES, "x_double": {"hold": True}}))
    held.start()
    wait_until(lambda: a.stats()["held"] + b.stats()["held"] == 1)
    busy, other = (a, b) if a.stats()["held"] else (b, a)
    assert httpx.post(f"{gw.url}/admin/backends/{busy.name}/drain").json()["state"] == "draining"
    busy.release()
    held.join(10)  # the in-flight request on the drained backend finished normally
    assert not held.is_alive() and busy.stats()["completed"] == 1
    # Probes go on while drained and must not undo it: wait until two whole probe rounds ran after
    # the drain (the third has begun), with nothing in flight anywhere.
    seen = busy.stats()["health_checks"]
    wait_until(lambda: busy.stats()["health_checks"] >= seen + 3)
    assert states() == {busy.name: "draining", other.name: "ready"}
    # Both idle: ties alternate (round robin), so a drain undone would show in these four.
    for _ in range(4):
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == other.name
    assert busy.stats()["received"] == 1
    httpx.post(f"{gw.url}/admin/backends/{busy.name}/undrain")
    wait_until(lambda: states()[busy.name] == "ready")
    served = {httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES})
              .headers["x-llm-gateway-backend"] for _ in range(4)}
    assert served == {"da", "db"}  # back in the pool
    assert httpx.post(f"{gw.url}/admin/backends/nope/drain").status_code == 404


def test_keepalives_while_an_upstream_withholds_even_its_headers(spawn: Spawner) -> None:
    # An upstream that answers nothing for a while (Ollama loading a model, a saturated FastChat
    # worker): the SSE response starts with comments; the request stays retryable meanwhile.
    slow_fail = spawn.double("slowfail", "m", "--headers-delay", "1.5", "--fail-status", "503")
    good = spawn.double("good", "m")
    gw = spawn.gateway({"upstream": {"stream_keepalive": 0.1},
                        "backends": [{"name": "slowfail", "kind": "vllm", "url": slow_fail.url, "weight": 100},
                                     {"name": "good", "kind": "vllm", "url": good.url}]})
    body = {"model": "m", "messages": MESSAGES, "stream": True}  # the slow one finally fails (503)
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30, json=body) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln]
    first_data = next(i for i, ln in enumerate(lines) if ln.startswith("data:"))
    assert lines[:first_data].count(": keepalive") >= 3  # 15 nominally (1.5 s / 0.1 s): a 5x margin
    assert lines[-1] == "data: [DONE]" and "error" not in "".join(lines)  # retried on `good` after the comments
    # The headers left before anyone answered, so they name no backend; a comment names the one
    # that did, just ahead of its answer.
    assert "x-llm-gateway-backend" not in r.headers and lines[first_data - 1] == ": backend good"
    assert slow_fail.stats()["received"] == 1 and good.stats()["completed"] == 1
    # nowhere else to go: the committed stream ends with the error as an event
    gw2 = spawn.gateway({"upstream": {"stream_keepalive": 0.1, "max_attempts": 1},
                         "backends": [{"name": "slowfail", "kind": "vllm", "url": slow_fail.url}]})
    with httpx.stream("POST", gw2.v1 + "/chat/completions", timeout=30, json=body) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.status_code == 200 and lines[0] == ": keepalive"
    assert lines[-1] == "data: [DONE]"
    err = httpx.Response(200, content=lines[-2][5:]).json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "server_error"
