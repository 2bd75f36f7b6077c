"""/invocations (sagemaker.rs): a compat generate, chat or completion request, whichever parses."""

from __future__ import annotations

from aiohttp import web

from .bodies import Rejection, control, generate_params, parse_body, record
from .chat_routes import chat_completions
from .completion_routes import completions
from .errors import InferError, json_response
from .generation import generate_internal
from .json_parser import _Parser, line_col
from .model import GenReq
from .native_routes import native_stream
from .specs import CHAT_REQUEST, COMPAT_REQUEST, COMPLETION_REQUEST
from .state import State


async def invocations_route(request: web.Request) -> web.StreamResponse:
    """sagemaker.rs: untagged SagemakerRequest { Generate(Compat) | Chat | Completion }."""
    st: State = request.app["state"]
    raw = await request.read()
    for spec in (COMPAT_REQUEST, CHAT_REQUEST, COMPLETION_REQUEST):
        try:
            body, node = parse_body(st, request, raw, spec)
        except Rejection as r:
            if r.status != 422:
                raise
            continue
        record(st, request, node)
        ctl = control(st, node)
        if spec is CHAT_REQUEST:
            return await chat_completions(request, st, body, ctl)
        if spec is COMPLETION_REQUEST:
            return await completions(request, st, body, ctl)
        params = generate_params(body)
        if params.get("return_full_text") is None:
            params["return_full_text"] = st.pipeline_tag in (None, "text-generation")
        req = GenReq(body["inputs"], params, ctl)
        if body.get("stream"):
            return await native_stream(request, st, req)
        try:
            headers, _, doc = await generate_internal(st, req)
        except InferError as e:
            return e.response()
        return json_response([doc], headers=headers)
    node = _Parser(raw).document()
    line, col = line_col(raw, node.end)
    raise Rejection(
        422,
        "Failed to deserialize the JSON body into the target type: data did not match any variant "
        f"of untagged enum SagemakerRequest at line {line} column {col}",
    )
