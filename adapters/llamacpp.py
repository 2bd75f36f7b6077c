"""llama.cpp `llama-server` (backends.md part A §1; tools/server in ggml-org/llama.cpp).

Only its quirks on top of the OpenAI-compatible base:
- health: the server listens before the model loads and answers every route 503 "Loading model"
  meanwhile; `/health` is public even with `--api-key` (the other routes are not);
- the request `model` is ignored in single-model mode, so the gateway routes by its own table;
- load from `/slots` (busy slots; on by default) or `/metrics` (`llamacpp:requests_processing` +
  `requests_deferred`, only with `--metrics`), `/metrics` first where the build can sleep: reading
  `/slots` wakes a sleeping server (see load());
- usage from `usage` or, on builds that send none, from the final chunk's `timings`;
- `--sleep-idle-seconds`: asleep, the model is unloaded while `/health` stays 200; `/props` says
  `is_sleeping` (and reading it does not wake the server): its model is reported cold ("sleeping");
- `/v1/completions` logprobs come back in the chat shape (`{"content": [{token, logprob,
  top_logprobs}]}`, streamed too): rewritten to the legacy `{tokens, token_logprobs, top_logprobs,
  text_offset}` the openai SDK and lm-eval read (and vLLM sends); `echo` is ignored by llama-server:
  refused with a 400 rather than answered without the prompt;
- reasoning text comes as `reasoning_content`; `reasoning_field: reasoning` renames it;
- errors: `exceed_context_size_error` -> OpenAI's `context_length_exceeded`; 501 (feature not
  enabled, e.g. embeddings without `--embeddings`) -> a clear 400; builds of early 2025 report
  stream errors as a non-standard `error: {...}` SSE line, which clients ignore: rewritten to a
  `data:` error event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from adapters.base import Capabilities, EngineStats, Endpoint, Fetch, Probe, ServedModel, State, UpstreamRequest
from adapters.openai_compatible import OpenAICompatibleAdapter, parse_error_body
from adapters.prometheus_text import gauges
from gateway.jsonio import loads_or_none
from gateway.errors import CapabilityMissing, GatewayError, InvalidRequest, UpstreamUnavailable

LOAD_METRICS = ("llamacpp:requests_processing", "llamacpp:requests_deferred", "llamacpp:kv_cache_usage_ratio")


class LlamaCppAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "llamacpp"
    default_ports: ClassVar[tuple[int, ...]] = (8080,)
    # POST /v1/responses since 0c1e57098; POST /v1/messages (Anthropic's) in tools/server/server.cpp (the
    # 0.3.36 llama-cpp-python sdist's llama.cpp, which the tests build)
    capabilities: ClassVar[Capabilities] = Capabilities(responses=True, messages=True)
    usage_markers: ClassVar[tuple[bytes, ...]] = (b'"usage"', b'"timings"')

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.load_source: str | None = None  # "slots", "metrics" or "none", learned by probing
        self.total_slots: int | None = None
        self.version: str | None = None
        self.router: bool = False  # one llama-server serving several models (router mode)
        self.sleep_capable = False  # /props reports is_sleeping (--sleep-idle-seconds exists)
        # llama-server names reasoning text `reasoning_content` (common/chat.cpp to_json_oaicompat);
        # `reasoning_field: reasoning` renames it for clients (and pools with vLLM >= late 2025) that
        # read `reasoning`. A key in compact JSON cannot occur inside a string (quotes are escaped).
        self._rename = (b'"reasoning_content":', b'"reasoning":') \
            if getattr(target, "reasoning_field", None) == "reasoning" else None
        self.router_urls = {ep: url + "?autoload=true" for ep, url in self.urls.items()}

    # -- health, discovery, load -------------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        health = await fetch("GET", self.target.url + "/health")
        if health.status == 503:
            return Probe(State.LOADING, detail=parse_error_body(health.body)[0] or "loading")
        if health.status != 200:
            return Probe(State.DOWN, detail=f"/health answered HTTP {health.status}")
        res = await fetch("GET", self.target.url + "/v1/models", headers=self.probe_headers())
        if res.status == 503:  # finished loading between the two calls? say loading, next probe knows
            return Probe(State.LOADING, detail="loading")
        if res.status != 200:
            return Probe(State.DOWN, detail=f"/v1/models answered HTTP {res.status}"
                         + (" (check the backend's api_key)" if res.status == 401 else ""))
        sleeping = False
        if self.version is None or not self.router:  # every probe: is_sleeping changes
            props = await fetch("GET", self.target.url + "/props", headers=self.probe_headers())
            doc = loads_or_none(props.body) if props.status == 200 else None
            if isinstance(doc, dict):
                self.version = str(doc.get("build_info") or "") or None
                slots = doc.get("total_slots")
                self.total_slots = slots if isinstance(slots, int) else None
                self.router = doc.get("role") == "router"
                # server-context.cpp (0c1e570) handle_sleep: the model is unloaded, /health stays 200
                self.sleep_capable = "is_sleeping" in doc
                sleeping = doc.get("is_sleeping") is True and not self.router
        models = self.parse_models(res.body)
        if sleeping:
            models = [ServedModel(m.id, m.context_length, "sleeping") for m in models]
        probe = Probe(State.READY, models, version=self.version)
        if sleeping:  # nothing runs; and reading /slots would wake it (reload the model)
            probe.load = 0.0
            probe.engine = EngineStats(running=0.0, waiting=0.0, models_loaded=0)
        elif not self.router:  # a router's /slots and /metrics need ?model=: per model, not per server
            probe.engine = await self.load(fetch)
            e = probe.engine
            if e is not None and (e.running is not None or e.waiting is not None):
                probe.load = (e.running or 0.0) + (e.waiting or 0.0)
            probe.engine = probe.engine or EngineStats()
            probe.engine.models_loaded = 1
        else:  # the router lists each model's status: count the resident ones
            probe.engine = EngineStats(models_loaded=sum(1 for m in models if m.residency == "loaded"))
        return probe

    def parse_models(self, body: bytes) -> list[ServedModel]:
        models = super().parse_models(body)
        if not self.router:
            return models
        # Router mode: every model it can serve, each with its own status (loaded, loading,
        # unloaded, sleeping; failed ones carry "failed": true).
        doc = loads_or_none(body)
        status = {}
        for card in doc.get("data") or [] if isinstance(doc, dict) else []:
            st = card.get("status") if isinstance(card, dict) else None
            if isinstance(st, dict):
                status[card.get("id")] = "failed" if st.get("failed") and st.get("value") != "loaded" \
                    else str(st.get("value"))
        return [ServedModel(m.id, m.context_length, status.get(m.id)) for m in models]

    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        if endpoint is Endpoint.COMPLETIONS and body.get("echo"):
            raise CapabilityMissing("`echo` is not supported by llama.cpp backends: llama-server ignores it and "
                                    "returns neither the prompt nor its logprobs", param="echo")
        if endpoint is Endpoint.CHAT and isinstance(body.get("tool_choice"), dict):
            _named_tool_as_required(body)
        req = super().build_request(endpoint, body, upstream_model, stream)
        if self.router:
            # The router routes by body `model`; autoload makes it load an unloaded model on
            # demand even when it was started with --no-models-autoload.
            req.url = self.router_urls[endpoint]
        return req

    async def load(self, fetch: Fetch) -> EngineStats | None:
        """Requests the server is working on (and queueing, from /metrics) and its slot or KV usage,
        from whichever source it exposes.

        On builds that can sleep (`/props` has `is_sleeping`) `/metrics` goes first: GET /slots posts
        a SLOT_GET task, which restarts the idle timer and first wakes a sleeping server, so probing
        it would keep --sleep-idle-seconds from ever unloading the model; GET /metrics neither wakes
        it nor delays its sleep (0c1e570 server-queue.cpp:24-26, server-context.cpp:4648-4718)."""
        order = ("metrics", "slots") if self.sleep_capable else ("slots", "metrics")
        for source in order:
            if self.load_source not in (None, source):
                continue
            load = await (self._metrics_load(fetch) if source == "metrics" else self._slots_load(fetch))
            if load is not False:
                self.load_source = source
                return load
            if self.load_source == source:
                return None
        self.load_source = "none"
        return None

    async def _slots_load(self, fetch: Fetch) -> EngineStats | bool:
        res = await fetch("GET", self.target.url + "/slots", headers=self.probe_headers())
        slots = loads_or_none(res.body) if res.status == 200 else None
        if not isinstance(slots, list):
            return False
        # Busy slots run; /slots does not show the deferred queue. Usage = busy / all slots (no KV figure).
        busy = float(sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing")))
        return EngineStats(running=busy, kv_usage=busy / len(slots) if slots else None)

    async def _metrics_load(self, fetch: Fetch) -> EngineStats | bool | None:
        # Note: every scrape resets llama.cpp's *_seconds gauges; only the slots figures are read.
        res = await fetch("GET", self.target.url + "/metrics", headers=self.probe_headers())
        if res.status != 200:
            return False
        g = gauges(res.body.decode("utf-8", "replace"), LOAD_METRICS)
        if not g:
            return None
        running = g.get("llamacpp:requests_processing")
        # kv_cache_usage_ratio: builds before May 2025 only (used cells / n_ctx); else busy / total slots
        kv = g.get("llamacpp:kv_cache_usage_ratio")
        if kv is None and running is not None and self.total_slots:
            kv = running / self.total_slots
        return EngineStats(running=running, waiting=g.get("llamacpp:requests_deferred"), kv_usage=kv)

    def context_length(self, card: dict[str, Any]) -> int | None:
        meta = card.get("meta")
        n_ctx = meta.get("n_ctx") if isinstance(meta, dict) else None
        if not isinstance(n_ctx, int):
            n_ctx = meta.get("n_ctx_train") if isinstance(meta, dict) else None
        return n_ctx if isinstance(n_ctx, int) else None

    # -- usage ---------------------------------------------------------------------------------
    def extract_usage(self, doc: dict[str, Any]) -> tuple[int, int] | None:
        usage = super().extract_usage(doc)
        if usage is not None:
            return usage
        t = doc.get("timings")
        if isinstance(t, dict):  # prompt_n excludes cache hits; the prompt is both
            p = (t.get("prompt_n") or 0) + (t.get("cache_n") or 0)
            c = t.get("predicted_n") or 0
            return (p if type(p) is int else 0, c if type(c) is int else 0)
        return None

    # -- errors ----------------------------------------------------------------------------------
    def map_error(self, status: int, body: bytes) -> GatewayError:
        message, etype, _, _ = parse_error_body(body)
        if etype == "exceed_context_size_error" or "exceeds the available context size" in message:
            return InvalidRequest(message, code="context_length_exceeded", param="messages")
        if status == 501 or etype == "not_supported_error":
            return CapabilityMissing(f"backend {self.target.name}: {message}", code="unsupported_endpoint")
        if status == 503 and "Loading model" in message:
            err = UpstreamUnavailable(f"backend {self.target.name} is still loading its model",
                                      code="backend_loading", headers={"Retry-After": "5"})
            err.backend_state = State.LOADING.value
            return err
        return super().map_error(status, body)

    def translate_body(self, endpoint: Endpoint, body: bytes, headers: Any = None, request: Any = None) -> bytes:
        if endpoint is Endpoint.COMPLETIONS and LOGPROBS_CHAT in body:
            doc = loads_or_none(body)
            if isinstance(doc, dict):
                for choice in doc.get("choices") or []:
                    if isinstance(choice, dict) and isinstance(choice.get("logprobs"), dict):
                        choice["logprobs"] = _legacy_logprobs(choice["logprobs"], 0)[0]
                body = orjson.dumps(doc)
        if self._rename is not None and self._rename[0] in body:
            body = body.replace(*self._rename)
        return body

    def stream_rewriter(self, request: UpstreamRequest) -> Callable[[bytes], bytes] | None:
        # `"logprobs":` can only be a key in the compact JSON the gateway sent (quotes in strings are escaped)
        base: Callable[[bytes], bytes] = _rewrite_error_lines
        if "/v1/completions" in request.url and b'"logprobs":' in request.body:
            base = _LegacyLogprobStream()
        if self._rename is None:
            return base
        old, new = self._rename
        return lambda chunk: c.replace(old, new) if old in (c := base(chunk)) else c


def _named_tool_as_required(body: dict[str, Any]) -> None:
    """llama-server reads `tool_choice` only as a string (0c1e57098 tools/server/server-common.cpp
    oaicompat_chat_params_parse: `json_value(body, "tool_choice", std::string("auto"))`): the object naming
    one function falls back to "auto" with a log line, so the model may call another tool or none
    (ggml-org/llama.cpp#26535). "required" with `tools` narrowed to that function is the same demand in the
    form its grammar enforces; one call, as a named choice means (unless the client said otherwise)."""
    choice, tools = body["tool_choice"], body.get("tools")
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise CapabilityMissing("llama.cpp backends take `tool_choice` as \"none\", \"auto\", \"required\" or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}", param="tool_choice")
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
             and t["function"].get("name") == name] if isinstance(tools, list) else []
    if not named:
        raise InvalidRequest(f"`tool_choice` names function {name!r}, which is not in `tools`", param="tool_choice")
    body["tools"], body["tool_choice"] = named[:1], "required"
    body.setdefault("parallel_tool_calls", False)


# llama-server answers /v1/completions logprobs in the chat shape (tools/server/server-task.cpp
# probs_to_json / to_json_oaicompat, 0c1e570), streamed and not.
LOGPROBS_CHAT = b'"logprobs":{"content"'


def _legacy_logprobs(lp: dict[str, Any], offset: int) -> tuple[dict[str, Any], int]:
    """Chat-shaped logprobs -> OpenAI's legacy completions shape; `offset`: characters already
    generated (text_offset counts from the answer's start, as vLLM's do without echo)."""
    tokens: list[str] = []
    values: list[Any] = []
    tops: list[dict[str, Any]] = []
    offsets: list[int] = []
    for entry in lp.get("content") or []:
        if not isinstance(entry, dict):
            continue
        token = str(entry.get("token", ""))
        tokens.append(token)
        values.append(entry.get("logprob"))
        tops.append({str(t.get("token", "")): t.get("logprob") for t in entry.get("top_logprobs") or []
                     if isinstance(t, dict)})
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}, offset


class _LegacyLogprobStream:
    """One completions stream's rewriter: logprobs to the legacy shape, text_offset running on
    across chunks (per choice index), plus the early-2025 error-line repair."""

    __slots__ = ("offsets",)

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}

    def __call__(self, chunk: bytes) -> bytes:
        chunk = _rewrite_error_lines(chunk)
        if LOGPROBS_CHAT not in chunk:
            return chunk
        out = []
        for line in chunk.split(b"\n"):
            if line.startswith(b"data:") and LOGPROBS_CHAT in line:
                doc = loads_or_none(line[5:].strip())
                if isinstance(doc, dict):
                    for choice in doc.get("choices") or []:
                        if isinstance(choice, dict) and isinstance(choice.get("logprobs"), dict):
                            i = choice.get("index") if isinstance(choice.get("index"), int) else 0
                            choice["logprobs"], self.offsets[i] = _legacy_logprobs(choice["logprobs"],
                                                                                   self.offsets.get(i, 0))
                    line = b"data: " + orjson.dumps(doc)
            out.append(line)
        return b"\n".join(out)


def _rewrite_error_lines(chunk: bytes) -> bytes:
    # llama-server builds of early 2025 send `error: {...}` (not `data:`) then [DONE]; an SSE
    # client ignores the unknown field and would see a silently empty answer.
    if not (chunk.startswith(b"error:") or b"\nerror:" in chunk):
        return chunk
    out = []
    for line in chunk.split(b"\n"):
        if line.startswith(b"error:"):
            payload = line[6:].strip()
            message, etype, code, _ = parse_error_body(payload)
            envelope = {"error": {"message": message, "type": etype or "server_error", "param": None,
                                  "code": code}}
            line = b"data: " + orjson.dumps(envelope)
        out.append(line)
    return b"\n".join(out)

