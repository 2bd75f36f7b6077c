"""The Anthropic Messages front: `POST /v1/messages` (one answer, or the typed SSE events when `stream` is
true), so coding agents and SDKs built for Claude reach any backend behind the gateway. The request is
translated (gateway/fronts/anthropic_translate.py) and served by the gateway's own chat completions handler
with the client's headers (the Anthropic SDK's `x-api-key` is a key the gateway already accepts); the answer
comes back translated as it arrives; errors keep their status in Anthropic's shape
(`{"type": "error", "error": {"type", "message"}}`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.asgi import Receive, Scope, Send
from gateway.errors import GatewayError
from gateway.fronts.anthropic_translate import MessageStream, error_doc, event, message_answer, messages_request
from gateway.fronts.bridge import SSELines, read_json, serve_as
from gateway.runtime import Gateway

CHAT_PATH = "/v1/chat/completions"
PASSED_HEADERS = (b"x-request-id", b"x-llm-gateway-backend", b"retry-after", b"x-ratelimit-", b"access-control-")


def _message(raw: bytes, status: int) -> str:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"HTTP {status}"
    err = doc.get("error") if isinstance(doc, dict) else None
    return (err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None) or f"HTTP {status}"


async def send_doc(send: Send, status: int, doc: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(doc)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *(extra or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class MessagesRelay:
    """The `send` the chat handler answers into: its answer goes on to the client as Anthropic's."""

    def __init__(self, send: Send, model: str, stops: list[str]) -> None:
        self.send, self.model, self.stops = send, model, stops
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.stream: MessageStream | None = None
        self.sse = SSELines()
        self.buffer = bytearray()

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            hdrs = message.get("headers") or []
            self.headers = [(k, v) for k, v in hdrs if k.lower().startswith(PASSED_HEADERS)]
            ctype = next((v for k, v in hdrs if k.lower() == b"content-type"), b"")
            if self.status == 200 and ctype.startswith(b"text/event-stream"):
                self.stream = MessageStream(self.model, self.stops)
                await self.send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                    *self.headers]})
                await self.send({"type": "http.response.body", "body": self.stream.start(), "more_body": True})
            return
        if message["type"] != "http.response.body":
            return
        more = message.get("more_body", False)
        if self.stream is not None:
            out = b""
            for data in self.sse.feed(message.get("body", b""), more):
                if self.stream.ended:
                    continue
                if data == b"[DONE]":
                    out += self.stream.end()
                    continue
                try:
                    doc = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(doc, dict) and "error" in doc:  # failed after the answer started
                    self.stream.ended = True
                    out += event("error", {"error": error_doc(500, _message(data, 500))["error"]})
                elif isinstance(doc, dict):
                    out += self.stream.chunk(doc)
            if not more:
                out += self.stream.end()
            if out or not more:
                await self.send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self.buffer += message.get("body", b"")
        if more:
            return
        raw = bytes(self.buffer)
        if self.status >= 400:
            doc = error_doc(self.status, _message(raw, self.status))
        else:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = {}
            doc = message_answer(parsed if isinstance(parsed, dict) else {}, self.model, self.stops)
        await send_doc(self.send, self.status, doc, self.headers)


class AnthropicFront:
    paths = frozenset({"/v1/messages"})

    def __init__(self, gw: Gateway, chat: Any) -> None:
        self.gw, self.chat = gw, chat  # a chat completions handler of its own (metrics: anthropic.messages)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] != "POST":
                raise GatewayError(f"Method {scope['method']} is not allowed here; use POST.", status=405,
                                   code="method_not_allowed", headers={"Allow": "POST"})
            body = await read_json(self.gw, scope, receive)
            chat = messages_request(body)
            stops = [s for s in body.get("stop_sequences") or [] if isinstance(s, str)]
            await serve_as(self.chat, CHAT_PATH, chat, scope, receive,
                           MessagesRelay(send, chat["model"], stops))
        except GatewayError as err:
            await send_doc(send, err.status, error_doc(err.status, err.message),
                           [(k.lower().encode(), v.encode()) for k, v in err.headers.items()])
