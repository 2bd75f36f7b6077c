"""JSON responses as starlette renders them and FastAPI's {"detail": ...} error shape."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def dumps(obj: Any) -> bytes:
    """starlette JSONResponse.render: compact, UTF-8 as is."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, headers={"Content-Type": "application/json"})


def detail(status: int, message: Any) -> web.Response:
    return json_response({"detail": message}, status)
