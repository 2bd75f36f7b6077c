"""The server's State: configuration, request bookkeeping, metric counters and gauges."""

from __future__ import annotations

import argparse
import asyncio


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.model_id: str = a.model_id
        self.max_concurrent = a.max_concurrent_requests
        self.max_best_of = a.max_best_of
        self.max_stop_sequences = a.max_stop_sequences
        self.max_top_n_tokens = a.max_top_n_tokens
        self.max_input_tokens = a.max_input_tokens
        self.max_total_tokens = a.max_total_tokens
        self.max_client_batch_size = a.max_client_batch_size
        self.max_batch_total_tokens = a.max_batch_total_tokens
        self.payload_limit = a.payload_limit
        self.api_key = a.api_key
        self.version = a.version
        self.docker_label = None if a.docker_label in (None, "", "native") else a.docker_label
        self.sha = a.sha
        self.model_sha = a.model_sha
        self.pipeline_tag = a.pipeline_tag or None
        self.compute_type = a.compute_type
        self.token_delay = a.token_delay
        self.keep_alive = a.keep_alive
        self.legacy_sse = a.legacy_sse
        self.fingerprint = f"{self.version}-{self.docker_label or 'native'}"
        self.healthy = True
        self.health_checks = 0  # GET /health answered: a gateway's probe rounds, for tests
        self.default_ctl: dict = {}
        self.release = asyncio.Event()
        self.requests: list[dict] = []
        self.permits = 0
        self.max_in_flight = 0
        self.queued = 0
        self.batch = 0
        self.batch_tokens = 0
        self.held = 0
        self.completed = 0
        self.cancelled = 0
        self.overloaded = 0
        self.counters: dict[tuple[str, tuple], int] = {}
        self.gauges: dict[str, float] = {"tgi_batch_max_total_tokens": float(self.max_batch_total_tokens)}

    def count(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + 1

    def fail(self, err: str) -> None:
        self.count("tgi_request_failure", err=err)

    def sync_gauges(self) -> None:
        self.gauges["tgi_queue_size"] = float(self.queued)
        self.gauges["tgi_batch_current_size"] = float(self.batch)
        self.gauges["tgi_batch_current_max_tokens"] = float(self.batch_tokens)

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "model_sha": self.model_sha,
            "model_pipeline_tag": self.pipeline_tag,
            "max_concurrent_requests": self.max_concurrent,
            "max_best_of": self.max_best_of,
            "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": self.max_client_batch_size,
            "router": "text-generation-router",
            "version": self.version,
            "sha": self.sha,
            "docker_label": self.docker_label,
        }
