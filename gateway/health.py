"""Background probes: each backend's state and served models, kept fresh through its adapter.

Probes use the adapter's native, free check (never a billed completion). A ready backend is
probed every `health.interval`, a not-ready one every `health.not_ready_interval`, both with
jitter so a fleet of gateways does not probe in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from adapters.base import Probe, State
from gateway.backends import BackendRuntime
from gateway.runtime import Gateway

log = logging.getLogger("gateway.health")
HELD = (State.DRAINING, State.STOPPING)


class HealthMonitor:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def probe_all(self) -> None:
        """One round over every backend, concurrently (used at start-up before serving)."""
        await asyncio.gather(*(self.probe(b) for b in list(self.gw.backends.values())))

    def start(self) -> None:
        for b in self.gw.backends.values():
            self.watch(b)

    def watch(self, b: BackendRuntime) -> None:
        if b.name not in self.tasks:
            self.tasks[b.name] = asyncio.get_running_loop().create_task(self._loop(b), name=f"probe:{b.name}")

    async def stop(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()

    async def _loop(self, b: BackendRuntime) -> None:
        h = self.gw.settings.health
        down_probes = 0
        while True:
            if b.serving:
                base = h.interval
            elif b.state is State.DOWN:  # back off while it stays down: 2 s, 4 s, 8 s ... up to the cap
                base = min(h.not_ready_interval * 2 ** down_probes, h.down_max_interval)
                down_probes += 1
            else:  # starting / loading: probe fast, it will be ready soon
                base = h.not_ready_interval
            if b.state is not State.DOWN:
                down_probes = 0
            await asyncio.sleep(base * random.uniform(0.8, 1.2))
            await self.probe(b)

    async def probe(self, b: BackendRuntime) -> None:
        if b.managed is not None and not b.managed.up:
            return  # a launched backend not running: probes never wake or judge it (the supervisor does)
        timeout = self.gw.settings.health.timeout

        async def fetch(method: str, url: str, *, headers: dict[str, str] | None = None,
                        body: bytes | None = None, timeout: float = timeout):  # type: ignore[no-untyped-def]
            return await self.gw.upstream.probe_fetch(method, url, headers=headers, body=body, timeout=timeout)

        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(b.adapter.probe(fetch), timeout * 2)
        except ConnectionError as exc:
            # Nothing listening: a backend that never answered is still starting (vLLM and TGI
            # do not listen until their model is loaded); one that did answer before is down.
            result = Probe(State.DOWN if b.ever_ready else State.STARTING, detail=str(exc))
        except (TimeoutError, asyncio.TimeoutError):
            result = Probe(State.DOWN if b.ever_ready else State.STARTING, detail="probe timed out")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe bug must not kill the monitor
            log.exception("probe of backend %s failed", b.name)
            result = Probe(State.DOWN, detail=f"probe error: {exc!r}")
        self.gw.metrics.observe_probe(b.name, time.perf_counter() - started)
        self.apply(b, result)

    def apply(self, b: BackendRuntime, p: Probe) -> None:
        if b.state in HELD and p.state in (State.READY, State.SWAPPED_OUT, State.LOADING):
            p.state = b.state  # drained by an operator, or being stopped: probes keep its models fresh only
        before = b.state
        if b.ejected and p.state in (State.READY, State.SWAPPED_OUT):  # a good probe brings them back too
            log.info("backend %s: model(s) %s back in service after a good probe", b.name, ", ".join(b.ejected))
            b.ejected.clear()
            b.model_errors.clear()
            self.gw.publish_readiness()
        changed = b.set_state(p.state, p.detail)
        b.version = p.version or b.version
        b.reported_load = p.load
        self.gw.metrics.engine.update(b.name, p.engine)
        served = tuple(p.models) if p.state is State.READY or p.models else b.served
        models_changed = served != b.served
        if models_changed:
            b.served = served
        if changed:
            names = ", ".join(m.id for m in b.served) or "no models"
            log.info("backend %s (%s): %s -> %s [%s]%s", b.name, b.kind, before.value, b.state.value,
                     names, f" ({p.detail})" if p.detail else "")
        if changed or models_changed:
            self.gw.state_changed(b)
        if models_changed:
            self.gw.rebuild()
