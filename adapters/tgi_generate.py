"""OpenAI `/v1/completions` over TGI's native `/generate` and `/generate_stream`.

For TGI servers whose Messages API lacks `/v1/completions`. Native request: `{"inputs",
"parameters"}`; native stream: one `data:{"index","token":{id,text,logprob,special},
"generated_text","details"}` event per token, the last carrying `generated_text` and (with
`details: true`) `details.{finish_reason,generated_tokens,input_length}`, and no `[DONE]`;
in-stream errors are `data:{"error","error_type"}` (backends.md §3.1, router/src/server.rs).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from adapters.records import records
from adapters.base import Endpoint, UpstreamRequest, client_asked_usage, single_prompt
from adapters.chunks import DONE, ChunkWriter
from gateway.errors import CapabilityMissing
from gateway.jsonio import dumps, loads_or_none

FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def build(adapter: Any, body: dict[str, Any], upstream_model: str, stream: bool) -> UpstreamRequest:
    prompt = single_prompt(body)
    if prompt is None:
        raise CapabilityMissing("This TGI backend serves completions through /generate, which takes one "
                                "prompt string.", param="prompt")
    params: dict[str, Any] = {"details": True}
    if isinstance(body.get("max_tokens"), int):
        params["max_new_tokens"] = body["max_tokens"]
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        if temperature > 0:
            params["temperature"] = temperature
            params["do_sample"] = True
    if isinstance(body.get("top_p"), (int, float)):
        params["top_p"] = body["top_p"]
        params["do_sample"] = True
    stop = body.get("stop")
    if isinstance(stop, str):
        params["stop"] = [stop]
    elif isinstance(stop, list):
        params["stop"] = stop
    for key in ("seed", "frequency_penalty", "repetition_penalty", "top_k", "typical_p", "truncate"):
        if body.get(key) is not None:
            params[key] = body[key]
    path = "/generate_stream" if stream else "/generate"
    asked = client_asked_usage(body)
    # translate_stream always reports usage (the gateway counts tokens); the relay strips it
    # again when the client did not ask for it, as for pass-through backends.
    return UpstreamRequest("POST", adapter.target.url + path, adapter.headers,
                           dumps({"inputs": prompt, "parameters": params}), stream,
                           strip_usage=stream and not asked, passthrough=False, upstream_model=upstream_model)


async def translate_stream(chunks: AsyncIterator[bytes], request: UpstreamRequest) -> AsyncIterator[bytes]:
    w = ChunkWriter(Endpoint.COMPLETIONS, request.upstream_model)
    async for event in records(chunks, b"\n\n", tail=True):
        if event.strip():
            out = _event(event, w)
            if out:
                yield out


def _event(event: bytes, w: ChunkWriter) -> bytes:
    payload = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not payload:
        return event + b"\n\n" if event.startswith(b":") else b""  # keep-alive comments pass
    doc = loads_or_none(payload)
    if not isinstance(doc, dict):
        return b""
    if "error" in doc:
        err = {"error": {"message": str(doc.get("error")), "type": "server_error", "param": None,
                         "code": doc.get("error_type")}}
        return b"data: " + orjson.dumps(err) + b"\n\n" + DONE
    token = doc.get("token") or {}
    text = "" if token.get("special") else str(token.get("text") or "")
    out = w.piece(text) if text else b""
    if doc.get("generated_text") is not None:  # the last event
        details = doc.get("details") or {}
        out += w.piece("", FINISH.get(details.get("finish_reason"), "stop"))
        if "generated_tokens" in details:
            out += w.usage(int(details.get("input_length") or 0), int(details["generated_tokens"]))
        out += DONE
    return out


def translate_body(body: bytes, headers: list[tuple[bytes, bytes]], request: UpstreamRequest) -> bytes:
    doc = orjson.loads(body)
    if isinstance(doc, list):  # the compat route answers a one-element array
        doc = doc[0] if doc else {}
    details = doc.get("details") or {}
    h = {k: v for k, v in headers}
    prompt = int(h.get(b"x-prompt-tokens", b"0") or 0)
    completion = int(h.get(b"x-generated-tokens", b"0") or details.get("generated_tokens") or 0)
    return orjson.dumps({
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": request.upstream_model,
        "choices": [{"index": 0, "text": doc.get("generated_text", ""), "logprobs": None,
                     "finish_reason": FINISH.get(details.get("finish_reason"), "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })
