"""Writing stream bytes straight to the client's socket, from inside the upstream's read callback.

Why: relaying one SSE event through ASGI costs a future, a task wake-up, a resume through the
relay's await chain and the server's `send` coroutine. For a pass-through stream the upstream
connection can instead hand each complete event to the client transport in the same callback
that read it (gateway/streaming.py, `Relay.feed`): the per-event work a C proxy does, no more.

This reaches into uvicorn's httptools protocol (the server `llm-gateway serve` runs), so it is
used only when the ASGI `send` is that protocol's bound method and every attribute it relies on
is there, and only for a started, chunked, unfinished response. The relay writes only while the
transport's buffer is empty and it is open; otherwise bytes take `await send`, which waits for
uvicorn's drain, so a slow client still slows the upstream read. Anything else (another server, a
test's `send`, a uvicorn release that renamed its internals) gets None from `client_transport()` and the
relay keeps to plain `await send(...)`; tests/test_stream_relay.py fails if the fast path stops
engaging under the uvicorn version installed.
"""

from __future__ import annotations

from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE
except ImportError:  # another uvicorn layout: write_whole() then always declines
    STATUS_LINE = {}

_UVICORN_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"


def client_transport(send: Any) -> Any | None:
    """The client's transport for the response `send` belongs to, or None where writing to it
    directly is not safe: the response must be started, chunked and unfinished, so raw chunks
    framed as uvicorn frames them are exactly what `send` would have written."""
    cycle = getattr(send, "__self__", None)
    if cycle is None or type(cycle).__module__ != _UVICORN_HTTPTOOLS:
        return None
    try:
        usable = (cycle.response_started is True and cycle.response_complete is False
                  and cycle.chunked_encoding is True and cycle.disconnected is False)
        transport = cycle.transport
    except AttributeError:
        return None
    needed = ("write", "is_closing", "get_write_buffer_size")
    if not usable or not all(callable(getattr(transport, m, None)) for m in needed):
        return None
    return transport


def write_whole(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes, lines: bytes = b"") -> bool:
    """A complete fixed-length response (a non-stream answer, an error) in one write, the way
    uvicorn's two `send` calls would have framed it in two: one syscall and one coroutine fewer per
    request (measured: bench/cpu_ab.py). False, having written nothing, wherever it is not exactly
    equivalent: not uvicorn's httptools `send`, the response already started, the client gone or not
    reading (uvicorn's drain applies), access logging on (uvicorn logs in `send`), a HEAD request.
    `headers` are the gateway's own (names lower-case, values free of CR/LF), as for `send`; `lines`, more of
    them already as HTTP/1.1 lines (a limited key's x-ratelimit-*, rendered by its admission)."""
    cycle = getattr(send, "__self__", None)
    if cycle is None or type(cycle).__module__ != _UVICORN_HTTPTOOLS:
        return False
    try:
        line = STATUS_LINE.get(status)
        if (line is None or cycle.response_started or cycle.disconnected or cycle.flow.write_paused
                or cycle.access_log or cycle.scope["method"] == "HEAD"):
            return False
        transport = cycle.transport
        keep_alive = cycle.keep_alive
        says_close = False
        parts = [line]
        for name, value in cycle.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            if name == b"connection" and b"close" in value.lower():
                keep_alive = False
                says_close = True
            parts += (name, b": ", value, b"\r\n")
        parts += (lines, b"content-length: %d\r\n" % len(body))
        if not keep_alive and not says_close:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        on_response = cycle.on_response
        event = cycle.message_event
    except AttributeError:
        return False
    transport.write(b"".join(parts))
    # The state uvicorn's send leaves after http.response.start + a final http.response.body.
    cycle.response_started = cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = False
    cycle.expected_content_length = 0
    cycle.keep_alive = keep_alive
    event.set()
    if not keep_alive:
        transport.close()
    on_response()
    return True
