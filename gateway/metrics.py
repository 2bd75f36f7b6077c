"""Every Prometheus metric the gateway exports, and the helpers that record them.

Labels come from closed sets only: configured/discovered model and backend names, the endpoint,
the status code, the gateway's own error codes (UPSTREAM_ERROR_CODES). Never a raw client or
backend string (an unknown model is recorded as model="").
Children are cached per label tuple: `.labels()` takes a lock and builds a key on every call,
which the token path should not pay.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.engine_metrics import EngineMetrics

# Bucket bounds include vLLM's own (vllm/v1/metrics/loggers.py), so SLO panels written for vLLM work on
# these and a target can be any of vLLM's bounds; finer bounds are added where vLLM's are too coarse
# for a gateway (vLLM's request latency starts at 300 ms: a fast answer's p99 would read 297 ms).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50,
                   60, 120, 240, 480, 960, 1920, 7680)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
                160, 640, 2560)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5,
                7.5, 10, 20, 40, 80)
# The gateway's own time, its limiter's queue and a probe: microseconds to a minute.
SHORT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                 30, 60)
REJECTION_REASONS = ("queue_full", "queue_timeout", "backend")
# A launched backend's start-up (seconds to half an hour: a 70B model read from disk) and its stop.
STARTUP_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
STOP_REASONS = ("idle", "swap", "admin", "shutdown")

# The `code` label of upstream_errors_total: the gateway's own error codes, a closed set. An error
# code a backend chose (a 4xx's `code` passes through to the client) would let any backend, or a
# client whose input it echoes, create series without bound: it is counted as `other`, and an
# error with no code by its status class (http_4xx / http_5xx).
UPSTREAM_ERROR_CODES = frozenset({
    "upstream_connect_failed", "upstream_disconnected", "upstream_protocol_error", "upstream_timeout",
    "upstream_unavailable", "upstream_pool_exhausted", "upstream_auth_failed", "upstream_empty_answer",
    "upstream_generation_failed", "backend_loading", "no_live_worker", "no_ready_deployment",
    "rate_limit_exceeded", "context_length_exceeded", "request_too_large", "unsupported_endpoint",
    "unsupported_parameter", "model_not_found", "media_url_not_allowed", "no_template", "invalid_json",
    "invalid_type", "invalid_value", "missing_required_parameter", "stream_truncated",
    "http_4xx", "http_5xx", "other",
})


class KeyCounters:
    """llm_gateway_key_requests_total / llm_gateway_key_tokens_total: per key name, counted in plain lists by the
    event loop (no lock per request: three Counter.inc calls cost ~2 us) and turned into counters at scrape."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}   # key name -> requests by status class (index 1-5), prompt, completion

    def row(self, key: str) -> list[int]:
        """A key name's counters, which its Identity holds (`counts`) and proxy.py adds to per request."""
        return self.rows.setdefault(key, [0] * 8)

    def collect(self) -> Any:
        reqs = CounterMetricFamily("llm_gateway_key_requests", "Requests per key name, by status class.",
                                   labels=["key", "status"])
        toks = CounterMetricFamily("llm_gateway_key_tokens", "Tokens per key name, from backends' usage reports.",
                                   labels=["key", "kind"])
        for key, row in list(self.rows.items()):
            for cls in range(1, 6):
                if row[cls]:
                    reqs.add_metric([key, f"{cls}xx"], row[cls])
            if row[6]:
                toks.add_metric([key, "prompt"], row[6])
            if row[7]:
                toks.add_metric([key, "completion"], row[7])
        yield reqs
        yield toks


class StateTrips:
    """llm_gateway_state_round_trips_total / llm_gateway_state_calls_total: read at scrape from the stores that
    batch their calls to Redis (`round_trips`, `calls` attributes), by component."""

    def __init__(self) -> None:
        self.sources: dict[str, Any] = {}

    def collect(self) -> Any:
        trips = CounterMetricFamily("llm_gateway_state_round_trips", "Round trips to the shared state (Redis).",
                                    labels=["component"])
        calls = CounterMetricFamily("llm_gateway_state_calls", "Calls sent to the shared state (Redis); "
                                    "calls per round trip is the batching.", labels=["component"])
        for name, src in list(self.sources.items()):
            trips.add_metric([name], src.round_trips)
            calls.add_metric([name], src.calls)
        yield trips
        yield calls


class Metrics:
    """One instance per app (tests build several apps in one process: no global registry)."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the exposition for no use here
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llm_gateway_requests", "Requests answered, by final HTTP status.",
                                ["endpoint", "model", "backend", "status"], registry=r)
        self.duration = Histogram("llm_gateway_request_duration_seconds",
                                  "Time from request received to last byte sent.",
                                  ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llm_gateway_time_to_first_token_seconds",
                              "Streams: time from request received to the first event sent.",
                              ["model", "backend"], buckets=TTFT_BUCKETS, registry=r)
        self.in_flight = Gauge("llm_gateway_in_flight_requests", "Requests being served, per backend.",
                               ["backend"], registry=r)
        self.tokens = Counter("llm_gateway_tokens", "Tokens reported by backends' usage.",
                              ["model", "backend", "kind"], registry=r)
        self.upstream_errors = Counter("llm_gateway_upstream_errors",
                                       "Failed upstream attempts, by gateway error code.",
                                       ["backend", "code"], registry=r)
        self.retries = Counter("llm_gateway_retries", "Requests retried on another deployment.",
                               ["model"], registry=r)
        self.truncated = Counter("llm_gateway_streams_truncated",
                                 "Streams that ended without [DONE] or failed after the first byte.",
                                 ["backend"], registry=r)
        self.backend_state = Gauge("llm_gateway_backend_state",
                                   "1 for the state each backend is in now.", ["backend", "state"],
                                   registry=r)
        self.backend_models = Gauge("llm_gateway_backend_models", "Models a backend reports serving.",
                                    ["backend"], registry=r)
        self.backend_info = Gauge("llm_gateway_backend_info", "Always 1: the kind of each backend (join on backend).",
                                  ["backend", "kind"], registry=r)
        self.tpot = Histogram("llm_gateway_time_per_output_token_seconds",
                              "Streams: inter-token latency as the mean per request, (end - first token) / "
                              "(completion tokens - 1); streams of 2+ tokens.",
                              ["model", "backend"], buckets=TPOT_BUCKETS, registry=r)
        self.queue_wait = Histogram("llm_gateway_queue_wait_seconds",
                                    "Time a request waited in the backend's concurrency limiter.",
                                    ["backend"], buckets=SHORT_BUCKETS, registry=r)
        self.overhead = Histogram("llm_gateway_overhead_seconds",
                                  "The gateway's own time per request: received to upstream request sent "
                                  "(limiter wait excluded), plus, non-stream, upstream answer read to answer written.",
                                  ["endpoint"], buckets=SHORT_BUCKETS, registry=r)
        self.fallbacks = Counter("llm_gateway_fallbacks", "Requests passed on to a configured fallback model.",
                                 ["model", "fallback"], registry=r)
        self.rejections = Counter("llm_gateway_rejections",
                                  "429s: the gateway's limiter (queue_full, queue_timeout) or the backend itself.",
                                  ["backend", "reason"], registry=r)
        self.model_ready = Gauge("llm_gateway_model_ready_deployments",
                                 "Deployments of each public model that can serve now (0: requests for it fail).",
                                 ["model"], registry=r)
        self._ready_models: set[str] = set()
        self.probe_duration = Histogram("llm_gateway_probe_duration_seconds", "One health probe of a backend.",
                                        ["backend"], buckets=SHORT_BUCKETS, registry=r)
        # The process supervisor (gateway/supervisor): only backends with a `launch:` block have series.
        self.sup_events = {
            "start": Counter("llm_gateway_backend_starts", "Launched backends started and ready.", ["backend"],
                             registry=r),
            "start_failed": Counter("llm_gateway_backend_start_failures",
                                    "Starts that failed (exited, stalled, or over the recipe's budget).",
                                    ["backend"], registry=r),
            "crash": Counter("llm_gateway_backend_crashes", "Launched backends whose process died while serving.",
                             ["backend"], registry=r),
            "restart": Counter("llm_gateway_backend_restarts", "Starts after a crash or a failed start.",
                               ["backend"], registry=r),
        }
        self.sup_stops = Counter("llm_gateway_backend_stops", "Launched backends stopped, by reason.",
                                 ["backend", "reason"], registry=r)
        self.startup = Histogram("llm_gateway_backend_startup_seconds",
                                 "From starting a launched backend's process to its adapter's probe saying ready.",
                                 ["backend"], buckets=STARTUP_BUCKETS, registry=r)
        self.stop_duration = Histogram("llm_gateway_backend_stop_seconds",
                                       "From SIGTERM to every process of a launched backend gone.",
                                       ["backend"], buckets=SHORT_BUCKETS, registry=r)
        # Team keys (gateway/auth): the key label is a configured key name, never a key.
        self.limited = Counter("llm_gateway_key_limited", "Requests refused by a key's or team's limit.",
                               ["key", "limit"], registry=r)
        self.keys = KeyCounters()   # per key name: plain integers on the request path, read at scrape time
        r.register(self.keys)
        self.state_failures = Counter("llm_gateway_state_failures",
                                      "Calls to the shared state (Redis) that failed: limits or usage.",
                                      ["component"], registry=r)
        self.state = StateTrips()
        r.register(self.state)
        self._cache: dict[tuple[Any, ...], Any] = {}
        self.engine = EngineMetrics(r)  # the engines' own figures, set by the health probes

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = metric.labels(*labels)
        return c

    # -- recording, once per request, at its end --------------------------------------------
    def observe_request(self, endpoint: str, model: str, backend: str, status: int, seconds: float) -> None:
        self._child(self.requests, endpoint, model, backend, str(status)).inc()
        self._child(self.duration, endpoint, model).observe(seconds)

    def observe_ttft(self, model: str, backend: str, seconds: float) -> None:
        self._child(self.ttft, model, backend).observe(seconds)

    def observe_usage(self, model: str, backend: str, prompt: int, completion: int) -> None:
        if prompt:
            self._child(self.tokens, model, backend, "prompt").inc(prompt)
        if completion:
            self._child(self.tokens, model, backend, "completion").inc(completion)

    def observe_upstream_error(self, backend: str, code: str | None, status: int) -> None:
        if code is None:
            code = "http_5xx" if status >= 500 else "http_4xx"
        elif code not in UPSTREAM_ERROR_CODES:
            code = "other"
        self._child(self.upstream_errors, backend, code).inc()

    def observe_tpot(self, model: str, backend: str, first_at: float, end: float, tokens: int) -> None:
        if tokens >= 2 and first_at:
            self._child(self.tpot, model, backend).observe((end - first_at) / (tokens - 1))

    def observe_queue_wait(self, backend: str, seconds: float) -> None:
        self._child(self.queue_wait, backend).observe(seconds)

    def observe_overhead(self, endpoint: str, seconds: float) -> None:
        self._child(self.overhead, endpoint).observe(seconds)

    def observe_fallback(self, model: str, fallback: str) -> None:
        self._child(self.fallbacks, model, fallback).inc()

    def observe_rejection(self, backend: str, reason: str) -> None:
        self._child(self.rejections, backend, reason if reason in REJECTION_REASONS else "backend").inc()

    def observe_probe(self, backend: str, seconds: float) -> None:
        self._child(self.probe_duration, backend).observe(seconds)

    def observe_retry(self, model: str) -> None:
        self._child(self.retries, model).inc()

    def observe_truncated(self, backend: str) -> None:
        self._child(self.truncated, backend).inc()

    def observe_supervisor(self, event: str, backend: str, seconds: float | None = None,
                           reason: str | None = None) -> None:
        if event == "stop":
            self._child(self.sup_stops, backend, reason if reason in STOP_REASONS else "admin").inc()
            if seconds is not None:
                self._child(self.stop_duration, backend).observe(seconds)
            return
        self._child(self.sup_events[event], backend).inc()
        if event == "start" and seconds is not None:
            self._child(self.startup, backend).observe(seconds)

    def observe_limited(self, key: str, limit: str) -> None:
        self._child(self.limited, key, limit).inc()

    def observe_state_failure(self, component: str) -> None:
        self._child(self.state_failures, component).inc()

    def in_flight_child(self, backend: str) -> Any:
        return self._child(self.in_flight, backend)

    def set_backend_state(self, backend: str, state: str, states: list[str], n_models: int,
                          kind: str | None = None) -> None:
        if kind is not None:
            self._child(self.backend_info, backend, kind).set(1)
        for s in states:
            self._child(self.backend_state, backend, s).set(1 if s == state else 0)
        self._child(self.backend_models, backend).set(n_models)

    def set_model_ready(self, counts: dict[str, int]) -> None:
        """Per public model, its deployments that can serve; a model no longer routed loses its series."""
        for gone in self._ready_models - counts.keys():
            self.model_ready.remove(gone)
            self._cache.pop((id(self.model_ready), gone), None)
        for model, n in counts.items():
            self._child(self.model_ready, model).set(n)
        self._ready_models = set(counts)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


