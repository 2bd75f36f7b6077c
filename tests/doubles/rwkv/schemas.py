"""RWKV-Runner's request bodies (routes/schema.py, utils/rwkv.py ...) and FastAPI's body parsing (422 first)."""

from __future__ import annotations

import json

from aiohttp import web

from .responses import json_response
from .tokens import DEFAULT_STOP
from .validation import (MISSING, PYDANTIC_URL, Field, Validator, bounded, list_of, literal, min_len1, model,
                         opt, union, v_bool, v_dict, v_float, v_int, v_str)


# utils/rwkv.py ModelConfigBody: every field defaults to None but is NOT Optional (null -> 422)
MODEL_CONFIG: list[Field] = [
    ("max_tokens", bounded(v_int, gt=(0, 0), le=(102400, 102400)), None),
    ("temperature", bounded(v_float, ge=(0, 0.0), le=(3, 3.0)), None),
    ("top_p", bounded(v_float, ge=(0, 0.0), le=(1, 1.0)), None),
    ("presence_penalty", bounded(v_float, ge=(-2, -2.0), le=(2, 2.0)), None),
    ("frequency_penalty", bounded(v_float, ge=(-2, -2.0), le=(2, 2.0)), None),
    ("penalty_decay", bounded(v_float, ge=(0.99, 0.99), le=(0.999, 0.999)), None),
    ("top_k", bounded(v_int, ge=(0, 0), le=(100, 100)), None),
    ("global_penalty", v_bool, None),
    ("state", v_str, None),
]
TOOL_CALL = model([
    ("id", v_str, MISSING),
    ("function", model([("arguments", v_str, MISSING), ("name", v_str, MISSING)]), MISSING),
    ("type", literal("function"), MISSING),
])
# routes/schema.py ChatCompletionMessageParam
MESSAGE = union(
    ("ChatCompletionSystemMessageParam", model([
        ("content", v_str, MISSING), ("role", literal("system"), MISSING), ("name", opt(v_str), None),
        ("raw", v_bool, False)])),
    ("ChatCompletionUserMessageParam", model([
        ("content", v_str, MISSING), ("role", literal("user"), MISSING), ("name", opt(v_str), None),
        ("raw", v_bool, False)])),
    ("ChatCompletionAssistantMessageParam", model([
        ("content", opt(v_str), None), ("role", literal("assistant"), MISSING), ("name", opt(v_str), None),
        ("tool_calls", opt(list_of(TOOL_CALL)), []), ("raw", v_bool, False),
        ("prefix", opt(v_bool), False)])),
    ("ChatCompletionToolMessageParam", model([
        ("content", v_str, MISSING), ("role", literal("tool"), MISSING), ("name", opt(v_str), None),
        ("tool_call_id", v_str, MISSING)])),
)


TOOL = model([
    ("function", model([
        ("name", v_str, MISSING), ("description", v_str, None),
        ("parameters", opt(v_dict), None)]), MISSING),
    ("type", literal("function"), "function"),
])
STOP = opt(union(("str", v_str), ("list[str]", list_of(v_str))))
CHAT_BODY = model(MODEL_CONFIG + [
    ("messages", opt(list_of(MESSAGE)), MISSING),
    ("model", opt(v_str), "rwkv"),
    ("stream", v_bool, False),
    ("stop", STOP, DEFAULT_STOP),
    ("stop_token_ids", opt(list_of(v_int)), None),
    ("tools", opt(list_of(TOOL)), None),
    ("tool_choice", union(("literal['none','auto','required']", literal("none", "auto", "required")),
                          ("ChatCompletionNamedToolChoiceParam", model([
                              ("function", model([("name", v_str, MISSING)]), MISSING),
                              ("type", literal("function"), "function")]))), "auto"),
    ("user_name", opt(min_len1(v_str)), None),
    ("assistant_name", opt(min_len1(v_str)), None),
    ("system_name", opt(min_len1(v_str)), None),
    ("presystem", v_bool, False),
])
COMPLETION_BODY = model(MODEL_CONFIG + [
    ("prompt", opt(union(("str", v_str), ("list[str]", list_of(v_str)))), MISSING),
    ("model", opt(v_str), "rwkv"),
    ("stream", v_bool, False),
    ("stop", STOP, None),
    ("stop_token_ids", opt(list_of(v_int)), None),
])
EMBEDDINGS_BODY = model([
    ("input", opt(union(("str", v_str), ("list[str]", list_of(v_str)),
                        ("list[list[int]]", list_of(list_of(v_int))))), MISSING),
    ("model", opt(v_str), "rwkv"),
    ("encoding_format", v_str, None),
    ("fast_mode", v_bool, False),
])
SWITCH_BODY = model([
    ("model", v_str, MISSING),
    ("strategy", v_str, MISSING),
    ("tokenizer", opt(v_str), None),
    ("customCuda", v_bool, False),
    ("deploy", v_bool, False),
])
CONFIG_BODY = model(MODEL_CONFIG)


async def parse_body(request: web.Request,
                     schema: Validator) -> tuple[dict | None, dict, web.Response | None]:
    """FastAPI: JSON decode error / validation error -> 422 before the handler runs."""
    raw = await request.read()
    if not raw:
        missing = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None,
                   "url": PYDANTIC_URL + "missing"}
        return None, {}, json_response({"detail": [missing]}, 422)
    try:
        data = json.loads(raw)
    except ValueError as e:
        pos = getattr(e, "pos", 0)
        msg = getattr(e, "msg", str(e))
        return None, {}, json_response({"detail": [{"type": "json_invalid", "loc": ["body", pos],
                                                    "msg": "JSON decode error", "input": {},
                                                    "ctx": {"error": msg}}]}, 422)
    value, errs = schema(data, ("body",))
    if errs:
        return data, {}, json_response({"detail": errs}, 422)
    return data, value, None
