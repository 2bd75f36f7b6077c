"""Errors (router/src/infer/mod.rs InferError, server.rs From<InferError>) and their JSON responses."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .encoding import dumps


STATUS = {
    "generation": 424,
    "overloaded": 429,
    "validation": 422,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "template_error": 422,
    "missing_template_variable": 422,
    "tool_error": 422,
    "stream_serialization_error": 500,
}

PREFIX = {
    "generation": "Request failed during generation: ",
    "validation": "Input validation error: ",
    "template_error": "Template error: ",
    "tool_error": "Tool error: ",
}


class InferError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        if kind == "overloaded":
            self.message = "Model is overloaded"
        elif kind == "incomplete_generation":
            self.message = "Incomplete generation"
        elif kind == "incomplete_generation_stream":
            self.message = "Incomplete generation stream"
        else:
            self.message = PREFIX.get(kind, "") + detail
        super().__init__(self.message)

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.kind}

    def response(self) -> web.Response:
        return json_response(self.body(), status=STATUS[self.kind])

    def openai_event(self) -> dict:  # into_openai_event: the status is hard-coded
        return {"error": {"message": self.message, "http_status_code": 422}}


def validation_error(detail: str) -> InferError:
    return InferError("validation", detail)


def json_response(doc: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, body=dumps(doc), headers={"Content-Type": "application/json", **(headers or {})}
    )
