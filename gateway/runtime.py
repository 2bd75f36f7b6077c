"""The gateway's live state: settings, the shared upstream client, backends, the routing table.

One instance per app, created by the lifespan; request handlers and background tasks share it.
"""

from __future__ import annotations

import logging
import time

from adapters import get_adapter, records
from adapters.base import BackendTarget, State
from gateway.auth import KeyRing
from gateway.backends import BackendRuntime
from gateway.config_loader import ConfigError
from gateway.limiter import Limiter
from gateway.metrics import Metrics
from gateway.routing import RoutingTable, build_table
from gateway.settings import BackendSettings, GatewaySettings
from gateway.upstream import Upstream

log = logging.getLogger("gateway")
STATES = [s.value for s in State]


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        u = settings.upstream
        self.upstream = Upstream(connect_timeout=u.connect_timeout, read_timeout=u.read_timeout,
                                 total_timeout=u.total_timeout, max_connections=u.max_connections,
                                 first_byte_timeout=u.first_byte_timeout, pool_timeout=u.pool_timeout,
                                 max_response_bytes=u.max_response_bytes,
                                 probe_connections=settings.health.max_connections,
                                 max_header_bytes=u.max_header_bytes)
        records.set_max_record_bytes(u.max_event_bytes)  # process-wide: one gateway per process
        self.stream_keepalive = u.stream_keepalive
        self.affinity = settings.routing.affinity
        self.affinity_from_user = settings.routing.affinity_from_user
        self.eject_after = settings.routing.eject_after_errors
        try:
            self.keys = KeyRing(settings.auth)
        except ValueError as exc:  # a hashed key without its secret, or one key listed twice
            raise ConfigError(str(exc)) from None
        self.api_keys = self.keys.client  # true: inference needs a key
        for ident in self.keys.by_digest.values():  # the per-key counters, one row per name
            ident.counts = self.metrics.keys.row(ident.name)
        self.gatekeeper = None  # per-key limits, only when some key or team has them
        if any(i.limits or i.team_limits for i in self.keys.by_digest.values()):
            from gateway.auth.enforce import Gatekeeper

            self.gatekeeper = gk = Gatekeeper(settings, self.metrics)
            for ident in self.keys.by_digest.values():
                ident.subjects = Gatekeeper.subjects(ident)
                ident.leased = any(s.limits.concurrency for s in ident.subjects)
                ident.plan = gk.plan(ident.subjects)
                gk.leased = gk.leased or ident.leased
        self.usage = None  # usage per key name x model x day, when requests carry keys (gateway/auth/usage.py)
        if self.keys.client:
            from gateway.auth.usage import UsageRecorder
            st = settings.state
            if st.redis:
                from gateway.auth.usage_redis import RedisUsageStore
                store = RedisUsageStore(st.redis)
            else:
                from gateway.auth.usage_sqlite import SQLiteUsageStore
                store = SQLiteUsageStore(st.sqlite)
            self.usage = UsageRecorder(store, flush_interval=st.usage_flush_interval)
        self.backends: dict[str, BackendRuntime] = {}
        for b in settings.backends:
            self.add_backend(b, rebuild=False)
        self.supervisor = None
        if settings.supervisor.enabled and any(b.launch for b in settings.backends):
            from gateway.supervisor.service import Supervisor  # only when configured

            self.supervisor = Supervisor(self)
        self.table: RoutingTable = build_table(settings.models, self.backends)
        self.publish_readiness()
        for m in self.supervisor.managed.values() if self.supervisor else ():
            self.state_changed(m.b)  # their first state (stopped / starting), set before the table existed
        self.max_body = settings.server.max_body_bytes
        self.max_attempts = u.max_attempts
        self.retry_deadline = u.retry_deadline
        self.draining = False
        self.started_at = time.time()

    def add_backend(self, b: BackendSettings, *, rebuild: bool = True) -> BackendRuntime:
        target = BackendTarget(b.name, b.url, b.api_key.get_secret_value() if b.api_key else None,
                               b.stream_usage, b.reasoning_field, b.keep_alive, b.num_ctx,
                               b.load.model_dump() if b.load else None,
                               worker_hosts=tuple(b.worker_hosts) if b.worker_hosts is not None else None,
                               client_overrides=b.client_overrides, media_urls=b.media_urls)
        overrides = {k: v for k, v in b.capabilities.model_dump().items() if v is not None}
        adapter = get_adapter(b.kind)(target)
        rt = BackendRuntime(b.name, b.kind, b.url, adapter, b.weight, b.discover, overrides=overrides)
        limit = b.max_concurrency or adapter.capabilities.max_concurrency
        if limit:
            rt.limiter = Limiter(b.name, limit, b.max_queue, b.queue_timeout)
        self.backends[b.name] = rt
        self.metrics.set_backend_state(rt.name, rt.state.value, STATES, 0, rt.kind)
        if rebuild:
            self.rebuild()
        return rt

    def rebuild(self) -> None:
        """Swap in a new routing table built from config and what backends serve now."""
        self.table = build_table(self.settings.models, self.backends)
        self.publish_readiness()

    def state_changed(self, b: BackendRuntime) -> None:
        self.metrics.set_backend_state(b.name, b.state.value, STATES, len(b.served))
        self.publish_readiness()

    def publish_readiness(self) -> None:
        """llm_gateway_model_ready_deployments: on state and routing changes only, never per request."""
        self.metrics.set_model_ready({r.name: sum(1 for d in r.deployments if d.backend.usable(d.upstream_model))
                                      for r in self.table.routes})

    def mark_failed(self, b: BackendRuntime, detail: str) -> None:
        """Passive health: a connect failure (or a run of server errors) on real requests takes the
        backend out at once (circuit open); its next successful probe brings it back."""
        b.errors_in_row = 0
        if b.set_state(State.DOWN if b.ever_ready else State.STARTING, detail):
            log.warning("backend %s: %s -> marked %s", b.name, detail, b.state.value)
            self.state_changed(b)

    def mark_state(self, b: BackendRuntime, state: str, detail: str) -> None:
        """A request learned the backend's state before its probe did (e.g. llama.cpp loading)."""
        if b.set_state(State(state), detail):
            log.warning("backend %s: %s -> marked %s", b.name, detail, b.state.value)
            self.state_changed(b)

    def authorized(self, header: bytes | None) -> bool:
        """May a request with this Authorization / X-Api-Key value infer? (gateway/auth/keys.py)"""
        return self.keys.may_infer(header)

    def ready(self) -> bool:
        """Some deployment serves now, or is one the gateway starts on demand (and can start)."""
        return any(d.backend.usable(d.upstream_model) or (d.backend.managed is not None and d.backend.managed.wakeable)
                   for r in self.table.routes for d in r.deployments)
