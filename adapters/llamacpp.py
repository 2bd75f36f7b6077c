"""llama.cpp `llama-server` (backends.md part A §1; tools/server in ggml-org/llama.cpp).

Only its quirks on top of the OpenAI-compatible base:
- health: the server listens before the model loads and answers every route 503 "Loading model"
  meanwhile; `/health` is public even with `--api-key` (the other routes are not);
- the request `model` is ignored in single-model mode, so the gateway routes by its own table;
- load from `/slots` (busy slots; on by default) or, failing that, `/metrics`
  (`llamacpp:requests_processing` + `requests_deferred`, only with `--metrics`);
- usage from `usage` or, on builds that send none, from the final chunk's `timings`;
- errors: `exceed_context_size_error` -> OpenAI's `context_length_exceeded`; 501 (feature not
  enabled, e.g. embeddings without `--embeddings`) -> a clear 400; builds of early 2025 report
  stream errors as a non-standard `error: {...}` SSE line, which clients ignore: rewritten to a
  `data:` error event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from adapters.base import Capabilities, Endpoint, Fetch, Probe, ServedModel, State, UpstreamRequest
from adapters.openai_compatible import OpenAICompatibleAdapter, parse_error_body
from adapters.prometheus_text import gauges
from gateway.jsonio import loads_or_none
from gateway.errors import CapabilityMissing, GatewayError, InvalidRequest, UpstreamUnavailable

LOAD_METRICS = ("llamacpp:requests_processing", "llamacpp:requests_deferred")


class LlamaCppAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "llamacpp"
    default_ports: ClassVar[tuple[int, ...]] = (8080,)
    capabilities: ClassVar[Capabilities] = Capabilities()
    usage_markers: ClassVar[tuple[bytes, ...]] = (b'"usage"', b'"timings"')

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.load_source: str | None = None  # "slots", "metrics" or "none", learned by probing
        self.total_slots: int | None = None
        self.version: str | None = None
        self.router: bool = False  # one llama-server serving several models (router mode)
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
        if self.version is None:
            props = await fetch("GET", self.target.url + "/props", headers=self.probe_headers())
            doc = loads_or_none(props.body) if props.status == 200 else None
            if isinstance(doc, dict):
                self.version = str(doc.get("build_info") or "") or None
                slots = doc.get("total_slots")
                self.total_slots = slots if isinstance(slots, int) else None
                self.router = doc.get("role") == "router"
        probe = Probe(State.READY, self.parse_models(res.body), version=self.version)
        if not self.router:  # a router's /slots and /metrics need ?model=: per model, not per server
            probe.load = await self.load(fetch)
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
        req = super().build_request(endpoint, body, upstream_model, stream)
        if self.router:
            # The router routes by body `model`; autoload makes it load an unloaded model on
            # demand even when it was started with --no-models-autoload.
            req.url = self.router_urls[endpoint]
        return req

    async def load(self, fetch: Fetch) -> float | None:
        """Requests the server is working on or queueing, from whichever source it exposes."""
        if self.load_source in (None, "slots"):
            res = await fetch("GET", self.target.url + "/slots", headers=self.probe_headers())
            slots = loads_or_none(res.body) if res.status == 200 else None
            if isinstance(slots, list):
                self.load_source = "slots"
                return float(sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing")))
            if self.load_source == "slots":
                return None
        if self.load_source in (None, "metrics"):
            # Note: every scrape resets llama.cpp's *_seconds gauges; only the slots figures are read.
            res = await fetch("GET", self.target.url + "/metrics", headers=self.probe_headers())
            if res.status == 200:
                self.load_source = "metrics"
                g = gauges(res.body.decode("utf-8", "replace"), LOAD_METRICS)
                return sum(g.values()) if g else None
        self.load_source = "none"
        return None

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

    def stream_rewriter(self, request: UpstreamRequest) -> Callable[[bytes], bytes] | None:
        return _rewrite_error_lines


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

