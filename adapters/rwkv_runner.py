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
- answers have no `id`/`created` (filled), `finish_reason` is always "stop" (reported as "length"
  when `max_tokens` was used up), stream events end in `\\r\\n\\r\\n` (normalised) with `: ping`
  comments (passed through);
- generation errors are swallowed and answered 200 with an empty answer: detected and retried;
- a v5+ model's embedding is a nested (heads, head_size, head_size) list: flattened.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from adapters.base import BackendTarget, Capabilities, Endpoint, Fetch, Probe, ServedModel, State, UpstreamRequest
from adapters.openai_compatible import OpenAICompatibleAdapter, parse_error_body
from gateway.jsonio import loads_or_none
from gateway.errors import GatewayError, InvalidRequest, UpstreamUnavailable, status_error

log = logging.getLogger("adapters.rwkv_runner")
FAKE_MODELS = frozenset({"gpt-3.5-turbo", "text-davinci-003", "rwkv"})
LOAD_TIMEOUT = 3600.0  # /switch-model answers only when the load is over


class RWKVRunnerAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "rwkv-runner"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    capabilities: ClassVar[Capabilities] = Capabilities(
        n=False, logprobs=False, stream_usage=False, max_concurrency=1)

    def __init__(self, target: BackendTarget) -> None:
        super().__init__(target)
        self.load_spec = target.load
        self.loading: asyncio.Task[None] | None = None
        self.load_error: str | None = None

    # -- health, discovery, loading ------------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        res = await fetch("GET", self.target.url + "/status")
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
        return Probe(State.READY, served)

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
        if endpoint is not Endpoint.EMBEDDINGS and body.get("stop") is None:
            body["stop"] = []  # its default list cuts answers at any paragraph starting "A" or "Q"
        req = super().build_request(endpoint, body, upstream_model, stream)
        req.strip_usage = stream  # the usage chunk the rewriter adds is an estimate: metrics only
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
        chat = request.url.endswith("chat/completions")
        head = b'data: {"id": "%s", "created": %d, ' % (
            (b"chatcmpl-" if chat else b"cmpl-") + uuid.uuid4().hex.encode(), int(time.time()))
        limit = _max_tokens(request)
        seen = [0]

        def fix(chunk: bytes) -> bytes:
            if b"\r\n" in chunk:  # CRLF framing: valid SSE, but some clients only split on \n\n
                chunk = chunk.replace(b"\r\n", b"\n")
            chunk = chunk.replace(b"data: {", head)
            seen[0] += chunk.count(b'"finish_reason": null') + chunk.count(b'"finish_reason":null')
            if limit and seen[0] >= limit:
                chunk = chunk.replace(b'"finish_reason": "stop"', b'"finish_reason": "length"').replace(
                    b'"finish_reason":"stop"', b'"finish_reason":"length"')
            if b"[DONE]" in chunk:
                # No usage in its streams, but one chunk per generated token: count them for the
                # gateway's token metrics (an estimate; the relay always strips this chunk).
                usage = b'data: {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": %d}}\n\n' % seen[0]
                chunk = chunk.replace(b"data: [DONE]", usage + b"data: [DONE]", 1)
            return chunk
        return fix

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
    if request is None:
        return None
    doc = loads_or_none(request.body) or {}
    v = doc.get("max_tokens")
    return v if isinstance(v, int) else 500  # RWKV-Runner's own default

