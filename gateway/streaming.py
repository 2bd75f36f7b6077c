"""Relaying an answer to the client: SSE events as they arrive, observed on the side.

The pass-through path forwards the upstream's bytes unchanged, one write per read, holding back
only an unfinished trailing event (so nothing half-sent ever needs retracting). The tap looks at
bytes only when they can matter: a `"usage"` key, `[DONE]`, or an error event; it never buffers
the stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError

ASGISend = Any
DONE_EVENT = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 8 * 1024 * 1024  # a single SSE event larger than this is not an LLM stream
_EVENT_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")


class StreamTap:
    """What the relay saw: first event time, usage, [DONE], upstream error event."""

    __slots__ = ("first_at", "prompt_tokens", "completion_tokens", "done", "error", "strip_usage")

    def __init__(self, strip_usage: bool) -> None:
        self.first_at = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        self.error = False
        self.strip_usage = strip_usage

    def inspect(self, block: bytes) -> bytes:
        """Record what a block of complete events says; return it minus a stripped usage event."""
        parts = _EVENT_SPLIT.split(block)
        out: list[bytes] = []
        changed = False
        for i in range(0, len(parts) - 1, 2):
            event, sep = parts[i], parts[i + 1]
            if self._observe(event):
                out.append(event)
                out.append(sep)
            else:
                changed = True
        if len(parts) % 2:
            out.append(parts[-1])
        return b"".join(out) if changed else block

    def _observe(self, event: bytes) -> bool:
        """False when the event must not reach the client."""
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
            elif data.startswith(b'{"error"'):
                self.error = True
            elif b'"usage"' in data:
                try:
                    doc = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                usage = doc.get("usage") if type(doc) is dict else None
                if type(usage) is dict:
                    self.prompt_tokens = _int(usage.get("prompt_tokens"))
                    self.completion_tokens = _int(usage.get("completion_tokens"))
                    if self.strip_usage and doc.get("choices") == []:
                        return False
        return True


def _int(v: object) -> int:
    return v if type(v) is int else 0


def complete_end(buf: bytes) -> int:
    """Offset just past the last complete SSE event in buf (0 if none)."""
    i = buf.rfind(b"\n\n")
    j = buf.rfind(b"\r\n\r\n")
    k = buf.rfind(b"\r\r")
    return max(i + 2 if i >= 0 else 0, j + 4 if j >= 0 else 0, k + 2 if k >= 0 else 0)


async def relay_events(source: AsyncIterator[bytes], send: ASGISend, tap: StreamTap) -> None:
    """Forward SSE events from `source` to the client as they arrive. Raises on upstream failure."""
    pending = b""
    async for chunk in source:
        if pending:
            chunk = pending + chunk
            pending = b""
        if not chunk.endswith(b"\n\n"):
            end = complete_end(chunk)
            if end != len(chunk):
                pending = chunk[end:]
                chunk = chunk[:end]
                if len(pending) > MAX_EVENT_BYTES:
                    raise GatewayError("upstream sent an SSE event larger than 8 MiB", status=502,
                                       code="upstream_protocol_error")
                if not chunk:
                    continue
        if b'"usage"' in chunk or b"[DONE]" in chunk or b'{"error"' in chunk:
            chunk = tap.inspect(chunk)
            if not chunk:
                continue
        if not tap.first_at:
            tap.first_at = time.perf_counter()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if pending:  # the upstream's last event lacked its blank line: still the client's data
        pending = tap.inspect(pending + b"\n\n")
        if pending:
            await send({"type": "http.response.body", "body": pending, "more_body": True})


def stream_end(tap: StreamTap, failure: GatewayError | None) -> bytes:
    """What to send after the relay ended: nothing, or an error event and/or [DONE].

    A stream that failed or ended without [DONE] ends with one OpenAI error event (unless the
    upstream already sent one) and then [DONE], so clients never hang on a silent truncation.
    """
    if tap.done and failure is None:
        return b""
    if failure is None:
        failure = GatewayError("The backend ended the stream without finishing the answer.",
                               status=502, code="stream_truncated")
    return (b"" if tap.error else failure.sse_event()) + DONE_EVENT
