"""App wiring: routes, API-key middleware and axum's empty 401/404/405 responses."""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp import web

from .bodies import Rejection
from .chat_routes import chat_route, chat_tokenize_route
from .completion_routes import completions_route
from .hook_routes import hooks
from .info_routes import health, info, metrics, models, openapi_doc
from .invocation_routes import invocations_route
from .native_routes import compat_route, generate_route, generate_stream_route, tokenize_route
from .state import State


PROTECTED = {
    ("POST", "/"),
    ("POST", "/generate"),
    ("POST", "/generate_stream"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/invocations"),
    ("POST", "/tokenize"),
}


@web.middleware
async def tgi_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    st: State = request.app["state"]
    if st.api_key is not None and (request.method, request.path) in PROTECTED:
        token = request.headers.get("Authorization")
        if token is None or token.lower() != f"Bearer {st.api_key}".lower():
            return web.Response(status=401)
    try:
        return await handler(request)
    except Rejection as r:
        return r.response()
    except web.HTTPMethodNotAllowed as e:  # axum: 405, empty body, Allow header
        return web.Response(status=405, headers={"Allow": ",".join(sorted(e.allowed_methods))})
    except web.HTTPNotFound:
        return web.Response(status=404)


def make_app(a: argparse.Namespace) -> web.Application:
    app = web.Application(middlewares=[tgi_middleware], client_max_size=a.payload_limit + 1)
    app["state"] = State(a)
    app["no_openai_completions"] = a.no_openai_completions
    r = app.router
    r.add_post("/", compat_route)
    r.add_get("/", health)
    r.add_post("/generate", generate_route)
    r.add_post("/generate_stream", generate_stream_route)
    r.add_post("/v1/chat/completions", chat_route)
    if not a.no_openai_completions:
        r.add_post("/v1/completions", completions_route)
    r.add_post("/invocations", invocations_route)
    r.add_post("/tokenize", tokenize_route)
    r.add_post("/chat_tokenize", chat_tokenize_route)
    r.add_get("/info", info)
    r.add_get("/health", health)
    r.add_get("/ping", health)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/models", models)
    r.add_get("/api-doc/openapi.json", openapi_doc)
    r.add_route("*", "/_{what}", hooks)
    return app
