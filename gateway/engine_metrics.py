"""The engines' own load figures in one schema (README "Engine metrics"; notes: metrics-spec.md).

Each adapter's probe fills an `EngineStats` with what its engine reports (vLLM and TGI /metrics,
llama.cpp /slots or /metrics, FastChat queue_length, Ollama /api/ps, RWKV-Runner /status); the
health monitor hands it here after every probe. Only the health task calls `update`: nothing of
this runs on the request path. A figure the engine does not report has no series (absent, not 0),
and a series the engine stopped reporting (or a backend that went down) is removed, so a panel
never shows a stale value as if it were current.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from adapters.base import EngineStats

# (metric, label values) of one series; the label tuple starts with the backend name.
Series = tuple[Gauge, tuple[str, ...]]


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.running = Gauge("llm_gateway_engine_requests_running",
                             "Requests the engine reports generating for now.", ["backend"], registry=r)
        self.waiting = Gauge("llm_gateway_engine_requests_waiting",
                             "Requests the engine reports queued inside it.", ["backend"], registry=r)
        self.kv_usage = Gauge("llm_gateway_engine_kv_cache_usage_ratio",
                              "KV cache (or slot) usage the engine reports, 0..1.", ["backend"], registry=r)
        self.models_loaded = Gauge("llm_gateway_engine_models_loaded",
                                   "Models resident in the engine.", ["backend"], registry=r)
        self.model_memory = Gauge("llm_gateway_engine_model_memory_bytes",
                                  "Memory a resident model takes, as the engine reports it.",
                                  ["backend", "model"], registry=r)
        self._series: dict[str, set[Series]] = {}  # per backend: the series set by its last probe

    def update(self, backend: str, stats: EngineStats | None) -> None:
        """Set the series `stats` reports for `backend`; remove those it no longer reports."""
        now: set[Series] = set()
        if stats is not None:
            kv = stats.kv_usage
            for gauge, value in ((self.running, stats.running), (self.waiting, stats.waiting),
                                 (self.kv_usage, None if kv is None else min(max(kv, 0.0), 1.0)),
                                 (self.models_loaded, stats.models_loaded)):
                if value is not None:
                    gauge.labels(backend).set(value)
                    now.add((gauge, (backend,)))
            for model, size in (stats.model_memory or {}).items():
                self.model_memory.labels(backend, model).set(size)
                now.add((self.model_memory, (backend, model)))
        for gauge, labels in self._series.get(backend, set()) - now:
            try:
                gauge.remove(*labels)
            except KeyError:  # already gone
                pass
        if now:
            self._series[backend] = now
        else:
            self._series.pop(backend, None)
