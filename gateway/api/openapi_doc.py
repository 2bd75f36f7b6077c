"""The inference endpoints in the OpenAPI document.

POST /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/responses are raw ASGI (gateway/api/proxy.py),
so FastAPI cannot see them: this fragment describes them and is merged into FastAPI's schema.
Each request schema says exactly what gateway/protocol.py checks (a wrong value there is a 400),
and allows every other property, which the gateway forwards untouched for the backend to judge.
Every error status leaves in the OpenAI envelope; the schemathesis run (tests/test_schemathesis.py)
holds the running gateway to this document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

JSON = "application/json"
SSE = "text/event-stream"

_REF = "#/components/schemas/"
NULL = {"type": "null"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, NULL]}


def _text_or_array(what: str) -> dict[str, Any]:
    return {"description": f"{what}: a string or an array (of strings, token ids or arrays of token ids; the "
                           "items are the backend's to judge).",
            "anyOf": [{"type": "string"}, {"type": "array"}]}


STREAM = {**_nullable({"type": "boolean"}), "default": False,
          "description": "true: the answer comes as server-sent events (text/event-stream), ending with "
                         "`data: [DONE]`."}
STREAM_OPTIONS = {**_nullable({"type": "object", "additionalProperties": True}),
                  "description": "Only with `stream: true` (a 400 otherwise, on every backend). "
                                 "`include_usage: true` adds a last chunk with the token usage."}
N = {**_nullable({"type": "integer", "minimum": 1}), "description": "Choices to generate; n > 1 only on "
     "backends that can (a 400 `unsupported_parameter` otherwise)."}
# `stream_options` with anything but `stream: true` is refused (gateway/protocol.py).
STREAM_OPTIONS_NEED_STREAM = {
    "if": {"not": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
    "then": {"properties": {"stream_options": NULL}},
}


def _model(examples: list[str]) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "examples": examples or ["my-model"],
            "description": "A model name or alias this gateway serves (GET /v1/models lists them); "
                           "any other name is a 404 `model_not_found`."}


def request_schemas(models: list[str]) -> dict[str, dict[str, Any]]:
    model = _model(models)
    return {
        "ChatCompletionRequest": {
            "type": "object", "required": ["model", "messages"], "additionalProperties": True,
            "description": "Checked: the fields below. Every other field (temperature, tools, ...) is "
                           "forwarded untouched.",
            "properties": {
                "model": model,
                "messages": {"type": "array", "minItems": 1,
                             "items": {"type": "object", "additionalProperties": True},
                             "description": "The conversation: message objects (role, content, ...)."},
                "stream": STREAM, "stream_options": STREAM_OPTIONS, "n": N,
            },
            **STREAM_OPTIONS_NEED_STREAM,
        },
        "CompletionRequest": {
            "type": "object", "required": ["model", "prompt"], "additionalProperties": True,
            "description": "Checked: the fields below. Every other field is forwarded untouched.",
            "properties": {"model": model, "prompt": _text_or_array("The prompt"), "stream": STREAM,
                           "stream_options": STREAM_OPTIONS, "n": N},
            **STREAM_OPTIONS_NEED_STREAM,
        },
        "EmbeddingRequest": {
            "type": "object", "required": ["model", "input"], "additionalProperties": True,
            "description": "Checked: the fields below. Every other field is forwarded untouched.",
            "properties": {"model": model, "input": _text_or_array("The text(s) to embed"),
                           "stream": {**_nullable({"type": "boolean"}), "description": "Ignored: never a stream."},
                           "n": N},
        },
        "ResponseRequest": {
            "type": "object", "required": ["model", "input"], "additionalProperties": True,
            "description": "OpenAI's Responses API, passed through to backends whose server implements it "
                           "(a 400 `unsupported_parameter` for a model served by no such backend). Checked: the "
                           "fields below. Every other field (instructions, tools, max_output_tokens, ...) is "
                           "forwarded untouched.",
            "properties": {"model": model,
                           "input": _text_or_array("The input: a string or an array of input items"),
                           "stream": {**STREAM, "description": "true: the answer comes as server-sent events "
                                      "(`event: response.*` + `data: {...}`), ending with `response.completed` "
                                      "(or `response.incomplete` / `response.failed`); no `[DONE]`."},
                           "stream_options": STREAM_OPTIONS},
            **STREAM_OPTIONS_NEED_STREAM,
        },
    }


def _usage() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": True,
            "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                           "total_tokens": {"type": "integer"}}}


def _answer(obj: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["id", "object", "created", "model", "choices"],
            "additionalProperties": True,
            "properties": {"id": {"type": "string"}, "object": {"const": obj}, "created": {"type": "integer"},
                           "model": {"type": "string"},
                           "choices": {"type": "array", "items": {**choice, "type": "object",
                                                                  "additionalProperties": True}},
                           "usage": _nullable(_usage())}}


RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "ChatCompletion": _answer("chat.completion", {
        "required": ["index", "message"],
        "properties": {"index": {"type": "integer"}, "message": {"type": "object"},
                       "finish_reason": _nullable({"type": "string"})}}),
    "Completion": _answer("text_completion", {
        "required": ["index", "text"],
        "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                       "finish_reason": _nullable({"type": "string"})}}),
    "EmbeddingList": {
        "type": "object", "required": ["object", "data", "model"], "additionalProperties": True,
        "properties": {
            "object": {"const": "list"}, "model": {"type": "string"}, "usage": _nullable(_usage()),
            "data": {"type": "array", "items": {
                "type": "object", "required": ["index", "embedding"], "additionalProperties": True,
                "properties": {"index": {"type": "integer"}, "object": {"const": "embedding"},
                               "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                                       {"type": "string"}]}}}}}},
    "Response": {
        "type": "object", "required": ["id", "object", "output"], "additionalProperties": True,
        "properties": {"id": {"type": "string"}, "object": {"const": "response"}, "model": {"type": "string"},
                       "status": {"type": "string"},
                       "output": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
                       "usage": _nullable({"type": "object", "additionalProperties": True,
                                           "properties": {"input_tokens": {"type": "integer"},
                                                          "output_tokens": {"type": "integer"},
                                                          "total_tokens": {"type": "integer"}}})}},
    "EventStream": {  # one event of the stream (comments such as `: keepalive` are none)
        "type": "object", "required": ["data"], "additionalProperties": True,
        "description": "One server-sent event: `data: <chunk JSON>`; an error after the answer began as "
                       "`data: {\"error\": {...}}`; the last is `data: [DONE]`.",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}},
    "OpenAIError": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"], "additionalProperties": True,
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": _nullable({"type": "string"}), "code": _nullable({"type": "string"})}}}},
}

# Every error status the inference endpoints answer, and why. Any other 4xx is a backend's own
# answer to the request, relayed in the same envelope ("default").
ERRORS: dict[str, str] = {
    "400": "Invalid request: not JSON, not an object, a checked field missing or of the wrong type, "
           "a parameter the chosen backends lack, or the backend's own 400.",
    "401": "Missing or wrong API key (when keys are configured).",
    "404": "No such model on this gateway.",
    "405": "Not POST (`Allow: POST`).",
    "413": "The body is larger than `server.max_body_bytes`.",
    "415": "The body is not sent as `Content-Type: application/json`.",
    "429": "A backend's concurrency limit or the backend itself refused it (`Retry-After`).",
    "500": "A gateway bug (logged with the request id).",
    "502": "A backend failed or answered something that is not a valid answer.",
    "503": "No ready backend serves the model, or the gateway is busy (`Retry-After`).",
    "504": "A backend did not answer in time.",
    "default": "Any other error status: a backend's 4xx answer, relayed.",
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": _REF + "OpenAIError"}}}}


def _operation(summary: str, request: str, answer: str, stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {JSON: {"schema": {"$ref": _REF + answer}}}
    if stream:
        content[SSE] = {"schema": {"$ref": _REF + "EventStream"}}
    return {
        "summary": summary, "operationId": request[0].lower() + request[1:].removesuffix("Request"),
        "tags": ["inference"],
        "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": _REF + request}}}},
        "responses": {
            "200": {"description": "The answer (JSON, or with `stream: true` server-sent events).",
                    "headers": {"x-request-id": {"required": True, "schema": {"type": "string"},
                                                 "description": "The key to this request's log lines."}},
                    "content": content},
            **{status: _error_response(why) for status, why in ERRORS.items()},
        },
    }


def inference_paths() -> dict[str, Any]:
    return {
        "/v1/chat/completions": {"post": _operation("Chat completion", "ChatCompletionRequest", "ChatCompletion",
                                                    True)},
        "/v1/completions": {"post": _operation("Text completion", "CompletionRequest", "Completion", True)},
        "/v1/embeddings": {"post": _operation("Embeddings", "EmbeddingRequest", "EmbeddingList", False)},
        "/v1/responses": {"post": _operation("Response (Responses API)", "ResponseRequest", "Response", True)},
    }


def _errors_as_sent(operations: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 with its own error shape; the gateway's handlers (gateway/app.py)
    answer a 400, and every error, in the OpenAI envelope: say so."""
    out = {}
    for method, op in operations.items():
        responses = {k: v for k, v in op.get("responses", {}).items() if k != "422"}
        if "422" in op.get("responses", {}):
            responses["400"] = _error_response("Invalid parameters.")
        responses.setdefault("default", _error_response("Any error status (404 for an unknown name, ...)."))
        out[method] = {**op, "responses": responses}
    return out


def install(api: FastAPI, served_models: Callable[[], list[str]]) -> None:
    """Make `api.openapi()` include the inference endpoints. The model examples are the names served
    when the document is asked for, so a client (or a fuzzer) can try one that answers."""
    base = api.openapi

    def openapi() -> dict[str, Any]:
        doc = dict(base())  # FastAPI's own, cached: copied, never changed in place
        components = dict(doc.get("components") or {})
        components["schemas"] = {**components.get("schemas", {}), **request_schemas(served_models()),
                                 **RESPONSE_SCHEMAS}
        doc["components"] = components
        doc["paths"] = {**inference_paths(), **{path: _errors_as_sent(ops) for path, ops in doc["paths"].items()}}
        if "/metrics" in doc["paths"]:  # Prometheus' text format, not the JSON FastAPI assumes
            get = doc["paths"]["/metrics"]["get"]
            get["responses"]["200"] = {"description": "Prometheus text exposition format.",
                                       "content": {"text/plain": {"schema": {"type": "string"}}}}
        return doc

    api.openapi = openapi  # type: ignore[method-assign]
