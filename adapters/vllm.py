"""vLLM's OpenAI-compatible server (backends.md part A §2; vllm/entrypoints in vllm-project/vllm).

Only its quirks on top of the OpenAI-compatible base:
- health: nothing listens until the engine is built (connection refused = starting), then
  `/health` 200 with an empty body; 503 once the engine died;
- served names and `max_model_len` from `/v1/models`; the request `model` is validated
  (unknown -> 404), so the gateway always sends the deployment's upstream name;
- load from `/metrics`: `vllm:num_requests_running` + `vllm:num_requests_waiting`, KV cache
  pressure from `vllm:kv_cache_usage_perc` (the older `vllm:gpu_cache_usage_perc` before 0.9.2);
- version from `/version`;
- an engine asleep (`--sleep-idle-ttl`, or the dev `/sleep`) still answers `/health` 200; its
  `vllm:engine_sleep_state{sleep_state="awake"}` is 0: its models are reported cold ("sleeping"), so
  warm replicas are preferred and the first request waits for a wake-up only where none is warm;
- errors in both shapes (flat before v0.10.1, nested after: the shared parser reads both);
  "maximum context length" -> `context_length_exceeded`; 503 admission rejections retry elsewhere;
- reasoning text arrives as `reasoning` (v0.33) or `reasoning_content` (older): the backend's
  `reasoning_field` setting renames it for clients that expect the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import orjson

from adapters.base import Capabilities, EngineStats, Fetch, Probe, ServedModel, State, UpstreamRequest
from adapters.openai_compatible import OpenAICompatibleAdapter, parse_error_body
from adapters.prometheus_text import gauges
from gateway.errors import GatewayError, InvalidRequest

LOAD_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc")


class VLLMAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "vllm"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    # POST /v1/responses: VL entrypoints/openai/responses/api_router.py:48; POST /v1/messages (Anthropic's):
    # entrypoints/anthropic/api_router.py (0.32.0, which the tests run)
    capabilities: ClassVar[Capabilities] = Capabilities(responses=True, messages=True)

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.version: str | None = None
        self.kv_cache_usage: float | None = None
        field = getattr(target, "reasoning_field", None)
        self._rename: tuple[bytes, bytes] | None = None
        if field == "reasoning_content":
            self._rename = (b'"reasoning":', b'"reasoning_content":')
        elif field == "reasoning":
            self._rename = (b'"reasoning_content":', b'"reasoning":')

    async def probe(self, fetch: Fetch) -> Probe:
        health = await fetch("GET", self.target.url + "/health")
        if health.status != 200:
            return Probe(State.DOWN, detail=f"/health answered HTTP {health.status}"
                         + (" (engine dead)" if health.status == 503 else ""))
        res = await fetch("GET", self.target.url + "/v1/models", headers=self.probe_headers())
        if res.status != 200:
            return Probe(State.DOWN, detail=f"/v1/models answered HTTP {res.status}"
                         + (" (check the backend's api_key)" if res.status == 401 else ""))
        probe = Probe(State.READY, self.parse_models(res.body))
        metrics = await fetch("GET", self.target.url + "/metrics")
        if metrics.status == 200:
            text = metrics.body.decode("utf-8", "replace")
            g = gauges(text, LOAD_METRICS)
            if "vllm:num_requests_running" in g or "vllm:num_requests_waiting" in g:
                probe.load = g.get("vllm:num_requests_running", 0.0) + g.get("vllm:num_requests_waiting", 0.0)
            # one series per engine (data parallel): running/waiting add up, the KV ratio is their mean
            kv_name = "vllm:kv_cache_usage_perc" if "vllm:kv_cache_usage_perc" in g else "vllm:gpu_cache_usage_perc"
            kv = g.get(kv_name)
            if kv is not None:
                kv /= max(1, _samples(text, kv_name))
            self.kv_cache_usage = kv
            sleeping = asleep(metrics.body)
            if sleeping:
                probe.models = [ServedModel(m.id, m.context_length, "sleeping") for m in probe.models]
            # One engine serves one model (its /v1/models names are aliases and LoRA adapters);
            # asleep, its weights are offloaded or discarded (vllm:engine_sleep_state).
            probe.engine = EngineStats(running=g.get("vllm:num_requests_running"),
                                       waiting=g.get("vllm:num_requests_waiting"), kv_usage=kv,
                                       models_loaded=0 if sleeping else 1)
        if self.version is None:
            v = await fetch("GET", self.target.url + "/version")
            try:
                doc = orjson.loads(v.body) if v.status == 200 else None
            except orjson.JSONDecodeError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("version"), str):
                self.version = doc["version"]
        probe.version = self.version
        return probe

    def context_length(self, card: dict[str, Any]) -> int | None:
        n = card.get("max_model_len")
        return n if isinstance(n, int) else None

    def map_error(self, status: int, body: bytes) -> GatewayError:
        message, _, _, param = parse_error_body(body)
        if status == 400 and "maximum context length" in message:
            return InvalidRequest(message, code="context_length_exceeded", param=param or "messages")
        return super().map_error(status, body)

    def translate_body(self, endpoint: Any, body: bytes, headers: Any = None, request: Any = None) -> bytes:
        if self._rename is not None and self._rename[0] in body:
            return body.replace(*self._rename)
        return body

    def stream_rewriter(self, request: UpstreamRequest) -> Callable[[bytes], bytes] | None:
        if self._rename is None:
            return None
        old, new = self._rename
        # A key in compact or spaced JSON can only be this byte sequence: inside strings the
        # quotes are escaped, so a plain replace cannot touch content.
        return lambda chunk: chunk.replace(old, new) if old in chunk else chunk


def _samples(text: str, name: str) -> int:
    """How many samples (label sets) of metric `name` the exposition has."""
    return sum(1 for line in text.splitlines() if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "))


SLEEP_AWAKE = b'vllm:engine_sleep_state{'


def asleep(metrics: bytes) -> bool:
    """Every engine's `vllm:engine_sleep_state{...,sleep_state="awake"}` is 0 (vllm/v1/metrics/loggers.py:
    "awake = 0 means engine is sleeping"); False where the metric is absent (vLLM before sleep mode)."""
    if SLEEP_AWAKE not in metrics:
        return False
    values = []
    for line in metrics.split(b"\n"):
        if line.startswith(SLEEP_AWAKE) and b'sleep_state="awake"' in line:
            try:
                values.append(float(line.rsplit(b" ", 1)[1]))
            except (IndexError, ValueError):
                continue
    return bool(values) and max(values) == 0.0
