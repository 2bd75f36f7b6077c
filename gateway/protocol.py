"""OpenAI wire shapes at the API edge.

Requests are *not* validated whole (that costs time on every token path and would drop vendor
fields): `routing_fields` checks only what routing needs and the fields whose wrong type every
backend would reject anyway. Responses the gateway builds itself are pydantic models.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import BaseModel

from adapters.base import Endpoint
from gateway.backends import ENDPOINT_NEED, NEED_JSON_MODE, NEED_LOGPROBS, NEED_N, NEED_STRUCTURED, NEED_TOOLS
from gateway.errors import InvalidRequest
from gateway.jsonio import may_hold_big_int

# The field each endpoint cannot do without, besides `model`.
REQUIRED_INPUT = {Endpoint.CHAT: "messages", Endpoint.COMPLETIONS: "prompt", Endpoint.EMBEDDINGS: "input",
                  Endpoint.RESPONSES: "input", Endpoint.MESSAGES: "messages", Endpoint.COUNT_TOKENS: "messages"}


_NOT_JSON = "We could not parse the JSON body of your request: it is not valid JSON."


def parse_body(raw: bytes) -> Any:
    """The request body parsed, or InvalidRequest 400 `invalid_json`.

    orjson takes nearly every body. What it refuses and the standard library accepts is parsed
    there: integers beyond 64 bits (valid JSON, forwarded as sent) but also strings holding lone
    surrogates ("\\ud800"), which no UTF-8 text can carry (forwarded, or echoed in an error message,
    they crashed the encoder), and NaN, Infinity and numbers beyond a double (1e999), which are not
    JSON and would be forwarded as null. I-JSON (RFC 7493) forbids them all; so does the gateway."""
    if not may_hold_big_int(raw):  # orjson parses integers beyond 64 bits as floats: not "as sent"
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        doc = json.loads(raw.decode())  # UTF-8 only: the stdlib alone would also take UTF-16 and a BOM
        # The slow path only: is every string UTF-8, every number finite?
        json.dumps(doc, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise InvalidRequest(_NOT_JSON, code="invalid_json") from None
    return doc


def _text_or_array(body: dict[str, Any], field: str) -> None:
    """`prompt` and `input`: a string or an array (of strings, token ids or token-id arrays: the
    items are the backend's to judge). A number, an object or a boolean fails on every backend,
    and the translating adapters would choke on it: refuse it here, once, the same everywhere."""
    t = type(body[field])
    if t is not str and t is not list:
        raise InvalidRequest(f"'{field}' must be a string or an array.", param=field, code="invalid_type")


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
    if endpoint is Endpoint.CHAT or endpoint is Endpoint.MESSAGES or endpoint is Endpoint.COUNT_TOKENS:
        if type(value) is not list or not value:
            raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages",
                                 code="invalid_type")
        for m in value:  # one type check per message: adapters index into each one
            if type(m) is not dict:
                i = next(i for i, m in enumerate(value) if type(m) is not dict)
                raise InvalidRequest(f"'messages[{i}]' must be a message object.", param=f"messages[{i}]",
                                     code="invalid_type")
    else:
        _text_or_array(body, field)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    elif type(stream) is not bool:
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    if endpoint is Endpoint.EMBEDDINGS:
        stream = False
    else:
        opts = body.get("stream_options")
        if opts is not None:
            if type(opts) is not dict:  # adapters would silently replace it: say so instead
                raise InvalidRequest("'stream_options' must be an object.", param="stream_options",
                                     code="invalid_type")
            if not stream:
                # vLLM answers 400 here and others ignore it: one behaviour for every backend.
                raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.",
                                     param="stream_options", code="invalid_value")
    needs = ENDPOINT_NEED[endpoint]
    if body.get("tools"):
        needs |= NEED_TOOLS
    if body.get("logprobs"):
        needs |= NEED_LOGPROBS
    rf = body.get("response_format")
    if type(rf) is dict and rf.get("type", "text") != "text":  # json_object / json_schema: a demand
        needs |= NEED_STRUCTURED
        if rf.get("type") == "json_object" and type(rf.get("schema")) is not dict:
            needs |= NEED_JSON_MODE  # any JSON object: not every kind can (TGI needs a schema)
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
