"""POST /v1/responses of the OpenAI double, in vLLM's shapes (vLLM 0.32, the CPU build the tests run).

Non-stream: the `ResponsesResponse` JSON (vllm/entrypoints/openai/responses/protocol.py:789-849).
Stream: `event: <type>` + `data: <event JSON>` per event, no `[DONE]`
(responses/api_router.py:33-44 `_convert_stream_to_sse_events`), in the order of serving.py:1320-1424
and streaming_events.py:835-955: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta per token, response.output_text.done,
response.content_part.done, response.output_item.done, response.completed (carrying the final
response and its usage, also when `max_output_tokens` cut it: status "incomplete").
`x_double` controls as for chat: "text", "chunks", "delay", "hold" (after the first delta),
"truncate" (the connection dies mid-answer).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Protocol

from aiohttp import web

PROMPT_TOKENS = 7


class DoubleState(Protocol):
    name: str
    models: list[str]
    release: asyncio.Event
    completed: int


def _words(text: str, n: int | None) -> list[str]:
    words = text.split(" ")
    toks = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if n is None or n >= len(toks):
        return toks
    return [*toks[: n - 1], "".join(toks[n - 1:])]


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": None}] if text else []
    return {"id": item_id, "type": "message", "role": "assistant", "content": content, "status": status}


def _response(rid: str, created: int, model: str, body: dict[str, Any], output: list[dict[str, Any]],
              status: str, n_out: int | None) -> dict[str, Any]:
    """vLLM's ResponsesResponse.from_request(...).model_dump(): every field, most of them echoed."""
    usage = None if n_out is None else {
        "input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n_out,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": PROMPT_TOKENS + n_out}
    max_out = body.get("max_output_tokens")
    return {
        "id": rid, "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata"), "model": model,
        "object": "response", "output": output, "parallel_tool_calls": True,
        "temperature": body.get("temperature", 1.0), "tool_choice": "auto", "tools": [],
        "top_p": body.get("top_p", 1.0), "background": False,
        "max_output_tokens": max_out if isinstance(max_out, int) else 4089, "max_tool_calls": None,
        "previous_response_id": None, "prompt": None, "reasoning": None, "service_tier": "auto",
        "status": status, "text": None, "top_logprobs": None, "truncation": "disabled", "usage": usage,
        "user": None,
    }


def _plan(st: DoubleState, body: dict[str, Any], ctl: dict[str, Any]) -> tuple[list[str], str]:
    text = ctl.get("text", f"Hello from {st.name}, this is a responses answer")
    toks = _words(text, ctl.get("chunks"))
    m = body.get("max_output_tokens")
    if isinstance(m, int) and 0 < m < len(toks):
        return toks[:m], "incomplete"
    return toks, "completed"


async def answer(request: web.Request, st: DoubleState, body: dict[str, Any], ctl: dict[str, Any],
                 stream: bool) -> web.StreamResponse:
    model = body.get("model") or st.models[0]
    rid, item_id, created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", int(time.time())
    toks, status = _plan(st, body, ctl)
    text = "".join(toks)
    if not stream:
        if ctl.get("delay"):
            await asyncio.sleep(ctl["delay"])
        st.completed += 1
        return web.json_response(_response(rid, created, model, body, [_message(item_id, text, "completed")],
                                           status, len(toks)))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    seq = 0

    async def event(doc: dict[str, Any]) -> None:
        nonlocal seq
        doc["sequence_number"] = seq
        seq += 1
        await resp.write(f"event: {doc['type']}\ndata: ".encode() + json.dumps(doc, separators=(",", ":")).encode()
                         + b"\n\n")

    initial = _response(rid, created, model, body, [], "in_progress", None)
    await event({"type": "response.created", "response": initial})
    await event({"type": "response.in_progress", "response": initial})
    await event({"type": "response.output_item.added", "output_index": 0,
                 "item": _message(item_id, "", "in_progress")})
    await event({"type": "response.content_part.added", "output_index": 0, "item_id": item_id, "content_index": 0,
                 "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
    for i, tok in enumerate(toks):
        if ctl.get("delay"):
            await asyncio.sleep(ctl["delay"])
        await event({"type": "response.output_text.delta", "content_index": 0, "output_index": 0,
                     "item_id": item_id, "delta": tok, "logprobs": []})
        if i == 0 and ctl.get("hold"):
            await st.release.wait()
        if ctl.get("truncate") and i == len(toks) // 2:
            request.transport.close()  # die mid-answer, as a crashed backend would
            return resp
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": None}
    await event({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": text,
                 "logprobs": [], "item_id": item_id})
    await event({"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0,
                 "part": part})
    message = _message(item_id, text, "completed")
    await event({"type": "response.output_item.done", "output_index": 0, "item": message})
    await event({"type": "response.completed",
                 "response": _response(rid, created, model, body, [message], status, len(toks))})
    st.completed += 1
    return resp
