"""The Ollama-compatible front: `GET /api/version`, `GET /api/tags`, `POST /api/chat` for every backend
behind the gateway, so clients that only speak Ollama's API (the `ollama` Python client, editor and desktop
apps) reach vLLM, llama.cpp, TGI, FastChat and RWKV-Runner backends too.

A chat request is translated (gateway/fronts/ollama_translate.py) and served by the gateway's own chat
completions handler, with the client's headers: keys, limits, routing, retries, health and metrics are
the chat path's. Its answer is translated back as it arrives (SSE -> NDJSON); errors keep their status
and take Ollama's shape, `{"error": "<message>"}`.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.api.asgi import Receive, Scope, Send, header
from gateway.errors import GatewayError, Unauthorized
from gateway.backends import NEED_CHAT, NEED_EMBEDDINGS, NEED_TOOLS
from gateway.fronts.bridge import Relay, error_message, read_json, serve_as
from gateway.fronts.ollama_translate import (ChatStream, chat_answer, chat_request, embed_answer, embed_request,
                                             generate_request, now_rfc3339)
from gateway.runtime import Gateway

VERSION = "0.32.15"  # the Ollama release whose API this front follows (deploy/recipes/ollama.yaml)
NDJSON = b"application/x-ndjson"
JSON = b"application/json; charset=utf-8"
CHAT_PATH = "/v1/chat/completions"
DETAILS = {"parent_model": "", "format": "", "family": "", "families": None, "parameter_size": "",
           "quantization_level": ""}  # what a model's weights are is the backend's business, unknown here


def _error_body(status: int, raw: bytes) -> bytes:
    return orjson.dumps({"error": error_message(raw, status)})


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def send_ollama(send: Send, status: int, doc: Any, extra: list[tuple[bytes, bytes]] | None = None,
                      head: bool = False) -> None:
    body = orjson.dumps(doc)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", JSON), (b"content-length", b"%d" % len(body)), *(extra or [])]})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


class ChatRelay(Relay):
    """Chat, generate and embed answers as Ollama's: NDJSON lines for a stream, one object otherwise."""

    stream_headers = [(b"content-type", NDJSON)]

    def __init__(self, send: Send, model: str, started: float, mode: str = "chat") -> None:
        super().__init__(send)
        self.model, self.started, self.mode = model, started, mode  # chat, generate, embed
        self.stream = ChatStream(model, started, generate=mode == "generate")

    def event(self, data: bytes) -> bytes:
        if self.stream.ended:
            return b""
        if data == b"[DONE]":
            return self.stream.end()
        doc = parse_json(data)
        if not isinstance(doc, dict):
            return b""
        if "error" in doc:  # an error after the answer started: Ollama's in-stream error line
            self.stream.ended = True
            return _error_body(500, data) + b"\n"
        return self.stream.chunk(doc)

    def finish(self) -> bytes:
        return self.stream.end()

    def whole(self, status: int, raw: bytes) -> tuple[bytes, bytes]:
        if status >= 400:
            return JSON, _error_body(status, raw)
        doc = parse_json(raw)
        doc = doc if isinstance(doc, dict) else {}
        return JSON, orjson.dumps(embed_answer(doc, self.model, self.started) if self.mode == "embed" else
                                  chat_answer(doc, self.model, self.started, generate=self.mode == "generate"))


class OllamaFront:
    paths = frozenset({"/api/version", "/api/tags", "/api/show", "/api/chat", "/api/generate", "/api/embed"})

    def __init__(self, gw: Gateway, handlers: dict[str, Any]) -> None:
        # OpenAI-path handlers of its own (chat, generate, raw, embed), each counted under its own
        # metrics label (ollama.chat, ollama.generate, ollama.embed)
        self.gw, self.handlers = gw, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path == "/api/version":
                self._method(method, ("GET", "HEAD"))
                return await send_ollama(send, 200, {"version": VERSION}, head=method == "HEAD")
            if path == "/api/tags":
                self._method(method, ("GET", "HEAD"))
                return await send_ollama(send, 200, self._tags(scope), head=method == "HEAD")
            self._method(method, ("POST",))
            if path == "/api/show":
                return await send_ollama(send, 200, self._show(await self._body(scope, receive), scope))
            await self._translated(path, scope, receive, send)
        except GatewayError as err:
            await send_ollama(send, err.status, {"error": err.message},
                              [(k.lower().encode(), v.encode()) for k, v in err.headers.items()])

    @staticmethod
    def _method(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise GatewayError(f"Method {method} is not allowed here; use {' or '.join(allowed)}.", status=405,
                               code="method_not_allowed", headers={"Allow": ", ".join(allowed)})

    def _ident(self, scope: Scope) -> Any:
        """The caller's key identity (None without keys); 401 when keys are set and this is not one."""
        gw = self.gw
        if not gw.api_keys:
            return None
        ident = gw.keys.identify(header(scope, b"authorization") or header(scope, b"x-api-key"))
        if ident is None:
            raise Unauthorized("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")
        return ident

    def _tags(self, scope: Scope) -> dict[str, Any]:
        gw, ident = self.gw, self._ident(scope)
        since = datetime.fromtimestamp(gw.started_at, UTC).isoformat().replace("+00:00", "Z")
        return {"models": [{"name": r.name, "model": r.name, "modified_at": since, "size": 0,
                            "digest": hashlib.sha256(r.name.encode()).hexdigest(), "details": DETAILS}
                           for r in gw.table.routes if ident is None or ident.allows(r.name)]}

    def _show(self, body: Any, scope: Scope) -> dict[str, Any]:
        ident = self._ident(scope)
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        route = self.gw.table.by_name.get(name) if isinstance(name, str) else None
        if route is None or (ident is not None and not ident.allows(route.name)):
            raise GatewayError(f"model '{name}' not found", status=404, code="model_not_found")
        mask = 0
        for d in route.deployments:
            mask |= d.backend.capmask
        caps = [c for c, bit in (("completion", NEED_CHAT), ("tools", NEED_TOOLS), ("embedding", NEED_EMBEDDINGS))
                if mask & bit]
        info: dict[str, Any] = {"general.architecture": "", "general.basename": route.name}
        if route.context_length:
            info["context_length"] = route.context_length
        return {"modelfile": "", "parameters": "", "template": "", "details": DETAILS, "model_info": info,
                "capabilities": caps, "modified_at": now_rfc3339()}

    async def _body(self, scope: Scope, receive: Receive) -> Any:
        return await read_json(self.gw, scope, receive)

    async def _translated(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """/api/chat, /api/generate, /api/embed: translated, then served by the chat path's own handler."""
        started = time.perf_counter()
        body = await self._body(scope, receive)
        mode = path.rsplit("/", 1)[1]
        if mode == "chat":
            target, out = CHAT_PATH, chat_request(body)[0]
        elif mode == "generate":
            target, maybe, stream = generate_request(body)
            if maybe is None:  # an empty prompt: Ollama would load the model; the backends are loaded already
                self._ident(scope)
                done = {"model": body["model"], "created_at": now_rfc3339(), "response": "", "done": True,
                        "done_reason": "load"}
                return await send_ollama(send, 200, done)
            out = maybe
        else:
            target, maybe = "/v1/embeddings", embed_request(body)
            if maybe is None:
                self._ident(scope)
                return await send_ollama(send, 200, {"model": body["model"], "embeddings": []})
            out = maybe
        handler = self.handlers["raw" if target == "/v1/completions" else mode]
        await serve_as(handler, target, out, scope, receive, ChatRelay(send, out["model"], started, mode))
