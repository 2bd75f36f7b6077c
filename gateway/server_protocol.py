"""uvicorn's httptools protocol with the three client-side limits uvicorn lacks.

uvicorn (httptools) bounds neither a request head's size nor the time a client may take to send it,
nor the silence while it sends a body: a 120 MiB header grew the gateway's memory by 220 MiB and
on, hundreds of connections that never finish their request line hold file descriptors forever,
and a body that stops half-way holds its request forever. On a shared endpoint one such client must
cost a bounded buffer and a closed connection, never the others' service:

- a request head (request line + headers) over `server.max_header_bytes` -> 431 and close;
- a head not complete `server.header_timeout` seconds after its first byte (or after the
  connection opened) -> 408 and close;
- a body silent for `server.body_timeout` seconds -> the connection is closed (the request is then
  a vanished client: 499 in the metrics).

Cost on the hot path: an addition and two comparisons per data_received; a timer only for a head
or body that did not arrive in the read that began it.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD, BODY, IDLE = 0, 1, 2  # what the connection waits for


def _error(status: bytes, code: bytes, message: bytes) -> bytes:
    body = (b'{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":"%s"}}'
            % (message, code))
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % (status, len(body))) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head = 64 * 1024
    head_timeout = 10.0
    body_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = HEAD
        self._head = 0  # bytes of the current request head so far
        self._since = 0.0  # when the wait for this phase began (head) or the last byte came (body)
        self._guard: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        self._arm(self.head_timeout)  # a connection that never sends a byte holds a descriptor too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # Draining: uvicorn closes a connection with no request in progress at once. A request the
        # client already sent on it, still unread in the socket buffer, would then be reset instead
        # of answered. One loop turn later those bytes have been read (the poll phase runs in
        # between): uvicorn's rule then sees the request, answers it and closes the connection.
        self.loop.call_soon(super().shutdown)

    def on_message_begin(self) -> None:
        # _head is not reset here: this runs inside data_received, after the read was counted.
        self._phase = HEAD
        self._since = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._phase = BODY
        self._since = self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = IDLE  # keep-alive idling is uvicorn's timeout_keep_alive
        self._head = 0  # the next head starts counting (a read that also carries it counts whole: at most
        super().on_message_complete()  # one read, 64 KiB, too many)

    def data_received(self, data: bytes) -> None:
        if self._phase == BODY:
            self._since = self.loop.time()
        else:  # a head, or the read that begins the next one on a kept-alive connection
            self._head += len(data)
        super().data_received(data)
        if self._phase == HEAD and self._head > self.max_head:
            self._refuse(b"431 Request Header Fields Too Large", b"request_header_too_large",
                         b"The request line and headers are larger than %d bytes." % self.max_head)
        elif self._phase != IDLE and self._guard is None:
            self._arm(self.head_timeout if self._phase == HEAD else self.body_timeout)

    def _arm(self, delay: float) -> None:
        self._guard = self.loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._guard = None
        if self.transport is None or self.transport.is_closing() or self._phase == IDLE:
            return
        limit = self.head_timeout if self._phase == HEAD else self.body_timeout
        waited = self.loop.time() - self._since
        if waited < limit:
            self._arm(limit - waited)
        elif self._phase == HEAD:
            self._refuse(b"408 Request Timeout", b"request_timeout",
                         b"The request line and headers did not arrive within %gs." % self.head_timeout)
        else:
            self.logger.info("closing a connection whose request body stalled for %gs", self.body_timeout)
            self.transport.close()

    def _refuse(self, status: bytes, code: bytes, message: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(_error(status, code, message))
            self.transport.close()


def protocol_class(max_head: int, head_timeout: float, body_timeout: float) -> type[GuardedHttpToolsProtocol]:
    """A subclass carrying this server's limits (uvicorn instantiates the class per connection)."""
    return type("GatewayHttpProtocol", (GuardedHttpToolsProtocol,),
                {"max_head": max_head, "head_timeout": head_timeout, "body_timeout": body_timeout})


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one: each client and each upstream connection
    is a descriptor, and the usual soft limit (1024) is reached long before memory or CPU is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
