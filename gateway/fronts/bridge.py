"""What every front shares (gateway/fronts/): reading a front request's JSON body, and handing a translated
body to the gateway's own OpenAI-path handler (chat completions, completions, embeddings) as if the client
had sent it there, with the client's headers (keys, limits, routing, retries, health and metrics are that
path's). The answer goes to a relay, the front's `send`, which translates it back as it arrives.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from gateway.api.asgi import BodyRead, Receive, Scope, Send, header, is_json_media_type
from gateway.errors import UnsupportedMediaType
from gateway.protocol import parse_body
from gateway.runtime import Gateway


async def read_raw(gw: Gateway, scope: Scope, receive: Receive) -> bytes:
    """The request's body, if it says it is JSON or says nothing (clients of other protocols often send
    no content type), never a form or text/plain: a cross-site page can send those without asking first."""
    ctype = header(scope, b"content-type")
    if ctype is not None and not is_json_media_type(ctype):
        raise UnsupportedMediaType("Send the request body as JSON (with curl: -H 'Content-Type: "
                                   "application/json', or no Content-Type at all).")
    return await BodyRead(None).read(scope, receive, gw.max_body)


async def read_json(gw: Gateway, scope: Scope, receive: Receive) -> Any:
    """The request's body parsed (read_raw)."""
    return parse_body(await read_raw(gw, scope, receive))


def streamed(chat: dict[str, Any]) -> None:
    """Make a translated chat request a stream that reports its usage at the end (every front counts it)."""
    chat["stream"] = True
    chat["stream_options"] = {"include_usage": True}


def dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer beyond 64 bits, passed on as sent: the standard library writes it
        return json.dumps(body, ensure_ascii=False).encode()


async def serve_as(handler: Any, path: str, body: dict[str, Any], scope: Scope, receive: Receive,
                   relay: Send, raw: bytes | None = None) -> None:
    """Run `handler` (the gateway's handler of `path`) on `body` (or, untouched, its bytes `raw`),
    answering into `relay`."""
    raw = dumps(body) if raw is None else raw
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
    inner = {**scope, "path": path, "raw_path": path.encode(), "headers": [
        *headers, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]}
    delivered = False

    async def inner_receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()  # the client's own: a disconnect still cancels the upstream request

    await handler(inner, inner_receive, relay)


class SSELines:
    """The `data:` payloads of an SSE answer as it arrives in chunks of any size (comments, blank lines and
    `event:` lines dropped)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes, more: bool) -> list[bytes]:
        *lines, rest = (self.buffer + chunk).split(b"\n")
        self.buffer = rest if more else b""
        if not more and rest:
            lines.append(rest)
        return [line[5:].strip() for line in lines if line.startswith(b"data:")]


# Headers of the chat path's answer a front passes on: its request id, who served, limits, CORS.
PASSED_HEADERS = (b"x-request-id", b"x-llm-gateway-backend", b"retry-after", b"x-ratelimit-", b"access-control-")


def reasoning(part: dict[str, Any]) -> Any:
    """A message's or delta's reasoning text, under either name backends use (README `reasoning_field`)."""
    return part.get("reasoning_content") or part.get("reasoning")


def error_message(raw: bytes, status: int) -> str:
    """The message of an OpenAI-style error body (or of a bare {"error": "..."}), else the status."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"HTTP {status}"
    err = doc.get("error") if isinstance(doc, dict) else None
    return (err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None) or f"HTTP {status}"


class Relay:
    """The `send` an OpenAI-path handler answers into, for one front request: a streamed (SSE) answer is
    passed on event by event through `event` (then `finish`), a whole one (or an error) through `whole`.
    Subclasses say what the front's answers look like."""

    stream_headers: list[tuple[bytes, bytes]] = []

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.streaming = False
        self.sse = SSELines()
        self.buffer = bytearray()

    def begin(self) -> bytes:
        """What the front's stream starts with, before the first event."""
        return b""

    def event(self, data: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError

    def whole(self, status: int, raw: bytes) -> tuple[bytes, bytes]:
        """(content type, body) of the front's answer to a whole answer or error."""
        raise NotImplementedError

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            hdrs = message.get("headers") or []
            self.headers = [(k, v) for k, v in hdrs if k.lower().startswith(PASSED_HEADERS)]
            ctype = next((v for k, v in hdrs if k.lower() == b"content-type"), b"")
            if self.status == 200 and ctype.startswith(b"text/event-stream"):
                self.streaming = True
                await self.send({"type": "http.response.start", "status": 200,
                                 "headers": [*self.stream_headers, *self.headers]})
                first = self.begin()
                if first:
                    await self.send({"type": "http.response.body", "body": first, "more_body": True})
            return
        if message["type"] != "http.response.body":
            return
        more = message.get("more_body", False)
        if self.streaming:
            out = b"".join(self.event(data) for data in self.sse.feed(message.get("body", b""), more))
            if not more:
                out += self.finish()
            if out or not more:
                await self.send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self.buffer += message.get("body", b"")
        if more:
            return
        ctype, body = self.whole(self.status, bytes(self.buffer))
        await self.send({"type": "http.response.start", "status": self.status, "headers": [
            (b"content-type", ctype), (b"content-length", b"%d" % len(body)), *self.headers]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class ChatEventRelay(Relay):
    """A relay whose front streams events of its own made from the chat chunks by `self.stream` (which has
    `ended`): the chunk's JSON is parsed once here; a front says what a chunk and a failure become."""

    stream: Any

    def chunk(self, doc: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def failed(self, message: str) -> bytes:
        raise NotImplementedError

    def event(self, data: bytes) -> bytes:
        if self.stream.ended:
            return b""
        if data == b"[DONE]":
            return self.finish()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if isinstance(doc, dict) and "error" in doc:  # failed after the answer started
            return self.failed(error_message(data, 500))
        return self.chunk(doc) if isinstance(doc, dict) else b""
