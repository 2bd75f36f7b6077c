"""FastAPI dependencies shared by the framework-served (non-hot) endpoints."""

from __future__ import annotations

from fastapi import Request

from gateway.errors import Unauthorized
from gateway.runtime import Gateway


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def require_api_key(request: Request) -> None:
    gw = get_gateway(request)
    if not gw.api_keys:
        return
    h = request.headers.get("authorization") or request.headers.get("x-api-key")
    if not gw.authorized(h.encode() if h else None):
        raise Unauthorized("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")
