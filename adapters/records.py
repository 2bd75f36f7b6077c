"""Splitting a native stream into its records: Ollama's NDJSON lines, FastChat's NUL-delimited JSON,
TGI's SSE events.

One record is capped at MAX_RECORD_BYTES (the pass-through relay caps one SSE event the same way): a
backend that never sends the delimiter must cost a bounded buffer and a 502, not the gateway's memory.
The search for the delimiter starts where the previous one stopped, so a record arriving in many
small pieces costs linear, not quadratic, time on the one event loop every client shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.errors import UpstreamProtocolError

MAX_RECORD_BYTES = 8 * 1024 * 1024  # one LLM stream event is a few hundred bytes; 8 MiB is not a stream


def set_max_record_bytes(n: int) -> None:
    """upstream.max_event_bytes, set once at start (the relay in gateway/streaming.py reads it too)."""
    global MAX_RECORD_BYTES
    MAX_RECORD_BYTES = n


async def records(chunks: AsyncIterator[bytes], sep: bytes, *, tail: bool = False,
                  limit: int | None = None) -> AsyncIterator[bytes]:
    """Each complete record (without `sep`) as it arrives; with `tail`, also what is left at the end."""
    limit = limit or MAX_RECORD_BYTES
    buf = bytearray()
    for_sep = len(sep) - 1
    async for data in chunks:
        searched = max(0, len(buf) - for_sep)  # no delimiter ends before here
        buf += data
        start = 0
        while (end := buf.find(sep, max(start, searched))) >= 0:
            yield bytes(buf[start:end])
            start = end + len(sep)
        if start:
            del buf[:start]
        if len(buf) > limit:
            raise UpstreamProtocolError(f"the backend sent a stream record larger than {limit} bytes "
                                        "without its delimiter")
    if tail and buf:
        yield bytes(buf)
