"""The Supervisor: runs every backend that has a `launch:` block (when `supervisor.enabled`), starts them at
boot or on demand, stops idle ones, arbitrates swap groups, and stops them all when the gateway exits.

The request path calls it only after the balancer found no serving deployment (`wait_for`): a gateway
without launched backends has no Supervisor at all, and a ready one is never asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from adapters.base import State
from gateway.backends import BackendRuntime
from gateway.routing import Route
from gateway.supervisor.managed import Managed, _ignore
from gateway.supervisor.swap import SwapGroup

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway.supervisor")
IDLE_CHECK = 0.5  # seconds between idle checks


class Supervisor:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.settings.supervisor
        self.managed: dict[str, Managed] = {}
        self.groups: dict[str, SwapGroup] = {}
        self.probe = None  # HealthMonitor.probe, set by the app
        self._idle_task: asyncio.Task[None] | None = None
        for bs in gw.settings.backends:
            if bs.launch is None:
                continue
            m = Managed(gw.backends[bs.name], bs, self.cfg, gw.state_changed, self._probe, gw.metrics)
            self.managed[bs.name] = m
            if bs.launch.group is not None:
                g = self.groups.setdefault(bs.launch.group, SwapGroup(bs.launch.group, self.cfg))
                g.members.append(m)
                m.group = g

    async def _probe(self, b: BackendRuntime) -> None:
        if self.probe is not None:
            await self.probe(b)

    async def start(self) -> None:
        """Start the `at_boot` backends (one per swap group: the first listed), without waiting for them."""
        for m in self.managed.values():
            if m.spec.start != "at_boot":
                continue
            if m.group is not None:
                if m.group.holder is not None:
                    m._set(State.STOPPED, f"waits for its swap group {m.group.name!r} "
                                          f"({m.group.holder.b.name} runs); starts on its next request")
                    continue
                m.group.grant(m)
            m.ensure_started().add_done_callback(_ignore)
        if any(m.spec.idle_timeout for m in self.managed.values()):
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop(), name="supervisor:idle")

    async def wait_for(self, route: Route, needs: int) -> bool:
        """Hold a request for `route` until one of its launched deployments serves. False when the route has
        none that could (the caller's own error stands)."""
        candidates = [m for d in route.deployments if (m := d.backend.managed) is not None
                      and d.backend.capmask & needs == needs]
        if not candidates:
            return False
        # One already on its way up, or holding its swap group, before one that must be started.
        candidates.sort(key=lambda m: (not m.running, not (m.group is None or m.group.holder is m)))
        await candidates[0].wait_ready()
        return True

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK)
            now = time.monotonic()
            for m in self.managed.values():
                t = m.spec.idle_timeout
                if (t is not None and m.up and m.stop_task is None and m.start_task is None
                        and m.idle_for(now) >= t):
                    log.info("backend %s: no request for %.0fs (idle_timeout): stopping it", m.b.name, t)
                    m.stop("idle")

    # -- operators ---------------------------------------------------------------------------
    def start_now(self, name: str) -> Managed:
        """POST /admin/backends/{name}/start: as if a request came (it takes its swap group's turn)."""
        m = self.managed[name]
        if not m.b.serving:
            asyncio.get_running_loop().create_task(m.wait_ready(), name=f"admin-start:{name}").add_done_callback(
                _ignore)
        return m

    def stop_now(self, name: str) -> Managed:
        m = self.managed[name]
        if m.running or m.b.state is not State.STOPPED:
            m.stop("admin")
        return m

    async def shutdown(self) -> None:
        """The gateway exits: stop every child (in-flight requests were drained by the server first)."""
        if self._idle_task is not None:
            self._idle_task.cancel()
        await asyncio.gather(*(m.stop("shutdown") for m in self.managed.values() if m.running or m.children),
                             return_exceptions=True)
