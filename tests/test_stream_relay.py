"""The stream relay's direct path (events written to the client from the upstream's read callback):
that it engages under the real server, that it hands over to the slow path without reordering or
losing a byte, and that a slow client still holds the upstream back."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop

from gateway.api.client_writer import client_transport
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.streaming import Relay, StreamTap
from tests.procs import Spawner, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def test_feed_writes_whole_events_framed_and_declines_everything_it_must_not_touch() -> None:
    t = FakeTransport()
    tap = StreamTap(strip_usage=True)
    relay = Relay(tap, None, t)
    assert relay.feed(EVENT) is False  # busy: the task has not sent the first event yet
    relay.busy = False
    assert relay.feed(EVENT) is True
    assert t.out == [b"%x\r\n%s\r\n" % (len(EVENT), EVENT)]
    assert relay.feed(b'data: {"choices":[') is False  # half an event: the task buffers it
    t.buffered = 10
    assert relay.feed(EVENT) is False  # the client is behind: uvicorn's flow control decides
    t.buffered, t.closing = 0, True
    assert relay.feed(EVENT) is False  # the client is gone
    t.closing = False
    relay.pending = b"data: {"
    assert relay.feed(EVENT) is False  # bytes held by the task go first
    relay.pending = b""
    # An event the tap must read: usage is recorded, the gateway-requested usage event stripped.
    assert relay.feed(USAGE + b"data: [DONE]\n\n") is True
    assert t.out[-1] == b"%x\r\ndata: [DONE]\n\n\r\n" % len(b"data: [DONE]\n\n")
    assert (tap.prompt_tokens, tap.completion_tokens, tap.done) == (3, 4, True)
    assert client_transport(lambda message: None) is None  # not uvicorn's send: the slow path only


def test_direct_path_engages_under_uvicorn_and_loses_nothing(spawn: Spawner,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process so the relay can be watched; the server, app and upstream are the real ones."""
    up = spawn.double("direct", "m")
    accepted: list[int] = []
    feed = Relay.feed

    def counting_feed(self: Relay, chunk: bytes) -> bool:
        ok = feed(self, chunk)
        accepted.append(int(ok))
        return ok

    monkeypatch.setattr(Relay, "feed", counting_feed)
    seen: dict[str, Any] = {}

    async def probe_app(scope: dict, receive: Any, send: Any) -> None:  # what client_transport sees when
        seen["before_start"] = client_transport(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen["after_start"] = client_transport(send)
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        seen["after_end"] = client_transport(send)

    async def main() -> tuple[str, bytes]:
        settings = GatewaySettings.model_validate(
            {"backends": [{"name": "direct", "kind": "openai", "url": up.url}]})
        port, probe_port = free_port(), free_port()
        servers = [uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=p, loop="none", http="httptools",
                                                 log_level="warning", lifespan=lifespan))
                   for app, p, lifespan in ((create_app(settings), port, "on"), (probe_app, probe_port, "off"))]
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(100):
                    if all(s.started for s in servers):
                        break
                    await asyncio.sleep(0.05)
                await client.get(f"http://127.0.0.1:{probe_port}/")
                raw = b""
                async with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={
                        "model": "m", "stream": True, "messages": MESSAGES,
                        "x_double": {"text": " ".join(f"w{i}" for i in range(30)), "delay": 0.005}}) as r:
                    async for part in r.aiter_raw():
                        raw += part
                return r.headers["content-type"], raw
        finally:
            for s in servers:
                s.should_exit = True
            await asyncio.gather(*tasks)

    ctype, raw = uvloop.run(main())
    assert ctype.startswith("text/event-stream")
    content = "".join(m.decode() for m in re.findall(rb'"content":"([^"]*)"', raw))
    assert content == " ".join(f"w{i}" for i in range(30))
    assert raw.endswith(b"data: [DONE]\n\n")
    # One event at a time, 5 ms apart: all but the first (which stamps time-to-first-token on the
    # task's path) leave from the read callback.
    assert sum(accepted) >= 29, accepted
    assert seen["before_start"] is None and seen["after_end"] is None
    assert seen["after_start"] is not None  # fails if a uvicorn upgrade renamed what the fast path uses


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def settled_rss_mib(pid: int, quiet: float = 2.0, timeout: float = 60.0) -> float:
    """The process's RSS once it has stopped growing (no change > 0.25 MiB for `quiet` seconds)."""
    deadline = time.monotonic() + timeout
    last, since = rss_mib(pid), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "RSS never settled"
        time.sleep(0.1)
        now = rss_mib(pid)
        if abs(now - last) > 0.25:
            last, since = now, time.monotonic()
    return last


def test_slow_client_gets_every_event_in_order_and_holds_the_upstream_back(spawn: Spawner) -> None:
    """~20 MB streamed as fast as the upstream can write, to a client that first reads nothing and
    then reads slowly: the direct path must yield to flow control and the slow path, with no byte
    lost, duplicated or reordered across the hand-overs, and the gateway must stop reading the
    upstream instead of holding the answer in its memory."""
    up = spawn.double("fast", "m")
    gw = spawn.gateway({"backends": [{"name": "fast", "kind": "openai", "url": up.url}]})
    words = [f"w{i:06d}" for i in range(120_000)]
    body = httpx.Request("POST", "/", json={"model": "m", "stream": True, "messages": MESSAGES,
                                            "x_double": {"text": " ".join(words)}}).content
    # warm up with the same 1 MB body, not streamed: its copies are then in `before`, not in `held`
    httpx.post(gw.v1 + "/chat/completions", timeout=60, json={"model": "m", "messages": MESSAGES,
                                                              "x_double": {"text": " ".join(words)}}).raise_for_status()
    before = rss_mib(gw.proc.popen.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, fixed: no autotuning
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    # Read nothing until every buffer on the way is full and the gateway's memory stops growing.
    # Kernel socket buffers may hold megabytes (not counted here); the gateway's own memory must
    # not: without backpressure it would hold most of the ~20 MB for a client that does not read.
    deadline = time.monotonic() + 20
    while up.stats()["in_flight"] != 1:  # the upstream is streaming
        assert time.monotonic() < deadline
        time.sleep(0.02)
    held = settled_rss_mib(gw.proc.popen.pid) - before
    data = bytearray()
    sock.settimeout(30)
    reads = 0
    while not data.endswith(b"0\r\n\r\n"):
        part = sock.recv(65536)
        assert part, "connection closed before the stream ended"
        data += part
        reads += 1
        if reads < 200:
            time.sleep(0.002)  # slow for a while, then as fast as it can
    sock.close()
    head, _, chunked = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    payload = dechunk(chunked)
    content = [m.decode() for m in re.findall(rb'"content":"([^"]*)"', payload) if m]  # not the role event's ""
    assert len(content) == len(words) and "".join(content) == " ".join(words), \
        f"{len(content)} of {len(words)} events; first difference at " \
        f"{next((i for i, (c, w) in enumerate(zip(content, words)) if c.strip() != w), None)}"
    assert payload.endswith(b"data: [DONE]\n\n")
    # 3-4 MiB measured here (allocator noise around the 1 MB request body); without backpressure this
    # measured 30 MiB. 15 MiB: 4-5x above the first, 2x below the second.
    assert held < 15, f"the gateway's RSS grew {held:.1f} MiB while the client read nothing"


def dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[j + 2:j + 2 + size])
        assert data[j + 2 + size:j + 4 + size] == b"\r\n"
        i = j + 4 + size
