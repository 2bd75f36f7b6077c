"""/v1/completions (OpenAI layer)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .bodies import control, read_json
from .errors import InferError, json_response
from .generation import generate_internal, stream_internal
from .model import GenReq
from .specs import COMPLETION_REQUEST
from .sse import Sse, truncated
from .state import State


async def completions_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, COMPLETION_REQUEST)
    return await completions(request, st, body, control(st, node))


async def completions(request: web.Request, st: State, body: dict, ctl: dict) -> web.StreamResponse:
    st.count("tgi_request_count")
    temperature = body.get("temperature")
    do_sample = True
    if temperature == 0.0:
        do_sample, temperature = False, None
    if body.get("suffix") is not None:
        st.fail("validation")
        return json_response(
            {
                "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                "error_type": "suffix not supported",
            },
            status=422,
        )
    prompts: list[str] = body["prompt"]
    if len(prompts) > st.max_client_batch_size:
        st.fail("validation")
        return json_response(
            {
                "error": f"Number of prompts exceeds the maximum allowed batch size of "
                f"{st.max_client_batch_size}",
                "error_type": "batch size exceeded",
            },
            status=422,
        )
    stream = bool(body.get("stream"))
    reqs = [
        GenReq(
            p,
            {
                "temperature": temperature,
                "repetition_penalty": body.get("repetition_penalty"),
                "frequency_penalty": body.get("frequency_penalty"),
                "top_p": body.get("top_p"),
                "do_sample": do_sample,
                "max_new_tokens": body.get("max_tokens"),
                "stop": body.get("stop") or [],
                "details": True,
                "decoder_input_details": not stream,
                "seed": body.get("seed"),
                "adapter_id": None if body.get("model") in (None, "tgi") else body["model"],
            },
            ctl,
        )
        for p in prompts
    ]
    if stream:
        headers = {
            "x-compute-type": st.compute_type,
            "x-compute-characters": str(sum(len(r.inputs) for r in reqs)),
            "x-accel-buffering": "no",
        }
        async with Sse(request, st, headers) as sse:
            gens = [stream_internal(st, r) for r in reqs]
            try:
                pending = list(enumerate(gens))
                while pending:  # the router polls the per-prompt channels round-robin
                    for item in list(pending):
                        index, gen = item
                        try:
                            ev = await gen.__anext__()
                        except StopAsyncIteration:
                            pending.remove(item)
                            continue
                        if isinstance(ev, InferError):
                            await sse.json(ev.openai_event())
                            continue
                        created = int(time.time())
                        choice = {"index": index, "text": ev["token"]["text"], "logprobs": None}
                        if ev["details"] is not None:
                            d = ev["details"]
                            choice = {
                                "index": index,
                                "text": ev["token"]["text"],
                                "logprobs": None,
                                "finish_reason": d["finish_reason"],
                            }
                            doc = {
                                "object": "text_completion",
                                "id": "",
                                "created": created,
                                "model": st.model_id,
                                "system_fingerprint": st.fingerprint,
                                "choices": [choice],
                                "usage": {
                                    "prompt_tokens": d["input_length"],
                                    "completion_tokens": d["generated_tokens"],
                                    "total_tokens": d["input_length"] + d["generated_tokens"],
                                },
                            }
                        else:
                            choice["finish_reason"] = ""
                            doc = {
                                "object": "text_completion",
                                "id": "",
                                "created": created,
                                "choices": [choice],
                                "model": st.model_id,
                                "system_fingerprint": st.fingerprint,
                            }
                        await sse.json(doc)
                        if truncated(reqs[index], ev):
                            sse.kill()
                            return sse.resp
            finally:
                for g in gens:
                    await g.aclose()
            await sse.data("[DONE]")
        return sse.resp
    current = int(time.time())
    results = await asyncio.gather(*(generate_internal(st, r) for r in reqs), return_exceptions=True)
    for r in results:
        if isinstance(r, InferError):
            return r.response()
        if isinstance(r, BaseException):
            raise r
    choices, pt, ct = [], 0, 0
    agg: dict[str, int] = {}
    for index, (headers, input_length, gen) in enumerate(results):
        d = gen["details"]
        pt += input_length
        ct += d["generated_tokens"]
        for k in (
            "x-compute-characters",
            "x-total-time",
            "x-validation-time",
            "x-queue-time",
            "x-inference-time",
            "x-time-per-token",
            "x-prompt-tokens",
            "x-generated-tokens",
        ):
            agg[k] = agg.get(k, 0) + int(headers[k])
        choices.append(
            {
                "index": index,
                "text": gen["generated_text"],
                "logprobs": None,
                "finish_reason": "stop" if d["finish_reason"] == "eos_token" else d["finish_reason"],
            }
        )
    doc = {
        "object": "text_completion",
        "id": "",
        "created": current,
        "model": st.model_id,
        "system_fingerprint": st.fingerprint,
        "choices": choices,
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }
    return json_response(
        doc, headers={"x-compute-type": st.compute_type, **{k: str(v) for k, v in agg.items()}}
    )
