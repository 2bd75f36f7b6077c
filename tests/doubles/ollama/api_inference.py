"""Native /api/chat and /api/generate: NDJSON streams and aggregated replies."""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web

from .gojson import go_json
from .binding import bind_body, CHAT_FIELDS, GENERATE_FIELDS, Reply
from .scheduler import Lease, State
from .responses import aggregate, produce
from .handling import gin_json, inflight, prepare_inference, record

NDJSON_CT = "application/x-ndjson"


async def native_inference(request: web.Request, kind: str) -> web.StreamResponse:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "api.ChatRequest" if kind == "chat" else "api.GenerateRequest",
                             CHAT_FIELDS if kind == "chat" else GENERATE_FIELDS)
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body, images=_image_sizes(body, kind))
        job = await prepare_inference(st, request, kind, body, entry, lease)
        if isinstance(job, dict):
            st.completed += 1
            return gin_json(200, job)
        it = produce(st, job)
        if not job.stream:
            items = []
            async for item in it:
                if "error" in item:
                    return gin_json(item.get("status", 500), {"error": item["error"]})
                items.append(item)
            st.completed += 1
            return gin_json(200, aggregate(job, items))
        first = await it.__anext__()
        if "error" in first:  # before any byte: a plain JSON error with its status
            return gin_json(first.get("status", 500), {"error": first["error"]}, ctype="application/json")
        resp = web.StreamResponse(headers={"Content-Type": NDJSON_CT})
        await resp.prepare(request)
        await resp.write((go_json(first) + "\n").encode())
        n = 1
        async for item in it:
            if "error" in item:
                await resp.write((go_json({"error": item["error"]}) + "\n").encode())
                break
            await resp.write((go_json(item) + "\n").encode())
            n += 1
            if job.ctl.get("truncate") and n == max(len(job.tokens) // 2, 1):
                request.transport.close()
                return resp
        else:
            st.completed += 1
        await resp.write_eof()
        return resp
    except Reply as e:
        return gin_json(e.status, {"error": e.message})
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


def _image_sizes(body: dict, kind: str) -> list:
    if kind == "generate":
        return [len(base64.b64decode(i)) for i in body.get("images") or [] if isinstance(i, str)]
    out = []
    for idx, m in enumerate(body.get("messages") or []):
        if isinstance(m, dict) and m.get("images"):
            out.append({"message": idx, "role": m.get("role"),
                        "bytes": [len(base64.b64decode(i)) for i in m["images"] if isinstance(i, str)]})
    return out


async def chat(request: web.Request) -> web.StreamResponse:
    return await native_inference(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await native_inference(request, "generate")
