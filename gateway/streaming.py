"""Relaying an answer to the client: SSE events as they arrive, observed on the side.

The pass-through path forwards the upstream's bytes unchanged, one write per read, holding back
only an unfinished trailing event (so nothing half-sent ever needs retracting). The tap looks at
bytes only when they can matter: a `"usage"` key, `[DONE]`, or an error event; it never buffers
the stream.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson

from adapters.base import anthropic_usage, openai_usage, responses_usage
from adapters import records as _records  # MAX_RECORD_BYTES: upstream.max_event_bytes, read when used
from gateway.errors import GatewayError

ASGISend = Any
T = TypeVar("T")
DONE_EVENT = b"data: [DONE]\n\n"
_EVENT_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")


class StreamTap:
    """What the relay saw: first event time, usage, [DONE], upstream error event."""

    __slots__ = ("first_at", "prompt_tokens", "completion_tokens", "done", "error", "strip_usage",
                 "markers", "extract_usage", "watch")

    def __init__(self, strip_usage: bool, markers: tuple[bytes, ...] = (b'"usage"',),
                 extract_usage: Any = None) -> None:
        self.first_at = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        self.error = False
        self.strip_usage = strip_usage
        self.markers = markers
        self.extract_usage = extract_usage or openai_usage
        self.watch = (b"[DONE]", b'{"error"', *markers)  # what makes a chunk worth parsing

    def wants(self, chunk: bytes) -> bool:
        for m in self.watch:
            if m in chunk:
                return True
        return False

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
            elif any(m in data for m in self.markers):
                try:
                    doc = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if type(doc) is not dict:
                    continue
                usage = self.extract_usage(doc)
                if usage is not None:
                    self.prompt_tokens, self.completion_tokens = usage
                    if self.strip_usage and doc.get("choices") == [] and "usage" in doc:
                        return False
        return True


# A Responses API stream (POST /v1/responses) has no [DONE]: one of these events ends it, carrying
# the whole response and its usage. In a data line only as the `type` value (quotes in text are escaped).
RESPONSES_END = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


class TypedEventTap(StreamTap):
    """The tap of a stream of typed events (`event:` + `data: {"type": ...}`), relayed untouched: the
    natively passed-through protocols. Events holding a marker are parsed and handed to `typed`."""

    __slots__ = ()

    def _observe(self, event: bytes) -> bool:
        for line in event.splitlines():
            if line.startswith(b"event:"):
                if line[6:].strip() == b"error":
                    self.error = True
                continue
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data.startswith(b'{"error"'):  # the gateway's own envelope, or a backend's pre-typed one
                self.error = True
            elif any(m in data for m in self.markers):
                try:
                    doc = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                kind = doc.get("type") if type(doc) is dict else None
                if kind == "error":
                    self.error = True
                elif kind is not None:
                    self.typed(kind, doc)
        return True

    def typed(self, kind: str, doc: dict[str, Any]) -> None:
        raise NotImplementedError


class ResponsesTap(TypedEventTap):
    """A Responses API stream: done at its terminal event, usage from that event's `response.usage`."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(False, (*RESPONSES_END, b'"type":"error"'), responses_usage)

    def typed(self, kind: str, doc: dict[str, Any]) -> None:
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.done = True
            usage = responses_usage(doc)
            if usage is not None:
                self.prompt_tokens, self.completion_tokens = usage


# An Anthropic Messages stream (POST /v1/messages) has no [DONE] either: `message_stop` ends it; usage comes in
# `message_start` (the prompt) and `message_delta` (the output so far; vLLM's also the prompt). An error is an
# `event: error` (vLLM's data in Anthropic's shape, llama-server's its own error object).
MESSAGES_MARKERS = (b'"message_start"', b'"message_delta"', b'"message_stop"', b"event: error")


class MessagesTap(TypedEventTap):
    """An Anthropic Messages stream."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(False, MESSAGES_MARKERS, anthropic_usage)

    def typed(self, kind: str, doc: dict[str, Any]) -> None:
        if kind == "message_stop":
            self.done = True
        elif kind == "message_start" or kind == "message_delta":
            usage = anthropic_usage(doc)
            if usage is not None:
                if usage[0]:
                    self.prompt_tokens = usage[0]
                if kind == "message_delta":
                    self.completion_tokens = usage[1]


def complete_end(buf: bytes) -> int:
    """Offset just past the last complete SSE event in buf (0 if none)."""
    i = buf.rfind(b"\n\n")
    j = buf.rfind(b"\r\n\r\n")
    k = buf.rfind(b"\r\r")
    return max(i + 2 if i >= 0 else 0, j + 4 if j >= 0 else 0, k + 2 if k >= 0 else 0)


KEEPALIVE = b": keepalive\n\n"


async def await_with_keepalives(aw: Awaitable[T], send: ASGISend, every: float,
                                before_first: Callable[[], Awaitable[None]] | None = None) -> T:
    """Await `aw`, sending an SSE comment every `every` seconds meanwhile (a long prefill, a cold
    model, an upstream that withholds its headers). `before_first` runs ahead of the first comment
    (e.g. starting the SSE response). Used once per stream, never per chunk."""
    task = asyncio.ensure_future(aw)
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=every)
            if done:
                return task.result()
            if before_first is not None:
                await before_first()
                before_first = None
            await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
    finally:
        if not task.done():
            task.cancel()


async def wait_first(source: AsyncIterator[bytes], send: ASGISend, every: float) -> bytes:
    """The stream's first chunk, with keepalive comments while it is awaited."""
    try:
        return await await_with_keepalives(source.__anext__(), send, every)
    except StopAsyncIteration:
        return b""


class Transport(Protocol):
    """The client connection's transport (gateway/api/client_writer.py)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class Answer(Protocol):
    """The raw upstream answer a pass-through stream reads (gateway/http1.py Response)."""

    def attach_sink(self, sink: Callable[[bytes], bool] | None) -> None: ...


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class Relay:
    """One stream's relay state, shared by its two paths. `feed` is called by the upstream
    connection inside its read callback and writes complete events straight to the client's
    transport; the task in `relay_events` takes whatever `feed` declines (a partial event, a client
    that is behind or gone, anything while the task itself holds unsent bytes), so bytes leave in
    the order they came and a slow client still gets uvicorn's flow control."""

    __slots__ = ("tap", "rewrite", "pending", "busy", "transport")

    def __init__(self, tap: StreamTap, rewrite: Callable[[bytes], bytes] | None,
                 transport: Transport | None) -> None:
        self.tap = tap
        self.rewrite = rewrite
        self.pending = b""
        self.busy = True  # the task holds bytes not yet sent: feed must queue behind them
        self.transport = transport

    def events(self, chunk: bytes) -> bytes:
        """The complete events in pending + chunk, repaired and tapped (b"" when none yet)."""
        if self.pending:
            chunk = self.pending + chunk
            self.pending = b""
        if not chunk.endswith(_EVENT_ENDS):
            end = complete_end(chunk)
            if end != len(chunk):
                self.pending = chunk[end:]
                chunk = chunk[:end]
                if len(self.pending) > _records.MAX_RECORD_BYTES:
                    raise GatewayError(f"upstream sent an SSE event larger than {_records.MAX_RECORD_BYTES} bytes",
                                       status=502, code="upstream_protocol_error")
                if not chunk:
                    return b""
        if self.rewrite is not None:
            chunk = self.rewrite(chunk)
        tap = self.tap
        if tap.wants(chunk):
            chunk = tap.inspect(chunk)
        if chunk and not tap.first_at:
            tap.first_at = time.perf_counter()
        return chunk

    def feed(self, chunk: bytes) -> bool:
        """The upstream's sink: True when `chunk` was dealt with here (sent, or held nothing)."""
        # Written flat on purpose: this runs once per token, usually on a core that just woke up,
        # where every extra call and attribute costs several times what it does in a warm loop.
        t = self.transport  # never None here: relay_events attaches feed only with a transport
        if (self.busy or self.pending or not chunk.endswith(_EVENT_ENDS)
                or t.get_write_buffer_size() or t.is_closing()):
            return False
        if self.rewrite is None:
            for m in self.tap.watch:
                if m in chunk:
                    break
            else:  # the common case: plain events nobody needs to look into
                t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # uvicorn's chunked framing
                return True
        out = self.events(chunk)  # whole events and nothing pending: cannot raise
        if out:
            t.write(b"%x\r\n%s\r\n" % (len(out), out))
        return True


async def relay_events(source: AsyncIterator[bytes], send: ASGISend, tap: StreamTap,
                       rewrite: Callable[[bytes], bytes] | None = None, first: bytes = b"",
                       keepalive: float = 0.0, upstream: Answer | None = None,
                       transport: Transport | None = None) -> None:
    """Forward SSE events from `source` to the client as they arrive. Raises on upstream failure.

    `rewrite` repairs a dialect's quirks on complete events; `first` is what a peek already read;
    `keepalive` > 0 sends SSE comments while the first chunk is awaited. With `upstream` (the raw
    answer `source` reads) and the client's `transport`, events go out from the upstream's read
    callback (Relay.feed).
    """
    relay = Relay(tap, rewrite, transport)
    direct = upstream if transport is not None else None
    if direct is not None:
        direct.attach_sink(relay.feed)
    try:
        # What a peek or the keepalive wait already read goes out at once, like any chunk: holding
        # it as a pending prefix would delay the first event until the upstream's second one.
        if not first and keepalive:
            first = await wait_first(source, send, keepalive)
        head = first
        nxt = source.__aiter__().__anext__
        while True:
            if head:
                chunk, head = head, b""
            else:
                # While the task waits, feed may send; not before the first event went out the
                # slow way, which stamps the time to first token.
                relay.busy = not tap.first_at
                try:
                    chunk = await nxt()
                except StopAsyncIteration:
                    break
                finally:
                    relay.busy = True
            chunk = relay.events(chunk)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        if direct is not None:
            direct.attach_sink(None)
    if relay.pending:  # the upstream's last event lacked its blank line: still the client's data
        pending = relay.pending + b"\n\n"
        if rewrite is not None:
            pending = rewrite(pending)
        pending = tap.inspect(pending)
        if pending:
            await send({"type": "http.response.body", "body": pending, "more_body": True})


async def peek_first_event(source: AsyncIterator[bytes]) -> bytes:
    """Read until the first complete SSE event (comments included); returns all bytes read."""
    buf = b""
    async for chunk in source:
        buf += chunk
        if complete_end(buf):
            return buf
        if len(buf) > _records.MAX_RECORD_BYTES:
            break
    return buf


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
