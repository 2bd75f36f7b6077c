"""`server.*` keys, `serve --host`, GATEWAY_* environment overrides and SIGTERM, on running gateways.

Loopback is all of 127.0.0.0/8 on Linux, so 127.0.0.2 and 127.0.0.3 are distinct listen
addresses a test can bind without any network setup.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.procs import Gateway, Spawner, free_port

MESSAGES = [{"role": "user", "content": "hi"}]


def serve(spawn: Spawner, config: dict[str, Any], listen: str, *args: str,
          env: dict[str, str] | None = None) -> Gateway:
    """`python -m gateway serve` with extra arguments; waits until it answers on `listen`."""
    port = free_port()
    path = spawn.tmp / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    p = spawn.proc([sys.executable, "-m", "gateway", "serve", "--port", str(port), "--config", str(path), *args],
                   f"gateway-{port}", env)
    p.wait_http(f"http://{listen}:{port}/healthz")
    g = Gateway(p, port)
    g.url, g.v1 = f"http://{listen}:{port}", f"http://{listen}:{port}/v1"
    return g


def read_response(conn: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status line, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, body
        body += chunk
    return head.split(b"\r\n")[0], body


def refused(host: str, port: int) -> bool:
    try:
        httpx.get(f"http://{host}:{port}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


@pytest.fixture(scope="module")
def debug_gw(module_spawn: Spawner) -> dict[str, Any]:
    """server.host 127.0.0.2, log_level debug, a 0.5 s drain; the SIGTERM test (last) ends it."""
    up = module_spawn.double("long", "m")
    empty = free_port()
    gw = serve(module_spawn, {"server": {"host": "127.0.0.2", "log_level": "debug", "drain_timeout": 0.5},
                              "autodiscover": {"enabled": True, "ports": [empty]},
                              "backends": [{"name": "long", "kind": "vllm", "url": up.url}]}, "127.0.0.2")
    return {"gw": gw, "up": up, "empty": empty}


def test_server_host_and_debug_log_level(debug_gw: dict[str, Any]) -> None:
    gw = debug_gw["gw"]
    assert refused("127.0.0.1", gw.port)  # listens on server.host only
    line = f"DEBUG gateway.autodiscover: nothing recognisable at http://127.0.0.1:{debug_gw['empty']}"
    assert line in gw.proc.output()


def test_environment_overrides_and_host_flag(spawn: Spawner, debug_gw: dict[str, Any]) -> None:
    up = debug_gw["up"]
    config = {"server": {"host": "127.0.0.2", "log_level": "warning"},
              "backends": [{"name": "from-file", "kind": "vllm", "url": up.url}]}
    env = {"GATEWAY_BACKENDS": json.dumps([{"name": n, "kind": "vllm", "url": up.url} for n in ("env-a", "env-b")]),
           "GATEWAY_ROUTING__AFFINITY": "false"}
    gw = serve(spawn, config, "127.0.0.3", "--host", "127.0.0.3", env=env)
    assert refused("127.0.0.2", gw.port)  # --host wins over server.host
    # GATEWAY_BACKENDS replaces the file's backends; the file's other keys still apply
    assert [b["name"] for b in httpx.get(gw.url + "/admin/backends").json()["backends"]] == ["env-a", "env-b"]
    served = {httpx.post(gw.v1 + "/chat/completions", timeout=10, headers={"X-Session-Id": "one-session"},
                         json={"model": "m", "messages": MESSAGES}).headers["x-llm-gateway-backend"]
              for _ in range(4)}
    assert served == {"env-a", "env-b"}  # GATEWAY_ROUTING__AFFINITY=false: a session is not pinned
    gw.proc.popen.send_signal(signal.SIGTERM)
    gw.proc.popen.wait(10)
    log = gw.proc.log_path.read_text()
    # log_level: warning from the file: the shutdown warning shows, no INFO line does
    assert "WARNING gateway: draining" in log and "INFO" not in log, log


def test_sigterm_readyz_503_then_drain_timeout_cuts_a_long_stream(debug_gw: dict[str, Any]) -> None:
    gw, up = debug_gw["gw"], debug_gw["up"]
    completed = up.stats()["completed"]
    events: list[str] = []
    ended = threading.Event()

    def stream() -> None:  # 40 chunks 0.2 s apart: ~8 s, far longer than the 0.5 s drain
        try:
            with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30, json={
                    "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"chunks": 40, "delay": 0.2}}) as r:
                events.extend(ln for ln in r.iter_lines() if ln.startswith("data:"))
        except httpx.TransportError:
            pass
        ended.set()

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 10
    while len(events) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with socket.create_connection(("127.0.0.2", gw.port), timeout=10) as conn:
        ask = b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n"
        conn.sendall(ask)
        assert read_response(conn)[0] == b"HTTP/1.1 200 OK"  # ready, and the connection is now kept alive
        # Stopped, the gateway receives SIGTERM and the next /readyz on that connection together:
        # on resume it handles the signal first. (Otherwise the ~0.1 s between the signal and the
        # listener closing is too short to observe.)
        gw.proc.popen.send_signal(signal.SIGSTOP)
        try:
            gw.proc.popen.send_signal(signal.SIGTERM)
            conn.sendall(ask)
        finally:
            gw.proc.popen.send_signal(signal.SIGCONT)
        status, body = read_response(conn)
    assert status == b"HTTP/1.1 503 Service Unavailable" and json.loads(body)["status"] == "not_ready"
    assert ended.wait(10)  # drain_timeout ended the stream early
    assert gw.proc.popen.wait(10) is not None
    assert events and events[-1] != "data: [DONE]" and len(events) < 40
    assert up.stats()["completed"] == completed  # the upstream never finished it either
    t.join(5)

