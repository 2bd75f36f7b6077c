"""App wiring: state, preloaded models, routes."""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from .gojson import now_ns
from .catalog import parse_name
from .scheduler import _split, State
from .api_inference import chat, generate
from .api_embed import embed, embeddings_legacy
from .api_models import ps, root, show, tags, version
from .openai_routes import v1_chat, v1_completions, v1_embeddings, v1_model, v1_models
from .middleware import gin_middleware
from .hooks import hooks


async def preload(app: web.Application) -> None:
    st: State = app["state"]
    for m in app["preload"]:
        info = st.lookup(parse_name(m))
        if info is None:
            raise SystemExit(f"--loaded {m}: not in --models/--embed-models")
        r = st.start_load(info, None, None, 0)
        await r.load_task
        r.expires_ns = now_ns() + r.session_ns
        if r.session_ns < (1 << 62):
            r.timer = asyncio.get_running_loop().call_later(r.session_ns / 1e9, st._timer_expired, r)


def make_app(a: argparse.Namespace) -> web.Application:
    app = web.Application(middlewares=[gin_middleware], client_max_size=64 * 1024 * 1024)
    app["state"] = State(a)
    app["preload"] = _split(a.loaded)
    app.on_startup.append(preload)
    r = app.router
    r.add_get("/", root)  # GET and HEAD
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps, allow_head=False)
    r.add_post("/api/show", show)
    r.add_post("/api/chat", chat)
    r.add_post("/api/generate", generate)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings_legacy)
    r.add_post("/v1/chat/completions", v1_chat)
    r.add_post("/v1/completions", v1_completions)
    r.add_post("/v1/embeddings", v1_embeddings)
    r.add_get("/v1/models", v1_models, allow_head=False)
    r.add_get("/v1/models/{model}", v1_model, allow_head=False)
    r.add_route("*", "/_{what}", hooks)
    return app
