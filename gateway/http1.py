"""A lean HTTP/1.1 client for upstream calls: pooled keep-alive connections, httptools parsing.

Why not a general-purpose client: profiling the gateway under load showed aiohttp's client side
(request objects, auto headers, payload registry, writer) taking ~45% of the process's CPU. A
proxy only ever sends a prebuilt POST or GET with a byte body and reads a status, a few headers
and the body as it arrives; this does exactly that on asyncio protocols with the same C parser
uvicorn uses. Measurements are in README "Performance" and bench/RESULTS.md.

Concurrency: one Pool per event loop; a connection serves one request at a time and goes back to
the idle list only when its answer was read completely and the server allows keep-alive.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # pause reading the upstream when this much body waits for a slow client
LOW_WATER = 64 * 1024


class TransportError(Exception):
    """Base of the client's failures (mapped to GatewayErrors in gateway/upstream.py)."""


class ConnectFailed(TransportError, ConnectionError):
    pass


class ConnectionClosed(TransportError, ConnectionError):
    pass


class ProtocolError(TransportError):
    pass


class ReadTimeout(TransportError, TimeoutError):
    pass


class Origin:
    __slots__ = ("key", "host", "port", "ssl", "host_header")

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.key = (scheme, host, port)
        self.host = host
        self.port = port
        self.ssl = ssl.create_default_context() if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        self.host_header = (host if port == default else f"{host}:{port}").encode()


class _Conn(asyncio.Protocol):
    """One upstream connection; also the httptools parser's callback target."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done: asyncio.Future[None] | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.bytes_in = 0
        self.last_activity = 0.0
        self.deadline: float | None = None
        self.first_byte_timeout = 0.0
        self.read_timeout = 0.0
        self.body_started = False
        self.timer: asyncio.TimerHandle | None = None
        self.sink: Callable[[bytes], bool] | None = None

    # -- asyncio protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed HTTP response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            why = f": {exc}" if exc else ""
            self._fail(ConnectionClosed(f"connection closed before the answer was complete{why}"))
        self.pool._lost(self)

    # -- httptools callbacks --------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if not self.body_started:
            # The first-byte wait is over: from now on the (shorter) idle limit applies.
            self.body_started = True
            if self.timer is not None:
                self.timer.cancel()
                self._check_idle()  # re-armed with the idle limit (and the total deadline)
        sink = self.sink
        if sink is not None and not self.body:  # nothing queued ahead of it: order is kept
            try:
                if sink(body):
                    return  # forwarded in this callback; no queue, no task wake-up
            except Exception as exc:  # a bug in the sink: fail this answer, not the event loop
                self._fail(exc)
                self.abort()
                return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True  # backpressure: a slow client slows the upstream read, no unbounded buffer
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- request side ---------------------------------------------------------------------------
    def send(self, data: bytes, read_timeout: float, total_timeout: float | None = None,
             first_byte_timeout: float | None = None) -> asyncio.Future[None]:
        self._reset()
        self.headers_done = self.loop.create_future()
        self.last_activity = now = self.loop.time()
        self.deadline = now + total_timeout if total_timeout else None
        self.first_byte_timeout = first_byte_timeout or read_timeout
        self.read_timeout = read_timeout
        first = min(self.first_byte_timeout, total_timeout) if total_timeout else self.first_byte_timeout
        self.timer = self.loop.call_later(first, self._check_idle)
        assert self.transport is not None
        self.transport.write(data)
        return self.headers_done

    def _check_idle(self) -> None:
        # One timer per request, re-armed lazily: cheaper than resetting it on every read.
        if self.complete or self.closed:
            return
        now = self.loop.time()
        idle = now - self.last_activity
        # Until the answer's first body byte (a long prefill, a model load) the generous
        # first-byte timeout applies; after it, the idle timeout between chunks.
        limit = self.read_timeout if self.body_started else self.first_byte_timeout
        if self.deadline is not None and now >= self.deadline:
            self._fail(ReadTimeout("the upstream answer took longer than the total timeout"))
            self.abort()
        elif idle >= limit:
            what = "between chunks" if self.body_started else "before its first byte"
            self._fail(ReadTimeout(f"the upstream sent nothing for {limit:g}s {what}"))
            self.abort()
        else:
            wait = limit - idle
            if self.deadline is not None:
                wait = min(wait, self.deadline - now)
            self.timer = self.loop.call_later(wait, self._check_idle)

    async def next_chunk(self) -> bytes:
        """The next piece of body as it arrived; b"" at the end of the answer."""
        while True:
            if self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < LOW_WATER and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        hd = self.headers_done
        if hd is not None and not hd.done():
            hd.set_exception(exc)
            hd.exception()  # mark retrieved: the caller may already have gone (cancelled)
        self._wake()

    def abort(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def finish(self) -> bool:
        """After a request: True if the connection can serve another one."""
        self.sink = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return self.complete and self.keep_alive and not self.closed and self.error is None \
            and self.transport is not None and not self.transport.is_closing()


class Response:
    """An upstream answer whose body is read on demand. Call release() or close() exactly once."""

    __slots__ = ("status", "headers", "_conn", "_pool", "_done")

    def __init__(self, conn: _Conn, pool: Pool) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._conn = conn
        self._pool = pool
        self._done = False

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def read(self) -> bytes:
        parts = []
        while chunk := await self._conn.next_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def attach_sink(self, sink: Callable[[bytes], bool] | None) -> None:
        """Offer each body piece to `sink` as it is parsed, before queueing it; the sink returns
        False to decline (the piece is then queued for next_chunk as usual). None detaches."""
        self._conn.sink = sink

    async def iter_chunks(self) -> Any:
        conn = self._conn
        while chunk := await conn.next_chunk():
            yield chunk

    def release(self) -> None:
        """Return the connection to the pool if its answer was read completely, else close it."""
        if not self._done:
            self._done = True
            self._pool._release(self._conn)

    def close(self) -> None:
        """Abort the connection: how the upstream learns that nobody wants the rest."""
        if not self._done:
            self._done = True
            self._conn.abort()
            self._pool._release(self._conn)


class Pool:
    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int,
                 max_idle_per_origin: int = 512, total_timeout: float | None = None,
                 first_byte_timeout: float | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.first_byte_timeout = first_byte_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle_per_origin
        self.loop = asyncio.get_running_loop()
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.origins: dict[str, tuple[Origin, bytes]] = {}
        self.open = 0
        self.slot_waiters: deque[asyncio.Future[None]] = deque()

    def target(self, url: str) -> tuple[Origin, bytes]:
        """(origin, request path) for a URL; cached, URLs come from config so the set is small."""
        hit = self.origins.get(url)
        if hit is None:
            u = urlsplit(url)
            port = u.port or (443 if u.scheme == "https" else 80)
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            origin = next((o for o, _ in self.origins.values() if o.key == (u.scheme, u.hostname, port)), None)
            hit = self.origins[url] = (origin or Origin(u.scheme, u.hostname or "", port), path.encode())
        return hit

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                      read_timeout: float | None = None) -> Response:
        origin, path = self.target(url)
        head = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), path, origin.host_header)]
        for k, v in headers.items():
            head.append(b"%s: %s\r\n" % (k.encode(), v.encode()))
        if body is not None:
            head.append(b"Content-Length: %d\r\n\r\n" % len(body))
            data = b"".join(head) + body
        else:
            head.append(b"\r\n")
            data = b"".join(head)
        timeout = read_timeout or self.read_timeout
        conn = self._idle(origin)
        if conn is not None:
            try:
                return await self._send(conn, data, timeout)
            except ConnectionClosed:
                # A kept-alive connection the server had already closed: nothing was processed
                # (no byte came back), so sending again on a fresh connection is safe.
                if conn.bytes_in:
                    raise
        return await self._send(await self._connect(origin), data, timeout)

    async def _send(self, conn: _Conn, data: bytes, timeout: float) -> Response:
        try:
            await conn.send(data, timeout, self.total_timeout,
                            self.first_byte_timeout if timeout == self.read_timeout else timeout)
        except BaseException:  # includes cancellation: the connection is in an unknown state
            conn.abort()
            self._release(conn)
            raise
        return Response(conn, self)

    def _idle(self, origin: Origin) -> _Conn | None:
        conns = self.idle.get(origin.key)
        while conns:
            c = conns.pop()
            if not c.closed and c.transport is not None and not c.transport.is_closing():
                return c
            self.open -= 1
        return None

    async def _connect(self, origin: Origin) -> _Conn:
        while self.open >= self.max_connections:
            fut = self.loop.create_future()
            self.slot_waiters.append(fut)
            await fut
        self.open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self, origin), origin.host, origin.port, ssl=origin.ssl,
                                            server_hostname=origin.host if origin.ssl else None),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.open -= 1
            self._wake_one()
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {reason}") from exc
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.finish():
            conns = self.idle.setdefault(conn.origin.key, [])
            if len(conns) < self.max_idle:
                conns.append(conn)
                self._wake_one()
                return
            conn.abort()
        elif not conn.closed:
            conn.abort()
        self.open -= 1
        self._wake_one()

    def _lost(self, conn: _Conn) -> None:
        conns = self.idle.get(conn.origin.key)
        if conns and conn in conns:  # an idle connection the server closed
            conns.remove(conn)
            self.open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self.slot_waiters:
            f = self.slot_waiters.popleft()
            if not f.done():
                f.set_result(None)
                return

    def close(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                c.abort()
        self.idle.clear()
