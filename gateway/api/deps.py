"""FastAPI dependencies shared by the framework-served (non-hot) endpoints.

Keys are read from the raw header bytes, exactly as the raw-ASGI inference path reads them, so a
key matches (or not) the same way on every endpoint (gateway/auth/keys.py).
"""

from __future__ import annotations

from fastapi import Request

from gateway.auth.admin import check_admin
from gateway.errors import Unauthorized
from gateway.runtime import Gateway


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def credential(request: Request) -> bytes | None:
    """The raw Authorization value, or X-Api-Key's when there is no Authorization header."""
    auth = xkey = None
    for k, v in request.scope["headers"]:
        if k == b"authorization":
            auth = v
        elif k == b"x-api-key":
            xkey = v
    return auth or xkey  # as the inference path reads it (gateway/api/proxy.py)


def require_api_key(request: Request) -> None:
    if not get_gateway(request).authorized(credential(request)):
        raise Unauthorized("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")


def require_admin(request: Request) -> None:
    headers = {k: v for k, v in request.scope["headers"] if k in (b"host", b"origin", b"sec-fetch-site")}
    client = request.client.host if request.client else None
    check_admin(get_gateway(request).keys, headers, credential(request), client)
