"""Shared request handling (ChatHandler / GenerateHandler): knobs, request log, validation and
scheduling of an inference request, gin's JSON replies."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from .gojson import go_json, now_ns
from .binding import options_from_map, parse_duration_ns, Reply
from .catalog import parse_name
from .scheduler import Lease, schedule, State
from .tokens import count_tokens, generate_tokens, pieces, schema_instance
from .responses import chat_obj, generate_obj, Job, tool_call_id

JSON_CT = "application/json; charset=utf-8"  # gin's c.JSON


# ---------------------------------------------------------------------------------------------------
# Shared request handling (ChatHandler / GenerateHandler)
# ---------------------------------------------------------------------------------------------------

def knobs(request: web.Request, body: dict) -> dict:
    ctl = body.get("x_double")
    if not isinstance(ctl, dict):
        opts = body.get("options")
        ctl = opts.get("x_double") if isinstance(opts, dict) else None
    if not isinstance(ctl, dict):
        try:
            ctl = json.loads(request.headers.get("X-Double", "{}"))
        except ValueError:
            ctl = {}
    return ctl if isinstance(ctl, dict) else {}


def record(st: State, request: web.Request, body: Any, **extra: Any) -> dict:
    entry = {"path": request.path, "body": body, "host": request.headers.get("Host"),
             "authorization": request.headers.get("Authorization"),
             "user_agent": request.headers.get("User-Agent"), **extra}
    st.requests.append(entry)
    return entry


def default_answer(st: State, ctl: dict, fmt: Any = None) -> str:
    if "text" in ctl:
        return ctl["text"]
    # `format` constrains sampling to JSON ("json", or a schema object sent on as json_schema:
    # llm/llama_server.go:1584-1594), so a real answer parses and fits the schema: here, an instance of it.
    if fmt == "json":
        return '{"answer": "Hello"}'
    if isinstance(fmt, dict):
        return json.dumps(schema_instance(fmt))
    return f"Hello from {st.name}, this is a streamed answer"


async def prepare_inference(st: State, request: web.Request, kind: str, body: dict, entry: dict,
                            lease: Lease) -> Job | dict:
    """Validate, schedule (load / queue / slot). Returns a Job, or a ready single object (load/unload)."""
    start = time.monotonic_ns()
    ctl = knobs(request, body)
    if ctl.get("status"):
        raise Reply(int(ctl["status"]), ctl.get("message", f"injected {ctl['status']}"))
    top = body.get("top_logprobs") or 0
    if top < 0 or top > 20:
        raise Reply(400, "top_logprobs must be between 0 and 20")
    model = body.get("model") or ""
    if not model.strip():
        raise Reply(400, "model is required") if kind == "chat" else Reply(404, f"model '{model}' not found")
    name = parse_name(model)
    if not name.valid():
        raise Reply(400, "invalid model name")
    info = st.lookup(name)
    if info is None:
        raise Reply(404, f"model '{model}' not found")
    keep_ns = parse_duration_ns(body["keep_alive"]) if body.get("keep_alive") is not None else None
    messages = body.get("messages") or []
    prompt = body.get("prompt") or ""
    empty = not messages if kind == "chat" else prompt == ""
    if empty and keep_ns == 0:
        r = st.runners.get(info.name.key)
        if r is not None:
            st.expire(r)
        return (chat_obj(model, now_ns(), done=True, done_reason="unload") if kind == "chat"
                else generate_obj(model, now_ns(), done=True, done_reason="unload"))
    if kind == "generate" and body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise Reply(400, "raw mode does not support template, system, or context")
    think = body.get("think")
    if "thinking" in info.caps:
        if think is None:
            think = True
    elif think is True or isinstance(think, str):
        raise Reply(400, f"{json.dumps(model)} does not support thinking")
    tools = body.get("tools") or []
    want = ["completion"] + (["tools"] if tools else []) + (["insert"] if body.get("suffix") else [])
    missing = [c for c in want if c not in info.caps]
    if missing:
        if "completion" in missing:
            raise Reply(400, f"{json.dumps(model)} does not support {'chat' if kind == 'chat' else 'generate'}")
        raise Reply(400, f"{info.name.full} does not support {' '.join(missing)}")
    opts = options_from_map(body.get("options"))
    entry["options"] = opts
    entry["knobs"] = ctl
    await schedule(st, lease, info, keep_ns, opts.get("num_ctx"), need_slot=not empty)
    entry["num_ctx"] = lease.runner.num_ctx if lease.runner else None
    if empty:
        return (chat_obj(model, now_ns(), done=True, done_reason="load") if kind == "chat"
                else generate_obj(model, now_ns(), done=True, done_reason="load"))
    # the answer
    stops = list(opts.get("stop") or [])
    budget = opts.get("num_predict")
    budget = None if budget is None or budget < 0 else budget  # -1: up to 10 x num_ctx, i.e. unbounded here
    thinking: list[str] = []
    if "thinking" in info.caps and think not in (False, None):
        thinking = pieces(ctl.get("thinking", "Let me think about this."), None)
    if budget is not None and len(thinking) >= budget:  # num_predict covers thinking tokens too
        thinking, tokens, reason = thinking[:budget], [], "length"
    else:
        rest = None if budget is None else budget - len(thinking)
        tokens, reason = generate_tokens(default_answer(st, ctl, body.get("format")), ctl.get("chunks"), rest,
                                         stops)
    calls_spec = ctl.get("tool_call")
    calls: list[dict] = []
    if calls_spec and tools:
        for i, c in enumerate(calls_spec if isinstance(calls_spec, list) else [calls_spec]):
            calls.append({"id": tool_call_id(), "function": {"index": i, "name": c["name"],
                                                             "arguments": c.get("arguments", {})}})
    if kind == "chat":
        ptoks = 3 + sum(count_tokens(m.get("content") or "") + 4 for m in messages if isinstance(m, dict))
        ptoks += 10 * len(tools)
    else:
        ptoks = (3 if body.get("raw") else 8) + count_tokens(prompt) + count_tokens(body.get("system") or "")
    return Job(kind, model, info, body.get("stream") is not False, tokens, reason, thinking, calls, bool(tools),
               ptoks, bool(body.get("raw")), ctl, start, lease, bool(body.get("logprobs")), int(top))


def inflight(st: State) -> None:
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)


def gin_json(status: int, obj: Any, ctype: str = JSON_CT, newline: bool = False) -> web.Response:
    return web.Response(status=status, body=(go_json(obj) + ("\n" if newline else "")).encode(),
                        headers={"Content-Type": ctype})
