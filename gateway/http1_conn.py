"""One upstream HTTP/1.1 connection: the asyncio protocol, httptools callbacks and the framing rules.

Framing invariant (what keeps one client's answer from reaching another): a connection is reused
only when its previous answer ended exactly where the bytes received so far end. Interim 1xx
answers (100 Continue, 103 Early Hints) are skipped, never taken as the answer; a 101 is a
protocol error; any byte that arrives after an answer's end, or while the connection sits idle,
closes the connection instead of being parsed as the start of someone else's answer. A body with
neither a length nor chunked encoding ends when the server closes (RFC 9112 6.3 rule 8).

What llhttp (httptools) does not check is checked here: one "chunked" is the only transfer coding
taken, status codes are 100..599 in an HTTP/1.x status line, trailer fields stay out of the headers,
and the head is capped (MAX_HEADER_BYTES, MAX_HEADER_COUNT, also for a line that never ends).
tests/test_http1_oracle.py holds all of it against h11, with the RFC rules where the two differ.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from gateway.http1 import Pool

HIGH_WATER = 256 * 1024  # pause reading the upstream when this much body waits for a slow client
LOW_WATER = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024  # an upstream's status line + headers; more is a broken or hostile server
MAX_HEADER_COUNT = 256  # header fields in one answer (each costs Python objects, unlike bytes in a buffer)

# Where a connection is in its request/answer cycle.
IDLE, WAITING, BODY, DONE = range(4)


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


class PoolTimeout(TransportError, TimeoutError):
    """Every connection the pool may open is busy and none came free in time."""


class _Unexpected(Exception):
    """Raised inside a parser callback to stop parsing bytes nobody asked for."""


class Origin:
    __slots__ = ("key", "host", "port", "ssl", "host_header")

    def __init__(self, scheme: str, host: str, port: int) -> None:
        self.key = (scheme, host, port)
        self.host = host
        self.port = port
        self.ssl = ssl.create_default_context() if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed in Host
        self.host_header = (name if port == default else f"{name}:{port}").encode()


class _Conn(asyncio.Protocol):
    """One upstream connection; also the httptools parser's callback target."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        # Any HTTP/1.x version digit is parsed (RFC 9110 2.5: a higher minor version is processed as
        # the highest one known); on_headers_complete rejects every major version but 1.
        self.parser.set_dangerous_leniencies(lenient_version=True)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False  # taken from the idle list (may turn out closed by the server)
        self.phase = IDLE
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
        self.rearm = False  # the body began in this read: switch the timer to the idle limit after it
        self.timer: asyncio.TimerHandle | None = None
        self.sink: Callable[[bytes], bool] | None = None
        self.header_bytes = 0  # header (and trailer) fields of the answer, as parsed
        self.head_in = 0  # bytes received before the head was complete: bounds a field that never ends
        self.chunked = False
        self.interim = False  # the message being parsed is a 1xx, not the answer
        self.close_delimited = False  # the body ends when the server closes (no length, not chunked)

    # -- asyncio protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.phase != BODY:  # one comparison on the body's hot path
            if self.phase != WAITING:
                # Nobody asked: a stray answer or the start of one. Parsing it would leave the parser
                # mid-message for the next request, whose answer would then be eaten (or replaced).
                self.abort()
                return
            if self.head_in > self.pool.max_header_bytes:
                # httptools holds an unfinished status line or field in memory; one that never ends
                # (no CRLF) must not grow it further. Earlier reads only: the bound is cap + one read.
                self._fail(ProtocolError(f"the answer's headers exceed {self.pool.max_header_bytes} bytes"))
                self.abort()
                return
            self.head_in += len(data)
        self.bytes_in += len(data)
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.phase != DONE:  # bytes after a complete answer only cost the connection
                self._fail(ProtocolError(f"malformed HTTP response: {exc}"))  # keeps a callback's own error
            self.abort()
            return
        if self.rearm:
            self.rearm = False
            if self.timer is not None and not self.complete and not self.closed:
                self.timer.cancel()
                self._check_idle()  # re-armed with the idle limit (and the total deadline)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        peer_closed = not self.closed
        self.closed = True
        if (self.phase == BODY and self.close_delimited and peer_closed and exc is None
                and self.error is None):
            # RFC 9112 6.3 rule 8: no length, not chunked: the server's close is the answer's end.
            self.complete = True
            self.phase = DONE
            if self.timer is not None:
                self.timer.cancel()
            self._wake()
        if not self.complete:
            why = f": {exc}" if exc else ""
            self._fail(ConnectionClosed(f"connection closed before the answer was complete{why}"))
        self.pool._lost(self)

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.phase != WAITING:  # a second message after the answer: nobody asked for it
            raise _Unexpected

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.pool.max_header_bytes:
            self._fail(ProtocolError(f"the answer's headers exceed {self.pool.max_header_bytes} bytes"))
            raise _Unexpected
        if self.phase == BODY:  # a trailer field (RFC 9112 7.1.2): not part of the answer's headers
            return
        name = name.lower()
        if name == b"transfer-encoding":
            # The gateway asks for no transfer coding (no TE header): only one "chunked" is meaningful.
            # llhttp would hand a gzip or doubly chunked body over still encoded (RFC 9112 6.1, 7).
            if self.chunked or value.strip(b" \t").lower() != b"chunked":
                self._fail(ProtocolError(f"unsupported Transfer-Encoding in the answer: {value[:40]!r}"))
                raise _Unexpected
            self.chunked = True
        headers = self.headers
        if len(headers) >= MAX_HEADER_COUNT:
            self._fail(ProtocolError(f"the answer has more than {MAX_HEADER_COUNT} header fields"))
            raise _Unexpected
        # llhttp keeps trailing whitespace; RFC 9112 5: it is not part of the field value.
        headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status <= 599 or self.parser.get_http_version()[:2] != "1.":
            # RFC 9110 15: valid codes are 100..599 (a 099 is no interim answer to wait past);
            # RFC 9110 2.5: another major version is another protocol.
            self._fail(ProtocolError(f"invalid status line (HTTP/{self.parser.get_http_version()} {status})"))
            raise _Unexpected
        if status < 200:
            if status == 101:  # nothing the gateway sends asks to switch protocols
                self._fail(ProtocolError("the backend switched protocols (HTTP 101)"))
                raise _Unexpected
            # 100 Continue, 103 Early Hints ...: interim, the answer follows on this connection.
            self.interim = True
            self.headers = []
            self.header_bytes = self.head_in = 0
            self.chunked = False
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.phase = BODY
        if not self.keep_alive and status != 204 and status != 304 and not self.chunked:
            self.close_delimited = True
            for k, _ in self.headers:
                if k == b"content-length":
                    self.close_delimited = False
                    break
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if not self.body_started:
            # The first-byte wait is over: from now on the (shorter) idle limit applies. The timer
            # is re-armed once this read is parsed (data_received), and only if the answer goes on:
            # most non-stream answers end in the read that began them and need no second timer.
            self.body_started = self.rearm = True
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
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.phase = DONE
        self._wake()

    # -- request side ---------------------------------------------------------------------------
    def send(self, data: bytes, read_timeout: float, total_timeout: float | None = None,
             first_byte_timeout: float | None = None) -> asyncio.Future[None]:
        self._reset()
        self.phase = WAITING
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
        if self.complete and self.keep_alive and not self.closed and self.error is None \
                and self.transport is not None and not self.transport.is_closing():
            self.phase = IDLE
            return True
        return False
