"""Native embeddings: /api/embed and the legacy /api/embeddings."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from .binding import bind_body, EMBED_FIELDS, EMBEDDINGS_FIELDS, options_from_map, parse_duration_ns, Reply
from .catalog import parse_name
from .scheduler import Lease, schedule, State
from .tokens import count_tokens, embed_vector
from .handling import gin_json, inflight, knobs, record


# ---------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------

async def run_embed(st: State, request: web.Request, body: dict, entry: dict, lease: Lease) -> dict:
    """EmbedHandler: returns the api.EmbedResponse object (raises Reply for errors)."""
    start = time.monotonic_ns()
    ctl = knobs(request, body)
    entry["knobs"] = ctl
    if ctl.get("status"):
        raise Reply(int(ctl["status"]), ctl.get("message", f"injected {ctl['status']}"))
    model = body.get("model") or ""
    if not model.strip():
        raise Reply(404, f"model '{model}' not found")
    name = parse_name(model)
    if not name.valid():
        raise Reply(400, "invalid model name")
    inp = body.get("input")
    inputs: list[str] = []
    if isinstance(inp, str):
        if inp:
            inputs.append(inp)
    elif isinstance(inp, list):
        for v in inp:
            if not isinstance(v, str):
                raise Reply(400, "invalid input type")
            inputs.append(v)
    elif inp is not None:
        raise Reply(400, "invalid input type")
    info = st.lookup(name)
    if info is None:  # getModel fails -> handleScheduleError's wording
        raise Reply(404, f"model {json.dumps(model)} not found, try pulling it first")
    keep_ns = parse_duration_ns(body["keep_alive"]) if body.get("keep_alive") is not None else None
    opts = options_from_map(body.get("options"))
    entry["options"] = opts
    await schedule(st, lease, info, keep_ns, opts.get("num_ctx"), need_slot=bool(inputs))
    loaded = lease.loaded_ns
    if not inputs:
        return {"model": model, "embeddings": []}
    if ctl.get("delay"):
        await asyncio.sleep(float(ctl["delay"]))
    if ctl.get("hold"):
        await st.release.wait()
    limit = lease.runner.num_ctx if lease.runner else info.facts["ctx"]
    total = 0
    vecs = []
    for text in inputs:
        n = count_tokens(text) + 2
        if body.get("truncate") is False and n > limit:
            raise Reply(400, "the input length exceeds the context length")
        total += min(n, limit)
        vecs.append(embed_vector(text, info.facts["emb"], body.get("dimensions")))
    end = time.monotonic_ns()
    out: dict[str, Any] = {"model": model, "embeddings": vecs}
    out["total_duration"] = max(end - start, 1)
    out["load_duration"] = max(loaded - start, 1)
    if total:
        out["prompt_eval_count"] = total
    return out


async def embed(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "api.EmbedRequest", EMBED_FIELDS)
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        out = await run_embed(st, request, body, entry, lease)
        st.completed += 1
        return gin_json(200, out)
    except Reply as e:
        return gin_json(e.status, {"error": e.message})
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


async def embeddings_legacy(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "api.EmbeddingRequest", EMBEDDINGS_FIELDS)
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        ctl = knobs(request, body)
        if ctl.get("status"):
            raise Reply(int(ctl["status"]), ctl.get("message", f"injected {ctl['status']}"))
        model = body.get("model") or ""
        if not model.strip():
            raise Reply(400, "model is required")
        name = parse_name(model)
        if not name.valid():
            raise Reply(400, "invalid model name")
        info = st.lookup(name, exact=True)
        if info is None:
            raise Reply(404, f"model {json.dumps(model)} not found, try pulling it first")
        keep_ns = parse_duration_ns(body["keep_alive"]) if body.get("keep_alive") is not None else None
        opts = options_from_map(body.get("options"))
        entry["options"] = opts
        prompt = body.get("prompt") or ""
        await schedule(st, lease, info, keep_ns, opts.get("num_ctx"), need_slot=bool(prompt))
        if not prompt:
            return gin_json(200, {"embedding": []})
        vec = [float(v) for v in embed_vector(prompt, info.facts["emb"], None)]
        st.completed += 1
        return gin_json(200, {"embedding": vec})
    except Reply as e:
        return gin_json(e.status, {"error": e.message})
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1
