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
