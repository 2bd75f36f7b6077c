"""OpenAI wire shapes at the API edge.

Requests are *not* validated whole (that costs time on every token path and would drop vendor
fields): `routing_fields` checks only what routing needs and the fields whose wrong type every
backend would reject anyway. Responses the gateway builds itself are pydantic models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from adapters.base import Endpoint
from gateway.backends import ENDPOINT_NEED, NEED_LOGPROBS, NEED_N, NEED_TOOLS
from gateway.errors import InvalidRequest

# The field each endpoint cannot do without, besides `model`.
REQUIRED_INPUT = {Endpoint.CHAT: "messages", Endpoint.COMPLETIONS: "prompt", Endpoint.EMBEDDINGS: "input"}


def routing_fields(endpoint: Endpoint, body: Any) -> tuple[str, bool, int]:
    """(model, stream, needs bitmask) of a parsed request body, or InvalidRequest (400)."""
    if type(body) is not dict:
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if type(model) is not str or not model:
        if model is None:
            raise InvalidRequest("You must provide a model parameter.", param="model",
                                 code="missing_required_parameter")
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_type")
    field = REQUIRED_INPUT[endpoint]
    value = body.get(field)
    if value is None:
        raise InvalidRequest(f"'{field}' is a required property.", param=field,
                             code="missing_required_parameter")
    if endpoint is Endpoint.CHAT and (type(value) is not list or not value):
        raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages",
                             code="invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    elif type(stream) is not bool:
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    if endpoint is Endpoint.EMBEDDINGS:
        stream = False
    elif body.get("stream_options") is not None and not stream:
        # vLLM answers 400 here and others ignore it: one behaviour for every backend.
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.",
                             param="stream_options", code="invalid_value")
    needs = ENDPOINT_NEED[endpoint]
    if body.get("tools"):
        needs |= NEED_TOOLS
    if body.get("logprobs"):
        needs |= NEED_LOGPROBS
    n = body.get("n")
    if n is not None:
        if type(n) is not int or n < 1:
            raise InvalidRequest("'n' must be an integer >= 1.", param="n", code="invalid_value")
        if n > 1:
            needs |= NEED_N
    return model, stream, needs


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "llm-gateway"
    aliases: list[str] = []
    context_length: int | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail
