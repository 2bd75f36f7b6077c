"""gateway/api/client_writer.write_whole: a fixed-length answer in one write, byte for byte what
uvicorn's own two `send` calls frame (Date aside), keep-alive and close honoured; and where it would
not be exactly that (HEAD, a started response, access logging), it declines and writes nothing.

In-process, under the real uvicorn server and httptools protocol the gateway runs, over raw sockets.
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import uvicorn
import uvloop

from gateway.api.client_writer import write_whole
from tests.procs import free_port

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"abc")]


def make_app(log: list[Any]) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        path = scope["path"]
        extra = [(b"connection", b"close")] if path.endswith("/close") else []
        if path.startswith("/whole"):
            log.append(wrote := write_whole(send, 200, [*HEADERS, *extra], BODY))
            if wrote:
                log.append(write_whole(send, 200, HEADERS, BODY))  # started: must decline
                return
        # uvicorn's own framing of the same answer (also the fallback after a decline)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*HEADERS, *extra, (b"content-length", b"%d" % len(BODY))]})
        await send({"type": "http.response.body", "body": BODY, "more_body": False})
    return app


def exchange(port: int, requests: list[bytes]) -> bytes:
    """Sends the requests one after another on one connection; returns all bytes until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        out = b""
        for req in requests:
            s.sendall(req)
            expect = out.count(b"HTTP/1.1 ") + 1
            while out.count(b"HTTP/1.1 ") < expect or not out.endswith(BODY) and b"HEAD" not in req:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
            if b"HEAD" in req:
                while not out.endswith(b"\r\n\r\n"):
                    out += s.recv(65536)
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(65536):
            out += chunk
        return out


def no_date(raw: bytes) -> bytes:
    return re.sub(rb"date: [^\r]*\r\n", b"", raw)


def run(access_log: bool, calls: list[tuple[str, list[bytes]]]) -> tuple[list[bytes], list[Any]]:
    log: list[Any] = []

    async def main() -> list[bytes]:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(make_app(log), host="127.0.0.1", port=port, loop="none",
                                               http="httptools", log_level="warning", lifespan="off",
                                               access_log=access_log))
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(100):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            return [await asyncio.to_thread(exchange, port, reqs) for _, reqs in calls]
        finally:
            server.should_exit = True
            await task

    return uvloop.run(main()), log


def post(path: str, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/%s\r\nhost: x\r\ncontent-length: 2\r\n%s\r\n{}" % (path.encode(), version, extra)


def test_one_write_frames_exactly_as_uvicorn_and_keeps_the_connection() -> None:
    calls = [("whole", [post("/whole"), post("/whole")]), ("asgi", [post("/asgi"), post("/asgi")])]
    (whole, asgi), log = run(False, calls)
    assert log == [True, False, True, False]  # engaged for each answer; a second call on a started one declines
    assert no_date(whole) == no_date(asgi)
    assert whole.count(b"HTTP/1.1 200 OK\r\n") == 2 and b"connection: close" not in whole  # kept alive
    assert b"server: uvicorn\r\n" in whole and b"content-length: 11\r\n" in whole


def test_close_is_honoured_whether_asked_by_the_answer_or_implied_by_http_1_0() -> None:
    calls = [("whole", [post("/whole/close")]), ("asgi", [post("/asgi/close")]),
             ("whole10", [post("/whole", b"1.0")]), ("asgi10", [post("/asgi", b"1.0")])]
    (whole, asgi, whole10, asgi10), log = run(False, calls)
    assert log == [True, False, True, False]
    assert no_date(whole) == no_date(asgi) and whole.count(b"connection: close") == 1
    assert no_date(whole10) == no_date(asgi10) and b"connection: close\r\n" in whole10
    # the server closed after each (exchange returned on EOF with one answer)
    assert whole.count(b"HTTP/1.1") == 1 and whole10.count(b"HTTP/1.1") == 1


def test_declines_head_and_access_logging_and_uvicorn_frames_those() -> None:
    head = b"HEAD /whole HTTP/1.1\r\nhost: x\r\n\r\n"
    (raw,), log = run(False, [("head", [head])])
    assert log == [False] and raw.startswith(b"HTTP/1.1 200 OK") and not raw.endswith(BODY)
    (raw,), log = run(True, [("logged", [post("/whole")])])
    assert log == [False] and raw.endswith(BODY)  # uvicorn's send wrote it (and logged it)


def test_declines_what_is_not_uvicorns_send() -> None:
    async def send(message: dict) -> None:
        raise AssertionError("must not be called")
    assert write_whole(send, 200, HEADERS, BODY) is False
    assert write_whole(lambda m: None, 200, HEADERS, BODY) is False
