"""App wiring (routes, FastAPI-style 404/405, `server: uvicorn`), argument parsing and main."""

from __future__ import annotations

import argparse
from typing import Callable

from aiohttp import web

from .admin import exit_, root, status, switch_model, update_config
from .catalog import credit_grants, models, one_model
from .completions import chat_completions, completions
from .embeddings import embeddings
from .hooks import hooks
from .responses import detail
from .state import State
from .tokens import DEFAULT_TEXT


@web.middleware
async def fastapi_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as e:
        resp = detail(405, "Method Not Allowed")
        resp.headers["Allow"] = ", ".join(sorted(e.allowed_methods))
        return resp
    except web.HTTPNotFound:
        return detail(404, "Not Found")


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "uvicorn"


def make_app(a: argparse.Namespace) -> web.Application:
    app = web.Application(middlewares=[fastapi_errors], client_max_size=64 * 1024 * 1024)
    app["state"] = State(a)
    app.on_response_prepare.append(server_header)
    r = app.router
    r.add_get("/", root, allow_head=False)
    r.add_get("/status", status, allow_head=False)
    r.add_post("/switch-model", switch_model)
    r.add_post("/update-config", update_config)
    for prefix in ("", "/v1"):
        r.add_post(f"{prefix}/chat/completions", chat_completions)
        r.add_post(f"{prefix}/completions", completions)
        r.add_post(f"{prefix}/embeddings", embeddings)
        r.add_post(f"{prefix}/engines/text-embedding-ada-002/embeddings", embeddings)
        r.add_get(f"{prefix}/models", models, allow_head=False)
        r.add_get(f"{prefix}/models/{{model_id}}", one_model, allow_head=False)
    r.add_get("/dashboard/billing/credit_grants", credit_grants, allow_head=False)
    r.add_post("/exit", exit_)
    r.add_route("*", "/_{what}", hooks)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RWKV-Runner backend-python test double")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--load-seconds", type=float, default=1.0, help="how long /switch-model loads")
    p.add_argument("--preload", default=None, help="start with this model path loaded (status 3)")
    p.add_argument("--ping-seconds", type=float, default=15.0, help="SSE ping comment interval")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the generated answer")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    p.add_argument("--device-name", default="CPU")
    p.add_argument("--embedding-dim", type=int, default=16, help="length of a (v4-style) flat embedding")
    p.add_argument("--embedding-shape", type=lambda v: [int(x) for x in v.split(",")] if v else [], default=[],
                   help="H,N,N: a v5+ model's nested (heads, head_size, head_size) embedding instead")
    p.add_argument("--exit-kills", action="store_true", help="POST /exit really ends the process")
    p.add_argument("--fail-generations", action="store_true",
                   help='every generation fails, as x_double {"fail": true} makes one fail')
    return p.parse_args(argv)


def main() -> None:
    a = parse_args()
    web.run_app(make_app(a), host=a.host, port=a.port, print=None, access_log=None, handler_cancellation=True)
