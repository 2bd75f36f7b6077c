"""A small real OpenAI-compatible server (vLLM's wire format) for the gateway's tests.

Run: python -m tests.doubles.openai_server --port P --models m1,m2 --name up1

Behaviour per request comes from an extra body field, which also proves the gateway forwards
unknown fields untouched:  "x_double": {"status": 500, "chunks": 5, "delay": 0.05, "hold": true,
"truncate": true, "text": "...", "first_delay": 2.0, "code": "any-error-code", "headers_delay": 2.0, "reasoning": "...",
"raw": "..."}; `--hang` makes every inference request hang. "reasoning" adds vLLM 0.33's `reasoning`
field (message, or one delta ahead of the content); "raw" writes that string (latin-1) to the socket
as the whole HTTP answer and closes it (a broken or truncated upstream).
Test hooks: GET /_requests (every body received), GET /_stats (in-flight, max in-flight,
cancelled), GET /_probes (arrival times of GET /v1/models), POST /_probe?status=N&hang=1 (GET
/v1/models answers N, or never; status=0 hang=0 restores it), POST /_release (let held requests go
on), POST /_reset, POST /_loading?on=1|0 (every route but the hooks answers llama-server's 503
"Loading model" while on). `--host` and `--vllm-version V` (also answer vLLM's GET /version); `--max-num-seqs N`: vLLM's
scheduler gauges on GET /metrics (tests/doubles/openai_extras.py).

Wire format follows backends.md part A §2 (vLLM 0.33): role chunk with content "", content chunks,
a finish chunk, the usage chunk (choices: []) only with stream_options.include_usage, then
`data: [DONE]`; unknown model -> 404 NotFoundError; stream_options without stream -> 400.
POST /v1/responses: tests/doubles/openai_responses.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiohttp import web

from tests.doubles import openai_extras as extras  # tool calls, idle sleep
from tests.doubles import openai_responses  # POST /v1/responses (vLLM's Responses API shapes)
from tests.doubles.ollama.tokens import schema_instance  # what a schema-constrained model answers


class State:
    def __init__(self, name: str, models: list[str], strict: bool, owned_by: str) -> None:
        self.name = name
        self.models = models
        self.strict = strict
        self.owned_by = owned_by
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.completed = 0
        self.release = asyncio.Event()
        self.probes: list[float] = []  # arrival times (monotonic) of GET /v1/models: health tests


def error(status: int, message: str, etype: str, param: str | None = None, code: object = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": status if code is None else code}}
    return web.json_response(body, status=status)


def answer_text(st: State, body: dict, ctl: dict) -> str:
    if "text" in ctl:
        return ctl["text"]
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":  # vLLM constrains to the schema
        return json.dumps(schema_instance((fmt.get("json_schema") or {}).get("schema")))
    return f"Hello from {st.name}, this is a streamed answer"


def limit(body: dict, parts: list[str]) -> tuple[list[str], str]:
    """Cut the answer at max_tokens (or max_completion_tokens) like a real server: finish "length"."""
    m = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(m, int) and 0 < m < len(parts):
        return parts[:m], "length"
    return parts, "stop"


def pieces(text: str, n: int | None) -> list[str]:
    words = text.split(" ")
    toks = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if n is None or n >= len(toks):
        return toks
    out = toks[: n - 1]
    out.append("".join(toks[n - 1:]))
    return out


async def handle(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    kind = request.match_info.get("kind", "chat")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "Invalid JSON", "BadRequestError")
    st.requests.append({"path": request.path, "body": body,
                        "authorization": request.headers.get("Authorization")})
    ctl = body.get("x_double") or {}
    extras.wake_on_inference(request.app)
    if "raw" in ctl:  # a broken upstream: bytes that are not (or not all of) an HTTP answer
        request.transport.write(ctl["raw"].encode("latin-1"))
        request.transport.close()
        return web.Response()
    if kind == "messages":  # only scripted (`raw`) answers: a server without Anthropic's route otherwise
        raise web.HTTPNotFound()
    if request.app["hang"]:  # a wedged backend: takes the request, never answers
        await asyncio.Event().wait()
    if ctl.get("headers_delay") or request.app["headers_delay"]:  # nothing at all for a while (a model loading)
        await asyncio.sleep(ctl.get("headers_delay") or request.app["headers_delay"])
    if request.app["fail_status"]:
        ctl = {**ctl, "status": request.app["fail_status"]}
    if ctl.get("status"):
        return error(ctl["status"], ctl.get("message", f"injected {ctl['status']}"),
                     ctl.get("type", "BadRequestError"), code=ctl.get("code"))
    model = body.get("model")
    if st.strict and model is not None and model not in st.models:
        return error(404, f"The model `{model}` does not exist. Valid aliases: {', '.join(st.models)}.",
                     "NotFoundError", "model")
    stream = bool(body.get("stream"))
    if body.get("stream_options") is not None and not stream:
        return error(400, "Stream options can only be defined when `stream=True`.", "BadRequestError",
                     "stream_options")
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        if kind == "embeddings":
            return await embeddings(st, body)
        if kind == "responses":
            return await openai_responses.answer(request, st, body, ctl, stream)
        if stream:
            return await stream_answer(request, st, body, ctl, kind)
        if ctl.get("hold"):
            await st.release.wait()
        if ctl.get("delay"):
            await asyncio.sleep(ctl["delay"])
        toks, finish = limit(body, pieces(answer_text(st, body, ctl), None))
        text = "".join(toks)
        n_out = len(toks)
        usage = {"prompt_tokens": 7, "total_tokens": 7 + n_out, "completion_tokens": n_out}
        served = st.models[0] if model is None else model
        if kind == "chat":
            message = {"role": "assistant", "content": text}
            calls = extras.planned_calls(body, ctl)
            if calls:
                message, finish = extras.tool_message(calls), "tool_calls"
            if "reasoning" in ctl:
                message["reasoning"] = ctl["reasoning"]
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": finish, "stop_reason": None}
            doc = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                   "created": int(time.time()), "model": served, "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
            doc = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                   "model": served, "choices": [choice], "usage": usage}
        st.completed += 1
        return web.json_response(doc)
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        st.in_flight -= 1


async def stream_answer(request: web.Request, st: State, body: dict, ctl: dict, kind: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    if ctl.get("first_delay"):  # headers at once, first event later: a long prefill
        await asyncio.sleep(ctl["first_delay"])
    cid = f"chatcmpl-{uuid.uuid4().hex}" if kind == "chat" else f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = body.get("model") or st.models[0]
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(choices: list, **extra: object) -> bytes:
        doc = {"id": cid, "object": obj, "created": created, "model": model, "choices": choices, **extra}
        return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"

    def piece(text: str, finish: str | None = None) -> dict:
        if kind == "chat":
            return {"index": 0, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    parts, finish = limit(body, pieces(answer_text(st, body, ctl), ctl.get("chunks")))
    delay = ctl.get("delay", 0)
    if kind == "chat":
        await resp.write(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}]))
        if "reasoning" in ctl:
            await resp.write(chunk([{"index": 0, "delta": {"reasoning": ctl["reasoning"]}, "logprobs": None,
                                     "finish_reason": None}]))
    calls = extras.planned_calls(body, ctl) if kind == "chat" else None
    if calls:
        for delta in extras.tool_deltas(calls):
            await resp.write(chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]))
        parts, finish = [], "tool_calls"
    for i, p in enumerate(parts):
        if delay:
            await asyncio.sleep(delay)
        await resp.write(chunk([piece(p)]))
        if i == 0 and ctl.get("hold"):
            await st.release.wait()
        if ctl.get("truncate") and i == len(parts) // 2:
            request.transport.close()  # die mid-answer, as a crashed backend would
            return resp
    await resp.write(chunk([piece("", finish)]))
    opts = body.get("stream_options") or {}
    if opts.get("include_usage"):
        await resp.write(chunk([], usage={"prompt_tokens": 7, "total_tokens": 7 + len(parts),
                                          "completion_tokens": len(parts)}))
    await resp.write(b"data: [DONE]\n\n")
    st.completed += 1
    return resp


async def embeddings(st: State, body: dict) -> web.Response:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    data = [{"index": i, "object": "embedding", "embedding": [float(len(str(x))), 0.5, -0.25]}
            for i, x in enumerate(inputs)]
    st.completed += 1
    return web.json_response({"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                              "model": body.get("model"), "data": data,
                              "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})


async def models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    st.probes.append(time.monotonic())
    if request.app.get("probe_hang"):  # POST /_probe?hang=1: a wedged backend the probe must time out on
        await asyncio.Event().wait()
    if request.app.get("probe_status"):  # POST /_probe?status=503|500: loading, or down
        return error(request.app["probe_status"], "injected probe failure", "ServiceUnavailableError")
    return web.json_response({"object": "list", "data": [
        {"id": m, "object": "model", "created": int(time.time()), "owned_by": st.owned_by, "root": m,
         "parent": None, "max_model_len": 4096} for m in st.models]})


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return web.json_response(st.requests)
    if what == "stats":
        return web.json_response({"in_flight": st.in_flight, "max_in_flight": st.max_in_flight,
                                  "cancelled": st.cancelled, "completed": st.completed,
                                  "received": len(st.requests)})
    if what == "probes":
        return web.json_response(st.probes)
    if what == "probe":
        request.app["probe_status"] = int(request.query.get("status", 0))
        request.app["probe_hang"] = request.query.get("hang") == "1"
        return web.json_response({"probe_status": request.app["probe_status"], "from_probe": len(st.probes)})
    if what == "sleep":
        return extras.set_sleep(request)
    if what == "release":
        st.release.set()
        return web.json_response({"released": True})
    if what == "loading":
        request.app["loading"] = request.query.get("on") == "1"
        return web.json_response({"loading": request.app["loading"]})
    if what == "reset":
        st.requests.clear()
        st.release = asyncio.Event()
        st.max_in_flight = st.in_flight
        st.cancelled = st.completed = 0
        return web.json_response({"reset": True})
    raise web.HTTPNotFound()


@web.middleware
async def llama_loading(request: web.Request, handler):  # type: ignore[no-untyped-def]
    # llama-server's state middleware, byte for byte (backends.md §1.2): every route while loading.
    if request.app["loading"] and not request.path.startswith("/_"):
        return web.Response(status=503, content_type="application/json",
                            text='{"error":{"message":"Loading model","type":"unavailable_error","code":503}}')
    return await handler(request)


def make_app(name: str, models_: list[str], strict: bool, owned_by: str, hang: bool = False,
             headers_delay: float = 0.0, fail_status: int = 0) -> web.Application:
    app = web.Application(middlewares=[llama_loading], client_max_size=64 << 20)  # big bodies: vLLM takes them
    app["loading"] = False
    app["hang"] = hang
    app["headers_delay"] = headers_delay
    app["fail_status"] = fail_status
    app["state"] = State(name, models_, strict, owned_by)
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_route("POST", "/v1/{kind:completions|embeddings|responses|messages}", handle)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", lambda r: web.Response())
    app.router.add_get("/metrics", extras.metrics)
    app.router.add_route("*", "/_{what}", hooks)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="double")
    p.add_argument("--models", default="test-model")
    p.add_argument("--owned-by", default="vllm")
    p.add_argument("--lenient-model", action="store_true", help="accept any model name (llama.cpp-like)")
    p.add_argument("--hang", action="store_true", help="accept inference requests and never answer")
    p.add_argument("--headers-delay", type=float, default=0.0, help="answer every inference request this late")
    p.add_argument("--fail-status", type=int, default=0, help="answer every inference request with this status")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--vllm-version", default="", help="also answer vLLM's GET /version with this version")
    p.add_argument("--max-num-seqs", type=int, default=0, help="serve vLLM's scheduler gauges on /metrics")
    p.add_argument("--num-gpu-blocks", type=int, default=64)
    a = p.parse_args()
    app = make_app(a.name, a.models.split(","), not a.lenient_model, a.owned_by, a.hang, a.headers_delay,
                   a.fail_status)
    app["max_num_seqs"], app["num_gpu_blocks"] = a.max_num_seqs, a.num_gpu_blocks
    if a.vllm_version:
        app.router.add_get("/version", lambda r: web.json_response({"version": a.vllm_version}))
    web.run_app(app, host=a.host, port=a.port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
