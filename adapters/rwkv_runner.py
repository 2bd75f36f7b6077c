"""RWKV-Runner's backend-python (backends.md part B §2; backend-python/routes in josStorer/RWKV-Runner).

Its routes are OpenAI-like; only its quirks are handled here:
- state from `GET /status` (0 no model, 2 loading, 3 working); with a `load:` block in the
  backend's config the gateway itself loads that model through `/switch-model` when it finds the
  backend up without one (the call blocks for the whole load, so it runs in the background);
- one generation at a time behind a global lock: the kind's concurrency limit is 1 and the
  gateway queues (gateway/limiter.py) instead of piling requests onto that unbounded lock;
- `/v1/models` lists two fake OpenAI ids (and "rwkv" with no model loaded): hidden;
- message `content` must be a string: content-part arrays are flattened to their text;
- its default stop list contains "\\n\\nA" and "\\n\\nQ", which cut any answer paragraph starting
  with those letters: an explicit (empty) list is sent when the client gave none;
- its request body knows only `max_tokens` (utils/rwkv.py:27-39 ModelConfigBody; pydantic drops
  the rest): `max_completion_tokens` is sent as `max_tokens`;
- answers have no `id`/`created` (filled), `finish_reason` is always "stop" (reported as "length"
  when the generation was cut at its limit, see `_StreamFix`), stream events end in `\\r\\n\\r\\n`
  (normalised) with `: ping` comments (passed through);
- generation errors are swallowed and answered 200 with an empty answer: detected and retried;
- a v5+ model's embedding is a nested (heads, head_size, head_size) list: flattened.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import orjson

from adapters.base import (BackendTarget, Capabilities, EngineStats, Endpoint, Fetch, Probe, ServedModel, State,
                           UpstreamRequest)
from adapters.openai_compatible import OpenAICompatibleAdapter, parse_error_body
from gateway.jsonio import loads_or_none
from gateway.errors import GatewayError, InvalidRequest, UpstreamUnavailable, status_error

log = logging.getLogger("adapters.rwkv_runner")
FAKE_MODELS = frozenset({"gpt-3.5-turbo", "text-davinci-003", "rwkv"})
LOAD_TIMEOUT = 3600.0  # /switch-model answers only when the load is over
EMPTY_DELTA = (b'"content": ""', b'"content":""', b'"text": ""', b'"text":""')
DEFAULT_MAX_TOKENS = 500  # max_tokens_per_generation of TextRWKV, AlbatrossRWKV and TextLlama
# How long a /status that times out while the gateway has a generation running counts as "busy":
# the legacy engine prefills synchronously inside its async handler (routes/completion.py eval ->
# utils/rwkv.py generate -> run_rnn), so its event loop answers nothing until the prefill is over.
BUSY_GRACE = 300.0


class RWKVRunnerAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "rwkv-runner"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    capabilities: ClassVar[Capabilities] = Capabilities(
        n=False, logprobs=False, stream_usage=False, max_concurrency=1, structured_output=False)

    def __init__(self, target: BackendTarget) -> None:
        super().__init__(target)
        self.load_spec = target.load
        self.loading: asyncio.Task[None] | None = None
        self.load_error: str | None = None
        self.engine = engine_of(target.load)
        batch = albatross_slots(target.load)
        if batch is not None:  # batched, no global lock (routes/completion.py eval_albatross): not 1 at a time
            self.capabilities = replace(self.capabilities, max_concurrency=batch)
        self.sent = 0.0  # monotonic time of the last generation sent
        self.last_ready: Probe | None = None
        self.last_ready_at = 0.0

    # -- health, discovery, loading ------------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        try:
            probe = await self._probe(fetch, await fetch("GET", self.target.url + "/status"))
        except TimeoutError:
            # Connected but silent: a legacy-engine prefill holds its event loop. While a generation
            # the gateway sent is running (sent after the last good probe), that is busy, not down.
            now = time.monotonic()
            if self.last_ready is not None and self.sent > self.last_ready_at and now - self.last_ready_at < BUSY_GRACE:
                return Probe(State.READY, self.last_ready.models,
                             detail="busy: /status did not answer while a generation runs (prefill blocks it)",
                             engine=self.last_ready.engine)
            raise
        if probe.state is State.READY:
            self.last_ready, self.last_ready_at = probe, time.monotonic()
        return probe

    async def _probe(self, fetch: Fetch, res: Any) -> Probe:
        doc = loads_or_none(res.body) if res.status == 200 else None
        if not isinstance(doc, dict) or "status" not in doc:
            return Probe(State.DOWN, detail=f"/status answered HTTP {res.status}")
        status = doc.get("status")
        if status == 2 or (self.loading is not None and not self.loading.done()):
            return Probe(State.LOADING, detail="loading a model")
        if status != 3:
            if self.load_spec and self.load_error is None:
                self.loading = asyncio.get_running_loop().create_task(self._load(fetch))
                return Probe(State.LOADING, detail=f"loading {self.load_spec['model']} (requested by the gateway)")
            why = f"load failed: {self.load_error}" if self.load_error else \
                "no model loaded (give the backend a `load:` block to let the gateway load one)"
            return Probe(State.DOWN, detail=why)
        models = await fetch("GET", self.target.url + "/v1/models")
        cards = (loads_or_none(models.body) or {}).get("data") or [] if models.status == 200 else []
        served = [ServedModel(c["id"]) for c in cards
                  if isinstance(c, dict) and isinstance(c.get("id"), str) and c["id"] not in FAKE_MODELS]
        # /status reports only whether a model is loaded (3 = working): no queue or memory figures
        return Probe(State.READY, served, engine=EngineStats(models_loaded=1))

    async def _load(self, fetch: Fetch) -> None:
        assert self.load_spec is not None
        body = orjson.dumps({k: v for k, v in self.load_spec.items() if v is not None})
        try:
            res = await fetch("POST", self.target.url + "/switch-model", body=body,
                              headers={"Content-Type": "application/json"}, timeout=LOAD_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:
            log.warning("backend %s: /switch-model failed: %s", self.target.name, exc)
            return
        if res.status == 304:  # a load was already running
            return
        if res.status != 200:
            self.load_error = parse_error_body(res.body)[0] or f"HTTP {res.status}"
            log.error("backend %s: loading %s failed: %s", self.target.name, self.load_spec["model"], self.load_error)

    # -- requests ------------------------------------------------------------------------------
    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        if endpoint is Endpoint.CHAT:
            body["messages"] = [_flatten(m) for m in body.get("messages") or []]
        elif endpoint is Endpoint.COMPLETIONS and isinstance(body.get("prompt"), list):
            prompts = body["prompt"]
            if len(prompts) != 1 or not isinstance(prompts[0], str):
                raise InvalidRequest("RWKV-Runner completes one prompt string per request.", param="prompt")
            body["prompt"] = prompts[0]
        if endpoint is not Endpoint.EMBEDDINGS:
            if body.get("stop") is None:
                body["stop"] = []  # its default list cuts answers at any paragraph starting "A" or "Q"
            # ModelConfigBody has max_tokens only (utils/rwkv.py:27-39); the newer name wins, as at OpenAI
            mct = body.pop("max_completion_tokens", None)
            if mct is not None:
                body["max_tokens"] = mct
            self.sent = time.monotonic()
        req = super().build_request(endpoint, body, upstream_model, stream)
        # Its streams carry no usage (routes/completion.py:614-636) and nothing the gateway can count
        # honestly replaces it (no prompt count; chunks < tokens): the rewriter's usage chunk is an
        # estimate for the gateway's metrics only and never reaches a client, even one that asked.
        req.strip_usage = stream
        return req

    # -- answers -------------------------------------------------------------------------------
    def translate_body(self, endpoint: Endpoint, body: bytes, headers: Any = None, request: Any = None) -> bytes:
        if endpoint is Endpoint.EMBEDDINGS:
            return _flat_embeddings(body)
        doc = loads_or_none(body)
        if not isinstance(doc, dict) or not doc.get("choices"):
            raise UpstreamUnavailable(f"backend {self.target.name} returned no answer", status=502,
                                      code="upstream_empty_answer")
        usage = doc.get("usage") or {}
        choice = doc["choices"][0]
        text = (choice.get("message") or {}).get("content") if endpoint is Endpoint.CHAT else choice.get("text")
        if not text and not (choice.get("message") or {}).get("tool_calls") and not usage.get("completion_tokens"):
            # RWKV-Runner catches a generation exception, prints it and answers 200 with nothing
            raise UpstreamUnavailable(f"backend {self.target.name} failed to generate (empty answer)", status=502,
                                      code="upstream_generation_failed")
        limit = _max_tokens(request)
        if limit and usage.get("completion_tokens", 0) >= limit and choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "length"
        doc.setdefault("id", f"{'chatcmpl' if endpoint is Endpoint.CHAT else 'cmpl'}-{uuid.uuid4().hex}")
        doc.setdefault("created", int(time.time()))
        return orjson.dumps(doc)

    def stream_rewriter(self, request: UpstreamRequest) -> Callable[[bytes], bytes] | None:
        doc = loads_or_none(request.body) or {}
        # Given tools, an RWKV model's stream goes through its tool-call path, which swallows the empty
        # last delta (routes/completion.py async_generator_stream_response_tool_call): no signal there.
        tools = bool(doc.get("tools")) and doc.get("tool_choice") != "none"
        return _StreamFix(request.url.endswith("chat/completions"), _limit(doc), self.engine == "rwkv" and not tools)

    def map_error(self, status: int, body: bytes) -> GatewayError:
        message = parse_error_body(body)[0]
        if status == 400 and "model not loaded" in message:
            err = UpstreamUnavailable(f"backend {self.target.name} has no model loaded", code="backend_loading",
                                      headers={"Retry-After": "5"})
            err.backend_state = State.LOADING.value
            return err
        if status == 422:
            return InvalidRequest(f"backend {self.target.name} rejected the request: {message}")
        return status_error(status, message or f"backend {self.target.name} answered HTTP {status}")


def _flat_embeddings(body: bytes) -> bytes:
    """Its vector is a model state slot, `model_state[-11].tolist()`: for v5+ models (every World model
    since) a nested (heads, head_size, head_size) list, which OpenAI clients cannot read. Flattened
    row-major, as its own base64 form does; flat answers (v4 models, base64) pass unchanged."""
    doc = loads_or_none(body)
    items = doc.get("data") if isinstance(doc, dict) else None
    changed = False
    for item in items if isinstance(items, list) else ():
        vec = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vec, list) and vec and isinstance(vec[0], list):
            while vec and isinstance(vec[0], list):
                vec = [x for row in vec for x in row]
            item["embedding"], changed = vec, True
    return orjson.dumps(doc) if changed else body


def _flatten(m: Any) -> Any:
    """RWKV-Runner requires string content: content-part arrays become their joined text."""
    if isinstance(m, dict) and isinstance(m.get("content"), list):
        texts = []
        for part in m["content"]:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                raise InvalidRequest(f"RWKV-Runner takes text only, not {part.get('type')!r} parts.", param="messages")
        return {**m, "content": "\n".join(texts)}
    return m


def _max_tokens(request: UpstreamRequest | None) -> int | None:
    return None if request is None else _limit(loads_or_none(request.body) or {})


def _limit(doc: dict[str, Any]) -> int:
    """The generation limit the backend applies: the request's (max_completion_tokens was renamed to
    max_tokens by build_request), else the model's default. An operator's /update-config can change
    that default, which the gateway cannot see (README)."""
    v = doc.get("max_tokens")
    return v if isinstance(v, int) and not isinstance(v, bool) else DEFAULT_MAX_TOKENS


def engine_of(load: dict[str, Any] | None) -> str:
    """Which backend-python engine a `load:` block starts (routes/config.py switch_model): llama.cpp
    for a .gguf file, Albatross for an `albatross`/`chirrup` strategy, else the legacy RWKV one (also
    assumed when the gateway did not load the model: the app's default engine)."""
    if not load:
        return "rwkv"
    if str(load.get("model", "")).endswith(".gguf"):
        return "llama"
    strategy = str(load.get("strategy") or "").strip().lower().split(maxsplit=1)
    return "albatross" if strategy and strategy[0] in ("albatross", "chirrup") else "rwkv"


def albatross_slots(load: dict[str, Any] | None) -> int | None:
    """workers x batch of an Albatross strategy (albatross_engine/config.py parse_albatross_strategy:
    `albatross workers=W batch=B`, defaults 1 and 32), the requests it generates at once; else None."""
    if engine_of(load) != "albatross":
        return None
    assert load is not None
    workers, batch = 1, 32
    for part in str(load["strategy"]).lower().split()[1:]:
        key, _, value = part.partition("=")
        if value.isdigit() and int(value) >= 1:
            if key in ("workers", "worker", "worker_num"):
                workers = int(value)
            elif key in ("batch", "batch_size"):
                batch = int(value)
    return workers * batch


class _StreamFix:
    """One stream's byte-level repairs: CRLF -> LF, `id`/`created` added to each event, "stop" ->
    "length" when the generation was cut at its limit, and an estimated usage chunk before [DONE].

    Edits happen only at event starts: generated text is JSON-escaped, so it holds no raw newline,
    but "data: {" or "data: [DONE]" need no escaping and may be in it (a raw replace broke the JSON).

    Length: the legacy engine yields a chunk only when the decoded delta has no U+FFFD (utils/rwkv.py
    generate: the `yield` sits inside `if "\ufffd" not in delta`), so a multibyte character split
    over tokens gives fewer chunks than tokens. But every natural end (EOS, a stop string, a stop
    token) yields one last chunk with an EMPTY delta, and a cut at max_tokens does not: that is the
    signal. Other engines (llama.cpp, Albatross) end differently; there, as everywhere, a count of
    content chunks >= the limit proves a cut (each chunk holds at least one token)."""

    __slots__ = ("head", "limit", "legacy", "chunks", "ended_empty")

    def __init__(self, chat: bool, limit: int | None, legacy: bool) -> None:
        self.head = b'data: {"id": "%s", "created": %d, ' % (
            (b"chatcmpl-" if chat else b"cmpl-") + uuid.uuid4().hex.encode(), int(time.time()))
        self.limit, self.legacy = limit, legacy
        self.chunks = 0  # events with content
        self.ended_empty = False  # the last content-or-empty event had an empty delta

    def __call__(self, chunk: bytes) -> bytes:
        if b"\r\n" in chunk:  # CRLF framing: valid SSE, but some clients only split on \n\n
            chunk = chunk.replace(b"\r\n", b"\n")
        events = chunk.split(b"\n\n")  # a block of whole events: the last piece is b""
        for i, ev in enumerate(events):
            if ev.startswith(b"data: {"):
                if b'"finish_reason": null' in ev or b'"finish_reason":null' in ev:
                    # escaped JSON text cannot hold these quote-delimited markers: only the keys can
                    self.ended_empty = any(m in ev for m in EMPTY_DELTA)
                    self.chunks += not self.ended_empty
                elif (b'"finish_reason": "stop"' in ev or b'"finish_reason":"stop"' in ev) and self.cut():
                    ev = ev.replace(b'"finish_reason": "stop"', b'"finish_reason": "length"').replace(
                        b'"finish_reason":"stop"', b'"finish_reason":"length"')
                events[i] = self.head + ev[7:]
            elif ev.startswith(b"data: [DONE]"):
                # No usage in its streams: an estimate of the completion tokens for the gateway's
                # metrics (the relay strips it): each content chunk is >= 1 token; a cut used the limit.
                n = max(self.chunks, self.limit or 0) if self.cut() else self.chunks
                usage = b'data: {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": %d}}\n\n' % n
                events[i] = usage + ev
        return b"\n\n".join(events)

    def cut(self) -> bool:
        if self.limit and self.chunks >= self.limit:
            return True
        return self.legacy and self.chunks > 0 and not self.ended_empty

