"""The app factory: the whole request path on one screen.

    client -> GatewayApp (raw ASGI)
                ├─ POST /v1/chat/completions, /v1/completions, /v1/embeddings -> api.proxy.ProxyEndpoint
                │     auth -> body -> routing fields -> route -> balancer -> adapter -> upstream -> relay
                ├─ POST /v1/responses -> fronts.responses: passed through (a backend that serves it) or onto chat
                ├─ /api/* (Ollama's API: version, tags, show, chat, generate, embed) -> fronts.ollama, onto the above
                ├─ POST /v1/messages (Anthropic's Messages API) -> fronts.anthropic: passed through or onto chat
                └─ everything else -> FastAPI: /v1/models, /healthz, /readyz, /metrics, /admin/backends
    lifespan: upstream client pool, autodiscovery (zero-config), first probe round, health monitor
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request

from adapters.base import Endpoint
from gateway import __version__
from gateway.api import models, openapi_doc, ops
from gateway.api.asgi import BodySlots, Receive, Scope, Send, header, send_error
from gateway.api.cors import Cors
from gateway.api.proxy import ProxyEndpoint
from gateway.autodiscover import Autodiscovery
from gateway.errors import GatewayError, InvalidRequest
from gateway.fronts.anthropic import AnthropicFront
from gateway.fronts.ollama import OllamaFront
from gateway.fronts.responses import ResponsesFront
from gateway.health import HealthMonitor
from gateway.passive_health import PassiveHealth
from gateway.runtime import Gateway
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


class GatewayApp:
    """Sends the inference endpoints straight to their raw-ASGI handlers; the rest to FastAPI."""

    def __init__(self, api: FastAPI, gw: Gateway) -> None:
        self.api = api
        self.gateway = gw
        self.hot: dict[str, ProxyEndpoint] = {}
        self.cors = Cors(gw.settings.cors) if gw.settings.cors.allow_origins else None
        s = gw.settings.server
        # One body-slot budget and one failure count for the inference endpoints together.
        slots = BodySlots(s.max_large_bodies, s.large_body_wait) if s.max_large_bodies else None
        health = PassiveHealth(gw)
        # Other clients' protocols, translated onto the chat path (looked up only when no hot path matched).
        def front(ep: Endpoint, label: str) -> ProxyEndpoint:  # its own handler: its own metrics label
            return ProxyEndpoint(gw, ep, slots, health, label)

        # The Responses API: passed through where the model's backend serves it, else translated to chat.
        responses = ResponsesFront(gw, ProxyEndpoint(gw, Endpoint.RESPONSES, slots, health),
                                   front(Endpoint.CHAT, "responses.chat"))
        for ep, path in ((Endpoint.CHAT, "/chat/completions"), (Endpoint.COMPLETIONS, "/completions"),
                         (Endpoint.EMBEDDINGS, "/embeddings"), (Endpoint.RESPONSES, "/responses")):
            handler = responses if ep is Endpoint.RESPONSES else ProxyEndpoint(gw, ep, slots, health)
            self.hot["/v1" + path] = handler
            self.hot[path] = handler  # clients configured with a base URL lacking /v1

        ollama = OllamaFront(gw, {"chat": front(Endpoint.CHAT, "ollama.chat"),
                                  "generate": front(Endpoint.CHAT, "ollama.generate"),
                                  "raw": front(Endpoint.COMPLETIONS, "ollama.generate"),
                                  "embed": front(Endpoint.EMBEDDINGS, "ollama.embed")})
        anthropic = AnthropicFront(gw, front(Endpoint.MESSAGES, "messages"),
                                   front(Endpoint.COUNT_TOKENS, "messages.count_tokens"),
                                   front(Endpoint.CHAT, "anthropic.messages"))
        self.fronts: dict[str, Any] = {**dict.fromkeys(OllamaFront.paths, ollama),
                                       **dict.fromkeys(AnthropicFront.paths, anthropic)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cors is not None and scope["type"] == "http" and (origin := self.cors.applies(scope)) is not None:
            if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method") is not None:
                return await self.cors.preflight(origin, scope, send)
            send = self.cors.wrap(origin, send)
        if scope["type"] == "http":
            handler = self.hot.get(scope["path"])
            if handler is not None:
                if scope["method"] == "POST":
                    return await handler(scope, receive, send)
                return await send_error(send, GatewayError(
                    f"Method {scope['method']} is not allowed here; use POST.", status=405,
                    type="invalid_request_error", code="method_not_allowed", headers={"Allow": "POST"}))
            front = self.fronts.get(scope["path"])
            if front is not None:
                return await front(scope, receive, send)
        await self.api(scope, receive, send)


def create_app(settings: GatewaySettings) -> GatewayApp:
    gw = Gateway(settings)
    monitor = HealthMonitor(gw)
    discovery = Autodiscovery(gw, monitor) if settings.autodiscover_enabled() else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.upstream.start()
        if gw.usage is not None:
            await gw.usage.start()
        if gw.gatekeeper is not None:
            gw.gatekeeper.start()
        if gw.supervisor is not None:
            gw.supervisor.probe = monitor.probe
            await gw.supervisor.start()
        await monitor.probe_all()
        if discovery is not None:
            await discovery.scan()
            discovery.start()
        monitor.start()
        log_routes(gw)
        # Everything imported and built so far lives for the whole process: keep it out of the
        # collector's scans, so full collections stay short (they showed as p99 latency spikes).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if discovery is not None:
                await discovery.stop()
            await monitor.stop()
            if gw.supervisor is not None:
                await gw.supervisor.shutdown()
            if gw.gatekeeper is not None:
                await gw.gatekeeper.close()
            if gw.usage is not None:
                await gw.usage.close()
            await gw.upstream.close()

    # With keys, a team endpoint: no interactive console or schema for anonymous callers (README "Security").
    docs = not gw.keys.configured
    api = FastAPI(title="llm-gateway", version=__version__, lifespan=lifespan,
                  description="One OpenAI-compatible endpoint in front of every LLM inference server.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    api.state.gateway = gw
    install_error_handlers(api)
    api.include_router(models.router)
    api.include_router(ops.router)
    if docs:  # the raw-ASGI inference endpoints, which FastAPI cannot see, in the same document
        openapi_doc.install(api, lambda: [r.name for r in gw.table.routes])
    return GatewayApp(api, gw)


def install_error_handlers(api: FastAPI) -> None:
    """Every error leaves in the OpenAI envelope, never as a stack trace."""

    @api.exception_handler(GatewayError)
    async def _gateway(_: Request, err: GatewayError) -> JSONResponse:
        return JSONResponse(err.envelope(), status_code=err.status, headers=err.headers)

    @api.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        err = GatewayError(str(exc.detail), status=exc.status_code, type=kind,
                           code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.envelope(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        err = InvalidRequest(str(first.get("msg", "invalid request")),
                             param=".".join(str(p) for p in first.get("loc", ())[1:]) or None)
        return JSONResponse(err.envelope(), status_code=400)

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        err = GatewayError("The gateway hit an internal error; it has been logged.", status=500)
        return JSONResponse(err.envelope(), status_code=500)


def log_routes(gw: Gateway) -> None:
    if not gw.table.routes:
        log.warning("no models to serve yet: no backend reported a model and none is configured")
    for r in gw.table.routes:
        deps = ", ".join(f"{d.backend.name}:{d.upstream_model} [{d.backend.state.value}]" for d in r.deployments)
        alias = f" (aliases: {', '.join(r.aliases)})" if r.aliases else ""
        log.info("model %s%s -> %s", r.name, alias, deps)
