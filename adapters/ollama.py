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
  arguments arrive as objects and leave as JSON strings; streamed tool calls arrive one per line
  and keep one stream-wide index; `thinking` leaves as `reasoning_content` (or the backend's
  `reasoning_field`); `logprobs` leave in OpenAI's chat or legacy completion shape; the request
  side (messages, tool-call ids, images, reasoning effort) is adapters/ollama_messages.py;
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
from adapters.base import (Adapter, BackendTarget, Capabilities, EngineStats, Endpoint, Fetch, Probe, ServedModel,
                           State, UpstreamRequest, client_asked_usage, single_prompt)
from adapters.ollama_messages import native_messages, think_from_effort
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
    "store", "service_tier", "reasoning_effort", "reasoning", "suffix", "echo", "best_of", "encoding_format",
    "dimensions", "options", "top_k", "min_p", "repeat_penalty", "keep_alive"})
# api.Runner: options read when a model is loaded (a request with other values reloads it).
LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "use_mlock", "num_thread",
                          "numa", "low_vram", "f16_kv", "logits_all", "vocab_only"})
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                 "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty"}


def ollama_model_key(name: str) -> str:
    """A model name as Ollama compares it: `[host/][namespace/]model[:tag]` with its defaults filled in,
    case-folded (types/model/name.go:41 defaults, :146-176 ParseNameBare; server/routes.go:1222-1245
    getExistingName matches each part with EqualFold)."""
    s = name.strip().lower()
    tag = "latest"
    if s.rfind(":") > s.rfind("/"):  # "/" cannot be in a tag, so a later ":" starts one
        s, tag = s.rsplit(":", 1)
    parts = s.split("://", 1)[-1].split("/")  # a scheme is not part of the name
    parts = ["registry.ollama.ai", "library"][:max(3 - len(parts), 0)] + parts
    return "/".join(parts) + ":" + tag


class OllamaAdapter(Adapter):
    kind: ClassVar[str] = "ollama"
    default_ports: ClassVar[tuple[int, ...]] = (11434,)
    capabilities: ClassVar[Capabilities] = Capabilities(n=False)

    def __init__(self, target: BackendTarget) -> None:
        super().__init__(target)
        self.headers = {"Content-Type": "application/json"}
        if target.api_key:  # e.g. behind an authenticating proxy
            self.headers["Authorization"] = f"Bearer {target.api_key}"
        self.keep_alive = getattr(target, "keep_alive", None)
        self.num_ctx = getattr(target, "num_ctx", None)
        self.client_overrides = bool(getattr(target, "client_overrides", False))
        # `thinking` leaves under the name llama.cpp uses too, unless the backend config names another
        self.reasoning_key: str = getattr(target, "reasoning_field", None) or "reasoning_content"
        self.version: str | None = None

    # Ollama reads `llama3.2` as `llama3.2:latest` and matches names case-insensitively: routing
    # falls back to this key when a requested name matches no route exactly (gateway/routing.py).
    model_key = staticmethod(ollama_model_key)

    # -- health, discovery, residency ----------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        tags = await fetch("GET", self.target.url + "/api/tags", headers=self.headers)
        if tags.status != 200:
            return Probe(State.DOWN, detail=f"/api/tags answered HTTP {tags.status}"
                         + (" (Ollama's Host check: use a local address)" if tags.status == 403 else ""))
        installed = [m.get("name") for m in (loads_or_none(tags.body) or {}).get("models") or [] if isinstance(m, dict)]
        ps = await fetch("GET", self.target.url + "/api/ps", headers=self.headers)
        resident: dict[str, int | None] = {}
        memory: dict[str, int] = {}  # bytes per resident model: /api/ps `size` (RAM + VRAM; size_vram is the GPU part)
        for m in (loads_or_none(ps.body) or {}).get("models") or [] if ps.status == 200 else []:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                ctx = m.get("context_length")
                resident[m["name"]] = ctx if isinstance(ctx, int) else None
                if type(m.get("size")) is int and m["name"] in installed:  # a listed name only: bounded labels
                    memory[m["name"]] = m["size"]
        models = [ServedModel(n, resident.get(n), "loaded" if n in resident else "unloaded")
                  for n in installed if isinstance(n, str)]
        if self.version is None:
            v = loads_or_none((await fetch("GET", self.target.url + "/api/version")).body)
            self.version = v.get("version") if isinstance(v, dict) else None
        state = State.READY if resident or not models else State.SWAPPED_OUT
        detail = "" if resident else "no model resident: the first request loads one"
        engine = EngineStats(models_loaded=len(resident), model_memory=memory) if ps.status == 200 else None
        return Probe(state, models, detail=detail, load=None, version=self.version, engine=engine)

    # -- requests ------------------------------------------------------------------------------
    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        native: dict[str, Any] = {"model": upstream_model}
        if endpoint is Endpoint.EMBEDDINGS:
            native["input"] = body.get("input")
            dims = body.get("dimensions")
            if isinstance(dims, int) and not isinstance(dims, bool):  # truncates each vector (api/types.go:613)
                native["dimensions"] = dims
            if isinstance(body.get("truncate"), bool):
                native["truncate"] = body["truncate"]
            if self.keep_alive is not None:
                native["keep_alive"] = self.keep_alive
            return UpstreamRequest("POST", self.target.url + "/api/embed", self.headers, dumps(native), False,
                                   passthrough=False, upstream_model=upstream_model)
        options: dict[str, Any] = {k: body[src] for src, k in OPTION_FIELDS.items() if body.get(src) is not None}
        limit = body.get("max_completion_tokens")
        if limit is None:  # SDKs send explicit nulls for unset fields
            limit = body.get("max_tokens")
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
            native["messages"] = native_messages(body.get("messages"))
            if body.get("tools"):
                native["tools"] = body["tools"]
            think = think_from_effort(body)
            if think is not None and "think" not in body:  # Ollama's own `think`, when sent, wins
                native["think"] = think
            if body.get("logprobs") is True:
                native["logprobs"] = True
                if isinstance(body.get("top_logprobs"), int):
                    native["top_logprobs"] = body["top_logprobs"]
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
            n = body.get("logprobs")  # legacy: how many alternatives per token (openai.go:830-834)
            if isinstance(n, int) and not isinstance(n, bool):
                native["logprobs"] = True
                if n > 0:
                    native["top_logprobs"] = n
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
                message[self.reasoning_key] = msg["thinking"]
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "logprobs": _chat_logprobs(doc.get("logprobs")),
                      "finish_reason": _finish(doc, bool(calls))}
            out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                   "model": model, "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": doc.get("response") or "",
                      "logprobs": _legacy_logprobs(doc.get("logprobs"), [0]), "finish_reason": _finish(doc, False)}
            out = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                   "model": model, "choices": [choice], "usage": usage}
        return orjson.dumps(out)

    def translate_stream(self, endpoint: Endpoint, chunks: AsyncIterator[bytes],
                         request: UpstreamRequest) -> AsyncIterator[bytes]:
        return _ndjson_to_sse(endpoint, chunks, request.upstream_model, self.reasoning_key)

    def map_error(self, status: int, body: bytes) -> GatewayError:
        return _error_from(status, loads_or_none(body) or {"error": body.decode("utf-8", "replace")})


async def _ndjson_to_sse(endpoint: Endpoint, chunks: AsyncIterator[bytes], model: str,
                         reasoning_key: str) -> AsyncIterator[bytes]:
    w = ChunkWriter(endpoint, model)
    calls_seen = 0  # tool calls so far: the OpenAI `index` of the next one
    offset = [0]  # legacy logprobs: where the next token starts in the generated text
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
        lps = doc.get("logprobs")
        if w.chat:
            msg = doc.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if msg.get("thinking"):
                delta[reasoning_key] = msg["thinking"]
            calls = _tool_calls(msg.get("tool_calls"))
            if calls:
                # Ollama sends each call on its own line as it parses (tools/tools.go:148-157): number them
                # across the stream, as its function.index does, or clients merge every call into index 0.
                delta["tool_calls"] = [{"index": calls_seen + i, **c} for i, c in enumerate(calls)]
                calls_seen += len(calls)
            content = msg.get("content") or ""
            if content or lps or len(delta) > (1 if first else 0) or (first and not doc.get("done")):
                d = {**delta, "content": content} if content else delta
                out += w.event([{"index": 0, "delta": d, "logprobs": _chat_logprobs(lps), "finish_reason": None}])
                first = False
        elif doc.get("response") or lps:
            out += w.event([{"index": 0, "text": doc.get("response") or "", "logprobs": _legacy_logprobs(lps, offset),
                             "finish_reason": None}])
        if doc.get("done"):
            u = _usage(doc)
            usage = w.usage(u["prompt_tokens"], u["completion_tokens"])
            yield out + w.piece("", _finish(doc, calls_seen > 0)) + usage + DONE
            return
        if out:
            yield out


def _chat_logprobs(lps: Any) -> dict[str, Any] | None:
    """Ollama's api.Logprob list is OpenAI's chat shape already; fill the fields OpenAI always has."""
    if not lps:
        return None
    return {"content": [{"token": lp.get("token", ""), "logprob": lp.get("logprob", 0.0), "bytes": lp.get("bytes"),
                         "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
                                           "bytes": t.get("bytes")} for t in lp.get("top_logprobs") or []]}
                        for lp in lps if isinstance(lp, dict)]}


def _legacy_logprobs(lps: Any, offset: list[int]) -> dict[str, Any] | None:
    """Ollama's api.Logprob list in the legacy completions shape; `offset` carries text_offset across a stream."""
    if not lps:
        return None
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for lp in lps:
        if not isinstance(lp, dict):
            continue
        token = lp.get("token", "")
        out["tokens"].append(token)
        out["token_logprobs"].append(lp.get("logprob", 0.0))
        top = {t.get("token", ""): t.get("logprob", 0.0) for t in lp.get("top_logprobs") or []}
        out["top_logprobs"].append(top or None)
        out["text_offset"].append(offset[0])
        offset[0] += len(token)
    if not any(out["top_logprobs"]):
        out["top_logprobs"] = None
    return out


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

