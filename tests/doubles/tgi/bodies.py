"""Request bodies: axum's Json extractor (rejections), the x_double control field, GenerateParameters."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .deserialize import DeError, check
from .json_parser import JsonSyntaxError, Node, _Parser, line_col
from .state import State


class Rejection(Exception):
    """An axum extractor rejection: plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=self.text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}
        )


def parse_body(st: "State", request: web.Request, raw: bytes, spec: Any) -> tuple[dict, Node]:
    ctype = request.headers.get("Content-Type", "")
    mime = ctype.split(";")[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise Rejection(415, "Expected request with `Content-Type: application/json`")
    if len(raw) > st.payload_limit:
        raise Rejection(413, "Failed to buffer the request body: length limit exceeded")
    try:
        node = _Parser(raw).document()
    except JsonSyntaxError as e:
        line, col = line_col(raw, e.pos)
        raise Rejection(
            400, f"Failed to parse the request body as JSON: {e.msg} at line {line} column {col}"
        ) from None
    try:
        value = check(node, spec)
    except DeError as e:
        line, col = line_col(raw, e.pos)
        prefix = f"{e.path}: " if e.path else ""
        raise Rejection(
            422,
            f"Failed to deserialize the JSON body into the target type: {prefix}{e.msg} at line "
            f"{line} column {col}",
        ) from None
    return value, node


def control(st: State, node: Node) -> dict:
    raw = node.py() if node.kind == "obj" else {}
    ctl = raw.get("x_double")
    if not isinstance(ctl, dict):
        params = raw.get("parameters")
        ctl = params.get("x_double") if isinstance(params, dict) else None
    return {**st.default_ctl, **(ctl if isinstance(ctl, dict) else {})}


def generate_params(body: dict) -> dict:
    if "parameters" in body:
        return dict(body["parameters"])
    return {"do_sample": True}  # lib.rs default_parameters(): do_sample true when "parameters" is absent


def record(st: State, request: web.Request, node: Node) -> None:
    st.requests.append(
        {"path": request.path, "body": node.py(), "authorization": request.headers.get("Authorization")}
    )


async def read_json(request: web.Request, spec: Any) -> tuple[dict, Node]:
    st: State = request.app["state"]
    raw = await request.read()
    body, node = parse_body(st, request, raw, spec)
    record(st, request, node)
    return body, node
