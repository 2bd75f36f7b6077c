"""Client-side limits uvicorn lacks (gateway/server_protocol.py), against a real gateway process.

A 120 MiB request header grew the gateway's memory without bound; connections that never finished
their request line held descriptors forever; a body that stopped half-way held its request forever.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.procs import Gateway, Spawner

JSON = {"Content-Type": "application/json"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw(module_spawn: Spawner) -> Gateway:
    up = module_spawn.double("up", "m")
    return module_spawn.gateway({"server": {"header_timeout": 1.0, "body_timeout": 1.0},
                                 "backends": [{"name": "up", "kind": "vllm", "url": up.url}]})


def connect(gw: Gateway) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return s


def read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes (or `timeout`, 10x the limits under test)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def served(gw: Gateway) -> bool:
    return httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=JSON, timeout=30).status_code == 200


def peak_rss_mib(gw: Gateway) -> float:
    with open(f"/proc/{gw.proc.popen.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def envelope(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_a_huge_request_head_is_a_431_and_costs_no_memory(gw: Gateway) -> None:
    before = peak_rss_mib(gw)
    s = connect(gw)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Flood: ")
    sent = 0
    try:
        while sent < 64 * 1024 * 1024:  # up to 64 MiB of one header value; the gateway stops it far sooner
            s.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = read_all(s)
    s.close()
    assert sent < 64 * 1024 * 1024, "the gateway read a 64 MiB header"
    if raw:  # the answer may be lost to the reset the close causes while we still send
        status, err = envelope(raw)
        assert status == 431 and err["code"] == "request_header_too_large"
    assert peak_rss_mib(gw) - before < 20  # bounded by the 64 KiB cap plus a read buffer (5x margin)
    assert served(gw)


def test_a_request_head_over_the_cap_sent_at_once_gets_the_431(gw: Gateway) -> None:
    s = connect(gw)
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000)
                                                                 for i in range(80)))
    status, err = envelope(read_all(s))
    s.close()
    assert status == 431 and err["type"] == "invalid_request_error"


def test_a_large_but_allowed_head_is_served(gw: Gateway) -> None:
    big = {f"x-h{i}": "v" * 1000 for i in range(50)}  # ~50 KiB, under the 64 KiB cap
    r = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers={**JSON, **big}, timeout=30)
    assert r.status_code == 200


def test_slow_and_silent_heads_are_timed_out_while_others_are_served(gw: Gateway) -> None:
    slow = [connect(gw) for _ in range(50)]
    for i, s in enumerate(slow):
        if i % 2:  # half send part of a request line, half nothing at all
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert served(gw)  # everyone else is served meanwhile
    t0 = time.monotonic()
    answers = [read_all(s) for s in slow]
    waited = time.monotonic() - t0
    for s in slow:
        s.close()
    assert waited < 10  # header_timeout 1 s; 10x margin
    for i, raw in enumerate(answers):
        if i % 2:
            status, err = envelope(raw)
            assert status == 408 and err["code"] == "request_timeout"
    assert served(gw)


def test_a_stalled_body_closes_its_connection(gw: Gateway) -> None:
    s = connect(gw)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"model\": \"m\"")
    t0 = time.monotonic()
    raw = read_all(s)
    waited = time.monotonic() - t0
    s.close()
    assert waited < 10 and raw == b""  # closed after the 1 s body_timeout, not held
    assert served(gw)
    assert "Traceback" not in gw.proc.output()


def test_the_cap_holds_for_the_next_request_on_a_kept_alive_connection(gw: Gateway) -> None:
    s = connect(gw)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b"\r\n\r\n" not in first or not first.endswith(b"}"):
        first += s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000)
                                                                 for i in range(100)))
    status, err = envelope(read_all(s))
    s.close()
    assert status == 431 and err["code"] == "request_header_too_large"


def test_a_refused_upload_is_not_read_to_its_end(gw: Gateway) -> None:
    """A 415 (or 401) is decided before the body is read: the connection closes instead of uvicorn
    reading and discarding the rest of a large upload."""
    s = connect(gw)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 5000000\r\n\r\n" + b"x" * 1000)
    t0 = time.monotonic()
    raw = read_all(s)
    s.close()
    status, err = envelope(raw)  # asserts `connection: close`
    assert status == 415 and err["code"] == "unsupported_media_type"
    assert time.monotonic() - t0 < 10  # closed at once, not after the client gave up
