"""Native routes: POST / (compat), /generate, /generate_stream, /tokenize."""

from __future__ import annotations

from contextlib import aclosing

from aiohttp import web

from .bodies import control, generate_params, read_json
from .errors import InferError, json_response
from .generation import generate_internal, public, stream_internal
from .model import GenReq, simple_tokens
from .specs import COMPAT_REQUEST, GENERATE_REQUEST
from .sse import Sse, stream_headers, truncated
from .state import State


async def generate_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, GENERATE_REQUEST)
    req = GenReq(body["inputs"], generate_params(body), control(st, node))
    try:
        headers, _, doc = await generate_internal(st, req)
    except InferError as e:
        return e.response()
    return json_response(doc, headers=headers)


async def compat_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, COMPAT_REQUEST)
    params = generate_params(body)
    if (
        params.get("return_full_text") is None
    ):  # compat_return_full_text: pipeline tag absent or text-generation
        params["return_full_text"] = st.pipeline_tag in (None, "text-generation")
    req = GenReq(body["inputs"], params, control(st, node))
    if body.get("stream"):
        return await native_stream(request, st, req)
    try:
        headers, _, doc = await generate_internal(st, req)
    except InferError as e:
        return e.response()
    return json_response([doc], headers=headers)


async def generate_stream_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, GENERATE_REQUEST)
    return await native_stream(request, st, GenReq(body["inputs"], generate_params(body), control(st, node)))


async def native_stream(request: web.Request, st: State, req: GenReq) -> web.StreamResponse:
    async with Sse(request, st, stream_headers(st, req)) as sse:
        async with aclosing(stream_internal(st, req)) as events:
            async for ev in events:
                if isinstance(ev, InferError):
                    await sse.json(ev.body())  # From<InferError> for Event
                    continue
                await sse.json(public(ev))
                if truncated(req, ev):
                    sse.kill()
                    break
    return sse.resp


async def tokenize_route(request: web.Request) -> web.StreamResponse:
    body, _ = await read_json(request, GENERATE_REQUEST)
    return json_response(simple_tokens(body["inputs"]))
