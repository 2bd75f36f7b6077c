"""The Anthropic Messages front: `POST /v1/messages` (one answer, or the typed SSE events when `stream` is
true), so coding agents and SDKs built for Claude reach any backend behind the gateway.

A model with a deployment whose server implements the Messages API itself (llama.cpp's llama-server, vLLM:
`Capabilities.messages` in adapters/) gets the request as sent, through the gateway's own pass-through
handler (metrics endpoint="messages"; usage from its `message_start`/`message_delta` events). Any other
model's request is translated (gateway/fronts/anthropic_translate.py) and served by the gateway's chat
completions handler (endpoint="anthropic.messages"); the answer comes back translated as it arrives. Either
way the client's headers go along (the Anthropic SDK's `x-api-key` is a key the gateway accepts), and errors
keep their status in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`), also the
gateway's own and those after a stream began (an `event: error`, never OpenAI's error event and [DONE]).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.asgi import Receive, Scope, Send, header
from gateway.backends import NEED_MESSAGES
from gateway.errors import CapabilityMissing, GatewayError, Unauthorized
from gateway.fronts.anthropic_translate import (MessageStream, check_request, error_doc, event, message_answer,
                                                messages_request)
from gateway.fronts.bridge import ChatEventRelay, error_message, read_raw, serve_as
from gateway.protocol import parse_body
from gateway.runtime import Gateway

CHAT_PATH = "/v1/chat/completions"
COUNT_PATH = "/v1/messages/count_tokens"


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


class NativeRelay:
    """The pass-through's answer on its way to the client, with what is not Anthropic's made so: an error
    document in OpenAI's envelope (the gateway's own refusals) becomes Anthropic's; in a stream, the gateway's
    error event and [DONE] after a failure, and llama-server's own error object in its `event: error`,
    become Anthropic's `error` event. Only chunks holding such markers are looked at."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: dict[str, Any] | None = None  # an error's response start, held until its body is known
        self.held = b""

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                self.start = message
                return
        elif self.start is not None:  # an error document, whole before it is rewritten
            self.held += message.get("body", b"")
            if message.get("more_body", False):
                return
            status = self.start["status"]
            body = self.held
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            if not (isinstance(doc, dict) and doc.get("type") == "error"):
                body = orjson.dumps(error_doc(status, error_message(body, status)))
            headers = [(k, v) for k, v in self.start.get("headers", [])
                       if k not in (b"content-length", b"content-type")]
            await self.send({**self.start, "headers": [*headers, (b"content-type", b"application/json"),
                                                       (b"content-length", b"%d" % len(body))]})
            message = {"type": "http.response.body", "body": body, "more_body": False}
        else:
            chunk = message.get("body", b"")
            if b'{"error"' in chunk or b"event: error" in chunk or b"[DONE]" in chunk:
                message = {**message, "body": anthropic_events(chunk)}
        await self.send(message)


def anthropic_events(chunk: bytes) -> bytes:
    """Complete SSE events with any error in Anthropic's shape and [DONE] dropped."""
    out = []
    for ev in chunk.split(b"\n\n"):
        lines = ev.split(b"\n")
        data = next((ln[5:].strip() for ln in lines if ln.startswith(b"data:")), None)
        named_error = any(ln.startswith(b"event:") and ln[6:].strip() == b"error" for ln in lines)
        if data == b"[DONE]":
            continue
        if data is not None and (named_error or data.startswith(b'{"error"')):
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                doc = {}
            if not (isinstance(doc, dict) and doc.get("type") == "error"):
                err = doc.get("error", doc) if isinstance(doc, dict) else {}
                err = err if isinstance(err, dict) else {"message": str(err)}
                status = err.get("code") if type(err.get("code")) is int else 500
                ev = event("error", error_doc(status, str(err.get("message") or "the backend failed"))).rstrip(b"\n")
        out.append(ev)
    return b"\n\n".join(out)


class AnthropicFront:
    paths = frozenset({"/v1/messages", COUNT_PATH})

    def __init__(self, gw: Gateway, native: Any, count: Any, chat: Any) -> None:
        # native: the pass-through handler (metrics: messages); count: that of /v1/messages/count_tokens
        # (messages.count_tokens); chat: a chat completions handler of its own (anthropic.messages)
        self.gw, self.native, self.count, self.chat = gw, native, count, chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        try:
            if scope["method"] != "POST":
                raise GatewayError(f"Method {scope['method']} is not allowed here; use POST.", status=405,
                                   code="method_not_allowed", headers={"Allow": "POST"})
            if gw.api_keys and gw.keys.identify(header(scope, b"authorization") or header(scope, b"x-api-key")) is None:
                raise Unauthorized("Incorrect or missing API key. Send it as 'x-api-key: <key>' or "
                                   "'Authorization: Bearer <key>'.")
            raw = await read_raw(gw, scope, receive)
            counting = scope["path"] == COUNT_PATH
            body = check_request(parse_body(raw), counting)
            route = gw.table.resolve(body["model"])
            native = any(d.backend.capmask & NEED_MESSAGES for d in route.deployments)
            if counting:
                if not native:
                    raise CapabilityMissing(
                        f"Token counting is served for models on backends that count with the model's own "
                        f"template and tokenizer (llama.cpp, vLLM); none of {route.name}'s backends does.",
                        param="model", code="unsupported_endpoint")
                return await serve_as(self.count, COUNT_PATH, body, scope, receive, NativeRelay(send), raw)
            if native:
                return await serve_as(self.native, "/v1/messages", body, scope, receive, NativeRelay(send), raw)
            chat = messages_request(body)
            stops = [s for s in body.get("stop_sequences") or [] if isinstance(s, str)]
            await serve_as(self.chat, CHAT_PATH, chat, scope, receive,
                           MessagesRelay(send, chat["model"], stops))
        except GatewayError as err:
            await send_doc(send, err.status, error_doc(err.status, err.message),
                           [(k.lower().encode(), v.encode()) for k, v in err.headers.items()])
