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
from gateway.fronts.bridge import ChatEventRelay, error_message, read_json, serve_as
from gateway.runtime import Gateway

CHAT_PATH = "/v1/chat/completions"


async def send_doc(send: Send, status: int, doc: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(doc)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *(extra or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class MessagesRelay(ChatEventRelay):
    """Chat answers as Anthropic's: typed SSE events for a stream, one message (or error) otherwise."""

    stream_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

    def __init__(self, send: Send, model: str, stops: list[str]) -> None:
        super().__init__(send)
        self.model, self.stops = model, stops
        self.stream = MessageStream(model, stops)

    def begin(self) -> bytes:
        return self.stream.start()

    def chunk(self, doc: dict[str, Any]) -> bytes:
        return self.stream.chunk(doc)

    def failed(self, message: str) -> bytes:
        self.stream.ended = True
        return event("error", {"error": error_doc(500, message)["error"]})

    def finish(self) -> bytes:
        return self.stream.end()

    def whole(self, status: int, raw: bytes) -> tuple[bytes, bytes]:
        if status >= 400:
            return b"application/json", orjson.dumps(error_doc(status, error_message(raw, status)))
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = {}
        return b"application/json", orjson.dumps(message_answer(parsed if isinstance(parsed, dict) else {},
                                                                self.model, self.stops))


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
