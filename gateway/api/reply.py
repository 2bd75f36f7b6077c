"""One inference request's response state (gateway/api/proxy.py): its id, the headers every answer carries,
whether its SSE response has started, and what the backend reported. Moved out of proxy.py to keep each
module one screenful of one job."""

from __future__ import annotations

import itertools
import os

from gateway.api.asgi import Send

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]

# Request ids: a random per-process prefix and a counter, 16 hex digits; unique enough to find a
# request in the logs, and cheaper than os.urandom per request.
_RID_PREFIX = os.urandom(4).hex().encode()
_rid_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_request_id() -> bytes:
    return b"%s%08x" % (_RID_PREFIX, next(_rid_counter) & 0xFFFFFFFF)


class Reply:
    """This request's response: its id (the `x-request-id` header of every answer, ok or error, and
    the key to its log lines), its body (whose fingerprint passive health needs), and whether its SSE
    response has started (headers and keepalive comments only: no answer byte yet, so a failed
    attempt may still be retried, but a final error must now be an error event, not a status)."""

    __slots__ = ("committed", "rid", "rid_header", "head", "limits", "raw", "backend", "own", "read_at", "usage")

    def __init__(self) -> None:
        self.committed = False
        self.backend = ""  # the backend of the latest attempt: the metrics label of a failed request too
        self.rid = new_request_id()
        self.rid_header = (b"x-request-id", self.rid)
        self.head = [self.rid_header]  # headers of every answer: the id (headers() adds the limits' own)
        self.limits = None  # a limited key's admission (gateway/auth): its x-ratelimit-* headers, made when sent
        self.usage: tuple[int, int] | None = None   # (prompt, completion) tokens the backend reported
        self.raw = b""
        # The gateway's own time (llm_gateway_overhead_seconds): before the first upstream send
        # (limiter wait excluded), then, non-stream, from the upstream answer read (read_at) to the end.
        self.own = -1.0
        self.read_at = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Every header this request's answers carry (a non-stream answer passes `limits` to send_json instead:
        written whole, its headers are rendered as lines)."""
        return self.head if self.limits is None else [*self.head, *self.limits.headers()]


async def start_sse(send: Send, reply: Reply, backend: str | None) -> None:
    """Start the SSE response once. `backend` None: started before any backend answered (keepalive
    comments while waiting), so the header cannot say who serves; a retry may still go elsewhere."""
    if not reply.committed:
        reply.committed = True
        headers = [*SSE_HEADERS, *reply.headers()]
        if backend is not None:
            headers.append((b"x-llm-gateway-backend", backend.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
