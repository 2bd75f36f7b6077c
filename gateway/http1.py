"""A lean HTTP/1.1 client for upstream calls: pooled keep-alive connections, httptools parsing.

Why not a general-purpose client: profiling the gateway under load showed aiohttp's client side
(request objects, auto headers, payload registry, writer) taking ~45% of the process's CPU. A
proxy only ever sends a prebuilt POST or GET with a byte body and reads a status, a few headers
and the body as it arrives; this does exactly that on asyncio protocols with the same C parser
uvicorn uses. Measurements are in README "Performance" and bench/RESULTS.md.

Concurrency: one Pool per event loop; a connection serves one request at a time and goes back to
the idle list only when its answer was read completely and the server allows keep-alive.
The connection itself and its framing rules (1xx skipped, reuse only after an exactly-complete
answer, stray bytes close it) are in gateway/http1_conn.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gateway.http1_conn import (  # noqa: F401 (the client's errors are imported from here)
    ConnectFailed,
    MAX_HEADER_BYTES,
    ConnectionClosed,
    Origin,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    TransportError,
    _Conn,
)


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
        """The whole body, up to the pool's max_response_bytes (beyond it: ProtocolError, and the
        connection is closed: a backend that never stops must not fill the gateway's memory)."""
        parts = []
        size = 0
        cap = self._pool.max_response_bytes
        while chunk := await self._conn.next_chunk():
            size += len(chunk)
            if size > cap:
                self.close()
                raise ProtocolError(f"the answer is larger than {cap} bytes")
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
                 first_byte_timeout: float | None = None, pool_timeout: float = 10.0,
                 max_response_bytes: int = 64 * 1024 * 1024, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.first_byte_timeout = first_byte_timeout
        self.max_connections = max_connections
        self.max_idle = max_idle_per_origin
        self.pool_timeout = pool_timeout
        self.max_response_bytes = max_response_bytes
        self.max_header_bytes = max_header_bytes  # an answer's status line + headers (http1_conn)
        self.loop = asyncio.get_running_loop()
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.origins: dict[str, tuple[Origin, bytes]] = {}
        self.open = 0  # connections counted against max_connections: busy, idle and connecting
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
        if conn is None:
            conn = await self._acquire(origin)
        if not conn.reused:
            return await self._send(conn, data, timeout)
        try:
            return await self._send(conn, data, timeout)
        except ConnectionClosed:
            # A kept-alive connection the server had already closed: nothing was processed
            # (no byte came back), so sending again on a fresh connection is safe.
            if conn.bytes_in:
                raise
        return await self._send(await self._acquire(origin, fresh=True), data, timeout)

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
                c.reused = True
                return c
            self.open -= 1
        return None

    def _evict_idle(self) -> bool:
        """Close one idle connection (of any origin) so its slot can be used elsewhere."""
        for conns in self.idle.values():
            if conns:
                c = conns.pop(0)  # the longest idle
                self.open -= 1
                c.abort()
                return True
        return False

    async def _acquire(self, origin: Origin, *, fresh: bool = False) -> _Conn:
        """A connection for `origin`: an idle one, a new one within max_connections (closing an
        idle one of another origin if that is what holds the slot), or the first of those to
        come free within pool_timeout; after that, PoolTimeout."""
        deadline = None
        while True:
            if not fresh and (conn := self._idle(origin)) is not None:
                return conn
            if self.open < self.max_connections or self._evict_idle():
                return await self._connect(origin)
            if deadline is None:
                deadline = self.loop.time() + self.pool_timeout
            left = deadline - self.loop.time()
            if left <= 0:
                raise PoolTimeout(f"all {self.max_connections} upstream connections stayed busy for "
                                  f"{self.pool_timeout:g}s")
            fut = self.loop.create_future()
            self.slot_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                pass
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # we were woken but will not use it: pass the turn on
                raise

    async def _connect(self, origin: Origin) -> _Conn:
        self.open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self, origin), origin.host, origin.port, ssl=origin.ssl,
                                            server_hostname=origin.host if origin.ssl else None),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.open -= 1
            self._wake_one()
            # No host:port here: the message can reach clients; operators know the backend by name.
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or type(exc).__name__)
            raise ConnectFailed(f"cannot connect: {reason.lower()}") from exc
        except BaseException:
            self.open -= 1
            self._wake_one()
            raise
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
        if conns and conn in conns:  # an idle connection the server closed (or that sent stray bytes)
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
