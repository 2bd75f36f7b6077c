"""Info routes: health (/, /health, /ping), /info, /v1/models, /metrics, /api-doc/openapi.json."""

from __future__ import annotations

from aiohttp import web

from .errors import json_response
from .metrics import render_metrics
from .state import State


async def health(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    st.health_checks += 1
    if st.healthy:
        return web.Response(status=200)
    return json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=503)


async def info(request: web.Request) -> web.Response:
    return json_response(request.app["state"].info())


async def models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    return json_response(
        {
            "object": "list",
            "data": [{"id": st.model_id, "object": "model", "created": 0, "owned_by": st.model_id}],
        }
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=render_metrics(request.app["state"]).encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )


async def openapi_doc(request: web.Request) -> web.Response:
    """TGI serves its OpenAPI document (utoipa) at /api-doc/openapi.json; only `paths` matters here:
    a client can tell from it which routes this server version has."""
    routes = ["/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions", "/invocations",
              "/tokenize", "/chat_tokenize", "/info", "/health", "/metrics", "/v1/models"]
    if request.app["no_openai_completions"]:
        routes.remove("/v1/completions")
    return web.json_response({"openapi": "3.0.3", "info": {"title": "Text Generation Inference"},
                              "paths": {r: {} for r in routes}})
