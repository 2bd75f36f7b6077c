"""Draining (gateway/server_protocol.py `shutdown`): a request the client had already sent on a
kept-alive connection when the drain began is answered, then the connection closes; uvicorn's own
rule closed such a connection at once, and the unread request got a reset.

In-process, under the real uvicorn server and the gateway's protocol class, so the drain can begin at
an exact moment: after the request's bytes reached the server's socket, before the loop read them.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
import uvloop

from gateway.server_protocol import protocol_class
from tests.procs import free_port


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def read_all(conn: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            return out + b"<reset>"
        if not chunk:
            return out
        out += chunk


def test_a_request_sent_before_the_drain_began_is_answered_not_reset() -> None:
    ask = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"

    async def main() -> bytes:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", lifespan="off",
                                               http=protocol_class(65536, 10.0, 30.0), log_level="warning"))
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(ask)
                first = b""
                while not first.endswith(b"ok"):
                    first += await asyncio.to_thread(conn.recv, 65536)
                assert first.startswith(b"HTTP/1.1 200")  # kept alive: the connection now idles
                conn.sendall(ask)  # in the server's socket buffer, not read yet: the loop has not run since
                for c in list(server.server_state.connections):
                    c.shutdown()  # what uvicorn's Server.shutdown does to every connection when it drains
                return await asyncio.to_thread(read_all, conn)
        finally:
            server.should_exit = True
            await task

    second = uvloop.run(main())
    assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"ok"), second  # answered, not reset
    assert b"connection: close" in second.lower()  # and the connection then closed (the drain goes on)
