"""Ollama through its native API (backends.md part B §3; docs/api.md, server/routes.go, api/types.go).

Why native rather than its OpenAI layer: the OpenAI layer loses `keep_alive` and `num_ctx`, forces
temperature/top_p to 1.0 when absent, swallows mid-stream errors (no `[DONE]`), and mints ids
that repeat. Natively:
- discovery: installed models from `/api/tags`; residency from `/api/ps` (resident = ready,
  installed but not loaded = `swapped_out`: it serves, but its first request waits for a load);
- chat via `/api/chat`, completions via `/api/generate` (`raw: true`: a completion continues the
  prompt as given), embeddings via `/api/embed`; streams are NDJSON (`"done": true` on the last
  line, delta text), turned into OpenAI SSE chunks; usage from `prompt_eval_count`/`eval_count`;
  `done_reason` -> `finish_reason` (`tool_calls` when the answer calls tools); tool-call
  arguments arrive as objects and leave as JSON strings; images from `data:` URLs;
- `options` from the request (`max_tokens` -> `num_predict`, temperature, top_p, stop, seed,
  penalties) plus `num_ctx` and `keep_alive` from the backend's config. Clients do not override
  the operator: their `keep_alive` and load-time options (`num_ctx`, `num_gpu`...: they size VRAM,
  pin or unload models, and a changed value makes Ollama reload the model) are dropped, unless the
  backend sets `client_overrides`, and even then the config's `num_ctx`/`keep_alive` win;
- errors: `{"error": "..."}` with 404 for an unknown model and 503 when its queue is full
  (retried elsewhere); a mid-stream `{"error"}` line becomes an OpenAI error event.
Note: bound to loopback, Ollama answers 403 (empty body) to a Host header that is not local: point
the gateway at it by a local name or address, or start it with OLLAMA_HOST=0.0.0.0.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from adapters.chunks import DONE, ChunkWriter
from adapters.records import records
from adapters.base import (Adapter, BackendTarget, Capabilities, Endpoint, Fetch, Probe, ServedModel, State,
                           UpstreamRequest, client_asked_usage, single_prompt)
from adapters.openai_compatible import parse_error_body
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound, status_error
from gateway.jsonio import dumps, loads_or_none

FINISH = {"stop": "stop", "length": "length"}
# OpenAI's own request fields: translated above or meaningless natively. Anything else a client
# sends (Ollama's own `think`, `format`, `truncate`, vendor extensions) reaches Ollama untouched.
OPENAI_FIELDS = frozenset({
    "model", "messages", "prompt", "input", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "seed", "frequency_penalty", "presence_penalty", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "logit_bias", "user", "metadata",
    "store", "service_tier", "reasoning_effort", "suffix", "echo", "best_of", "encoding_format", "dimensions",
    "options", "top_k", "min_p", "repeat_penalty", "keep_alive"})
# api.Runner: options read when a model is loaded (a request with other values reloads it).
LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_thread",
                          "numa", "low_vram", "f16_kv", "logits_all", "vocab_only"})
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                 "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty"}


class OllamaAdapter(Adapter):
    kind: ClassVar[str] = "ollama"
    default_ports: ClassVar[tuple[int, ...]] = (11434,)
    capabilities: ClassVar[Capabilities] = Capabilities(n=False, logprobs=False)

    def __init__(self, target: BackendTarget) -> None:
        super().__init__(target)
        self.headers = {"Content-Type": "application/json"}
        if target.api_key:  # e.g. behind an authenticating proxy
            self.headers["Authorization"] = f"Bearer {target.api_key}"
        self.keep_alive = getattr(target, "keep_alive", None)
        self.num_ctx = getattr(target, "num_ctx", None)
        self.client_overrides = bool(getattr(target, "client_overrides", False))
        self.version: str | None = None

    # -- health, discovery, residency ----------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        tags = await fetch("GET", self.target.url + "/api/tags", headers=self.headers)
        if tags.status != 200:
            return Probe(State.DOWN, detail=f"/api/tags answered HTTP {tags.status}"
                         + (" (Ollama's Host check: use a local address)" if tags.status == 403 else ""))
        installed = [m.get("name") for m in (loads_or_none(tags.body) or {}).get("models") or [] if isinstance(m, dict)]
        ps = await fetch("GET", self.target.url + "/api/ps", headers=self.headers)
        resident: dict[str, int | None] = {}
        for m in (loads_or_none(ps.body) or {}).get("models") or [] if ps.status == 200 else []:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                ctx = m.get("context_length")
                resident[m["name"]] = ctx if isinstance(ctx, int) else None
        models = [ServedModel(n, resident.get(n), "loaded" if n in resident else "unloaded")
                  for n in installed if isinstance(n, str)]
        if self.version is None:
            v = loads_or_none((await fetch("GET", self.target.url + "/api/version")).body)
            self.version = v.get("version") if isinstance(v, dict) else None
        state = State.READY if resident or not models else State.SWAPPED_OUT
        detail = "" if resident else "no model resident: the first request loads one"
        return Probe(state, models, detail=detail, load=None, version=self.version)

    # -- requests ------------------------------------------------------------------------------
    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        native: dict[str, Any] = {"model": upstream_model}
        if endpoint is Endpoint.EMBEDDINGS:
            native["input"] = body.get("input")
            if self.keep_alive is not None:
                native["keep_alive"] = self.keep_alive
            return UpstreamRequest("POST", self.target.url + "/api/embed", self.headers, dumps(native), False,
                                   passthrough=False, upstream_model=upstream_model)
        options: dict[str, Any] = {k: body[src] for src, k in OPTION_FIELDS.items() if body.get(src) is not None}
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int):
            options["num_predict"] = limit
        stop = body.get("stop")
        if stop is not None:
            options["stop"] = [stop] if isinstance(stop, str) else stop
        if isinstance(body.get("options"), dict):  # Ollama-aware clients may send native options
            options.update(body["options"] if self.client_overrides else
                           {k: v for k, v in body["options"].items() if k not in LOAD_OPTIONS})
        if self.num_ctx:  # after the client's: the operator's value wins
            options["num_ctx"] = self.num_ctx
        native["stream"] = stream
        if options:
            native["options"] = options
        if self.keep_alive is not None:
            native["keep_alive"] = self.keep_alive
        elif self.client_overrides and body.get("keep_alive") is not None:
            native["keep_alive"] = body["keep_alive"]
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            if fmt.get("type") == "json_object":
                native["format"] = "json"
            elif fmt.get("type") == "json_schema":
                native["format"] = (fmt.get("json_schema") or {}).get("schema")
        if endpoint is Endpoint.CHAT:
            native["messages"] = [_message(m) for m in body.get("messages") or []]
            if body.get("tools"):
                native["tools"] = body["tools"]
            path = "/api/chat"
        else:
            prompt = single_prompt(body)
            if prompt is None:
                raise InvalidRequest("Ollama completes one prompt string per request.", param="prompt")
            native["prompt"] = prompt
            native["raw"] = True  # a completion continues the prompt as given: no chat template
            if isinstance(body.get("suffix"), str):
                native["suffix"] = body["suffix"]
                native["raw"] = False
            path = "/api/generate"
        for key, value in body.items():
            if key not in OPENAI_FIELDS:
                native.setdefault(key, value)
        asked = client_asked_usage(body)
        return UpstreamRequest("POST", self.target.url + path, self.headers, dumps(native), stream,
                               strip_usage=stream and not asked, passthrough=False, upstream_model=upstream_model)

    # -- answers -------------------------------------------------------------------------------
    def translate_body(self, endpoint: Endpoint, body: bytes, headers: Any = None, request: Any = None) -> bytes:
        doc = loads_or_none(body) or {}
        model = request.upstream_model if request is not None else doc.get("model")
        if endpoint is Endpoint.EMBEDDINGS:
            vectors = doc.get("embeddings") or []
            data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(vectors)]
            n = int(doc.get("prompt_eval_count") or 0)
            return orjson.dumps({"object": "list", "data": data, "model": model,
                                 "usage": {"prompt_tokens": n, "total_tokens": n}})
        if "error" in doc:
            raise _error_from(500, doc)
        usage = _usage(doc)
        if endpoint is Endpoint.CHAT:
            msg = doc.get("message") or {}
            calls = _tool_calls(msg.get("tool_calls"))
            content = msg.get("content") or ("" if not calls else None)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if msg.get("thinking"):
                message["reasoning_content"] = msg["thinking"]
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(doc, bool(calls))}
            out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                   "model": model, "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": doc.get("response") or "", "logprobs": None,
                      "finish_reason": _finish(doc, False)}
            out = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                   "model": model, "choices": [choice], "usage": usage}
        return orjson.dumps(out)

    def translate_stream(self, endpoint: Endpoint, chunks: AsyncIterator[bytes],
                         request: UpstreamRequest) -> AsyncIterator[bytes]:
        return _ndjson_to_sse(endpoint, chunks, request.upstream_model)

    def map_error(self, status: int, body: bytes) -> GatewayError:
        return _error_from(status, loads_or_none(body) or {"error": body.decode("utf-8", "replace")})


async def _ndjson_to_sse(endpoint: Endpoint, chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    w = ChunkWriter(endpoint, model)
    called = False
    first = True
    async for line in records(chunks, b"\n"):
        if not line.strip():
            continue
        doc = loads_or_none(line)
        if not isinstance(doc, dict):
            continue
        if "error" in doc:  # a failure after the first byte: one error event, then the end
            err = {"error": {"message": str(doc["error"]), "type": "server_error", "param": None, "code": None}}
            yield b"data: " + orjson.dumps(err) + b"\n\n" + DONE
            return
        out = b""
        if w.chat:
            msg = doc.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if msg.get("thinking"):
                delta["reasoning_content"] = msg["thinking"]
            calls = _tool_calls(msg.get("tool_calls"))
            if calls:
                called = True
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
            content = msg.get("content") or ""
            if content or len(delta) > (1 if first else 0) or (first and not doc.get("done")):
                out += w.piece(content, **delta)
                first = False
        elif doc.get("response"):
            out += w.piece(doc["response"])
        if doc.get("done"):
            u = _usage(doc)
            usage = w.usage(u["prompt_tokens"], u["completion_tokens"])
            yield out + w.piece("", _finish(doc, called)) + usage + DONE
            return
        if out:
            yield out


def _message(m: Any) -> dict[str, Any]:
    """An OpenAI chat message as Ollama's: text content, images as base64, tool calls as objects."""
    if not isinstance(m, dict):
        raise InvalidRequest("Each message must be an object.", param="messages")
    out: dict[str, Any] = {"role": m.get("role")}
    content = m.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                if not url.startswith("data:") or ";base64," not in url:
                    raise InvalidRequest("Ollama takes images as base64 data: URLs, not links.", param="messages")
                images.append(url.split(";base64,", 1)[1])
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if m.get("tool_calls"):
        out["tool_calls"] = [{"function": {"name": (c.get("function") or {}).get("name"),
                                           "arguments": _args((c.get("function") or {}).get("arguments"))}}
                             for c in m["tool_calls"] if isinstance(c, dict)]
    if m.get("role") == "tool" and m.get("name"):
        out["tool_name"] = m["name"]
    return out


def _args(a: Any) -> Any:
    if isinstance(a, str):
        try:
            return orjson.loads(a)
        except orjson.JSONDecodeError:
            return a
    return a


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for c in calls or []:
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict):
            continue
        args = f.get("arguments")
        out.append({"id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": f.get("name"),
                                 "arguments": args if isinstance(args, str) else orjson.dumps(args or {}).decode()}})
    return out


def _finish(doc: dict[str, Any], called: bool) -> str:
    reason = FINISH.get(doc.get("done_reason") or "stop", "stop")
    return "tool_calls" if called and reason == "stop" else reason


def _usage(doc: dict[str, Any]) -> dict[str, int]:
    p, c = int(doc.get("prompt_eval_count") or 0), int(doc.get("eval_count") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _error_from(status: int, doc: dict[str, Any]) -> GatewayError:
    message = str(doc.get("error") or parse_error_body(orjson.dumps(doc))[0] or f"HTTP {status}")
    if status == 404:
        return ModelNotFound(message, param="model")
    return status_error(status, message)

