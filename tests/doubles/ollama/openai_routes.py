"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
from typing import Any

from aiohttp import web

from .binding import bind_body, OAI_CHAT_FIELDS, OAI_COMPLETION_FIELDS, OAI_EMBED_FIELDS, Reply
from .catalog import parse_name
from .scheduler import Lease, State
from .responses import aggregate, produce
from .handling import gin_json, inflight, prepare_inference, record
from .api_embed import run_embed
from .api_models import sorted_models
from .openai_convert import (
    ChatWriter, complete_write, from_chat_request, from_complete_request, oai_error, to_chat_completion,
    to_completion,
)


async def v1_inference(request: web.Request, kind: str) -> web.StreamResponse:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    cid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{random.randrange(999)}"
    try:
        try:
            body = bind_body(raw, "openai.ChatCompletionRequest" if kind == "chat" else "openai.CompletionRequest",
                             OAI_CHAT_FIELDS if kind == "chat" else OAI_COMPLETION_FIELDS, eof_message="EOF")
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        if kind == "chat" and not body.get("messages"):
            raise Reply(400, "[] is too short - 'messages'")
        native = from_chat_request(body) if kind == "chat" else from_complete_request(body)
        if "x_double" in body:
            native["x_double"] = body["x_double"]
        entry["native"] = native
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        job = await prepare_inference(st, request, kind, native, entry, lease)
        if isinstance(job, dict):  # load/unload (only reachable through /v1/completions with prompt "")
            st.completed += 1
            if not stream:
                return gin_json(200, to_chat_completion(cid, job) if kind == "chat" else to_completion(cid, job),
                                ctype="application/json", newline=True)
            data = (ChatWriter(cid, include_usage).write(job) if kind == "chat"
                    else complete_write(cid, job, include_usage))
            return web.Response(body=data, headers={"Content-Type": "text/event-stream"})
        it = produce(st, job)
        if not stream:
            items = []
            async for item in it:
                if "error" in item:
                    return oai_error(item.get("status", 500), item["error"])
                items.append(item)
            st.completed += 1
            agg = aggregate(job, items)
            return gin_json(200, to_chat_completion(cid, agg) if kind == "chat" else to_completion(cid, agg),
                            ctype="application/json", newline=True)
        first = await it.__anext__()
        if "error" in first:
            return oai_error(first.get("status", 500), first["error"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        writer = ChatWriter(cid, include_usage) if kind == "chat" else None

        def enc(item: dict) -> bytes:
            return writer.write(item) if writer else complete_write(cid, item, include_usage)

        await resp.write(enc(first))
        n = 1
        async for item in it:
            await resp.write(enc(item))
            if "error" in item:
                break
            n += 1
            if job.ctl.get("truncate") and n == max(len(job.tokens) // 2, 1):
                request.transport.close()
                return resp
        else:
            st.completed += 1
        await resp.write_eof()
        return resp
    except Reply as e:
        return oai_error(e.status, e.message or "")
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


async def v1_chat(request: web.Request) -> web.StreamResponse:
    return await v1_inference(request, "chat")


async def v1_completions(request: web.Request) -> web.StreamResponse:
    return await v1_inference(request, "generate")


async def v1_embeddings(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "openai.EmbedRequest", OAI_EMBED_FIELDS, eof_message="EOF")
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        fmt = body.get("encoding_format") or ""
        if fmt and fmt.lower() not in ("float", "base64"):
            raise Reply(400, f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].")
        inp = body.get("input")
        if inp == "":
            inp = [""]
        if inp is None or (isinstance(inp, list) and not inp):
            raise Reply(400, "invalid input")
        native: dict[str, Any] = {"model": body.get("model") or "", "input": inp}
        if body.get("dimensions"):
            native["dimensions"] = body["dimensions"]
        if "x_double" in body:
            native["x_double"] = body["x_double"]
        entry["native"] = native
        out = await run_embed(st, request, native, entry, lease)
        data = []
        for i, vec in enumerate(out["embeddings"]):
            e: Any = vec
            if fmt.lower() == "base64":
                e = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "embedding": e, "index": i})
        n = out.get("prompt_eval_count", 0)
        st.completed += 1
        return gin_json(200, {"object": "list", "data": data or None, "model": body.get("model") or "",
                              "usage": {"prompt_tokens": n, "total_tokens": n}}, ctype="application/json", newline=True)
    except Reply as e:
        return oai_error(e.status, e.message or "")
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


async def v1_models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    data = [{"id": m.name.shortest, "object": "model", "created": m.modified_ns // 1_000_000_000,
             "owned_by": m.name.namespace} for m in sorted_models(st)]
    return gin_json(200, {"object": "list", "data": data or None}, ctype="application/json", newline=True)


async def v1_model(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    model = request.match_info["model"]
    name = parse_name(model)
    if not model or not name.valid():
        return oai_error(400, "invalid model name")
    info = st.lookup(name)
    if info is None:
        return oai_error(404, f"model '{name.shortest}' not found")
    return gin_json(200, {"id": model, "object": "model", "created": info.modified_ns // 1_000_000_000,
                          "owned_by": name.namespace}, ctype="application/json", newline=True)
