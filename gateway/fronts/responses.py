"""The Responses API front: `POST /v1/responses` for every backend.

A model with a deployment whose server implements the Responses API itself (vLLM, llama.cpp's llama-server,
OpenAI-compatible servers: `Capabilities.responses` in adapters/) gets the request as sent, through the
gateway's own pass-through handler (metrics endpoint="responses"). Any other model's request is translated
to chat completions (gateway/fronts/responses_translate.py), served by the gateway's chat handler (metrics
endpoint="responses.chat": keys, limits, routing, retries and health are the chat path's), and its answer
comes back as a `response` object or as the typed stream events (gateway/fronts/responses_stream.py).

`store` / `previous_response_id` on the translated path: each answered conversation is kept in this
process's memory (the last STORE_ENTRIES, at most STORE_BYTES of them in all, oldest dropped first), so a
request naming a `previous_response_id` continues it. Behind several replicas that works where the client
reaches the same replica (session affinity), else the id is unknown and the request is refused with a 400
that says so. `store: false` keeps nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from gateway.api.asgi import Receive, Scope, Send, header, send_error
from gateway.backends import NEED_RESPONSES
from gateway.errors import GatewayError, InvalidRequest, Unauthorized
from gateway.fronts.bridge import ChatEventRelay, read_raw, serve_as
from gateway.fronts.responses_stream import ResponseStream
from gateway.fronts.responses_translate import chat_request, history_of, new_id, response_answer
from gateway.protocol import parse_body
from gateway.runtime import Gateway

STORE_ENTRIES = 1024
STORE_BYTES = 64 * 2**20


class ConversationStore:
    """Past conversations by response id, bounded in count and in (JSON) bytes; least recently used go first."""

    def __init__(self, entries: int = STORE_ENTRIES, max_bytes: int = STORE_BYTES) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._items: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self.bytes = 0

    def get(self, rid: str) -> list[dict[str, Any]] | None:
        hit = self._items.get(rid)
        if hit is None:
            return None
        self._items.move_to_end(rid)
        return hit[0]

    def put(self, rid: str, messages: list[dict[str, Any]]) -> None:
        size = len(orjson.dumps(messages))
        if size > self.max_bytes:
            return
        self._items[rid] = (messages, size)
        self.bytes += size
        while len(self._items) > self.entries or self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old


class ResponsesRelay(ChatEventRelay):
    """Chat answers as a `response` object, or as the Responses stream events."""

    stream_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

    def __init__(self, send: Send, body: dict[str, Any], rid: str, chat: dict[str, Any],
                 store: ConversationStore | None) -> None:
        super().__init__(send)
        self.body, self.rid, self.chat, self.store = body, rid, chat, store
        self.stream = ResponseStream(body, rid)

    def _keep(self, output: list[dict[str, Any]]) -> None:
        if self.store is not None:
            self.store.put(self.rid, history_of(self.body, self.chat, output))

    def begin(self) -> bytes:
        return self.stream.start()

    def chunk(self, doc: dict[str, Any]) -> bytes:
        return self.stream.chunk(doc)

    def failed(self, message: str) -> bytes:
        return self.stream.fail(message)

    def finish(self) -> bytes:
        if self.stream.ended:
            return b""
        out = self.stream.end()
        self._keep(self.stream.output)
        return out

    def whole(self, status: int, raw: bytes) -> tuple[bytes, bytes]:
        if status >= 400:
            return b"application/json", raw  # the chat path's error is already OpenAI's envelope
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = {}
        doc = response_answer(self.body, parsed if isinstance(parsed, dict) else {}, self.rid)
        self._keep(doc["output"])
        return b"application/json", orjson.dumps(doc)


class ResponsesFront:
    def __init__(self, gw: Gateway, native: Any, chat: Any) -> None:
        # native: the pass-through handler (endpoint="responses"); chat: a chat handler of its own
        # (endpoint="responses.chat")
        self.gw, self.native, self.chat = gw, native, chat
        self.store = ConversationStore()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        try:
            if gw.api_keys and gw.keys.identify(header(scope, b"authorization") or header(scope, b"x-api-key")) is None:
                raise Unauthorized("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")
            raw = await read_raw(gw, scope, receive)
            body = parse_body(raw)
            if not isinstance(body, dict):
                raise InvalidRequest("The request body must be a JSON object.")
            if not isinstance(body.get("model"), str):
                raise InvalidRequest("model is required", param="model", code="missing_required_parameter")
            route = gw.table.resolve(body["model"])
            if any(d.backend.capmask & NEED_RESPONSES for d in route.deployments):
                return await serve_as(self.native, "/v1/responses", body, scope, receive, send, raw)
            history: list[dict[str, Any]] = []
            prev = body.get("previous_response_id")
            if prev is not None:
                found = self.store.get(prev) if isinstance(prev, str) else None
                if found is None:
                    raise InvalidRequest(f"Previous response with id '{prev}' not found (this gateway keeps the "
                                         f"last {self.store.entries} conversations in memory, per replica).",
                                         param="previous_response_id", code="previous_response_not_found")
                history = found
            chat = chat_request(body, history)
            keep = self.store if body.get("store", True) is not False else None
            await serve_as(self.chat, "/v1/chat/completions", chat, scope, receive,
                           ResponsesRelay(send, body, new_id("resp"), chat, keep))
        except GatewayError as err:
            await send_error(send, err)
