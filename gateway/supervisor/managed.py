"""One backend the gateway runs itself: its child processes, state, start-up, stop, crash and restart.

States change only through the BackendRuntime the health probes and the balancer already use
(`Gateway.state_changed`), so routing needs no special case: a stopped, starting or stopping backend is
simply not serving, and the request path asks the Supervisor to wake it (gateway/supervisor/service.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from adapters.base import ServedModel, State
from gateway.backends import BackendRuntime
from gateway.errors import UpstreamUnavailable, limiter_refused
from gateway.recipes.plan import Launch, build
from gateway.settings import BackendSettings, LaunchSettings, SupervisorSettings
from gateway.supervisor.child import Child
from gateway.supervisor.launcher import StartFailed, bring_up
from gateway.supervisor.logs import LogRing
from gateway.supervisor.placement import refusal

if TYPE_CHECKING:
    from gateway.supervisor.swap import SwapGroup

log = logging.getLogger("gateway.supervisor")


class WillNotFit(Exception):
    """Placement refused the start: the estimate exceeds what is free on its swap group's GPUs."""


QUOTED_LINES = 10  # log lines quoted in a failed start's 503


class Managed:
    def __init__(self, b: BackendRuntime, bs: BackendSettings, cfg: SupervisorSettings,
                 changed: Callable[[BackendRuntime], None], probe: Callable[[BackendRuntime], Awaitable[None]],
                 metrics: object) -> None:
        assert bs.launch is not None
        self.b = b
        self.spec: LaunchSettings = bs.launch
        self.cfg = cfg
        self.kind = bs.kind
        self.params = bs.launch.params(bs.name, bs.url, "host")
        self.launch: Launch = build(bs.kind, self.params, "host")
        self.logs = LogRing(max_lines=cfg.log_lines)
        self.children: list[Child] = []
        self.group: SwapGroup | None = None
        self.up = False                 # children running and started: health probes may look at it
        self.yielding = False           # stopping for a swap: requests for it wait for its next turn
        self.start_task: asyncio.Task[None] | None = None
        self.stop_task: asyncio.Task[None] | None = None
        self.watch_task: asyncio.Task[None] | None = None
        self.waiters = 0
        self.first_wait_at = 0.0        # monotonic time of the oldest waiting request (swap order)
        self.last_used = time.monotonic()
        self.ready_at = 0.0
        self.starts = 0
        self.restarts = 0
        self.crashes_in_row = 0
        self.next_start_at = 0.0        # backoff after a crash or a failed start
        self.last_failure: str | None = None
        self.last_startup_s: float | None = None
        # Its last runs as [first process spawned, every process gone] (wall clock): a swap group's members'
        # runs never overlap (tests/test_supervisor_swap.py checks exactly that).
        self.runs: deque[list[float | None]] = deque(maxlen=20)
        self._changed = changed
        self._probe = probe
        self.metrics = metrics
        b.managed = self
        # Listed from the start: the names its launch says it serves, until its own probe says more.
        b.served = (ServedModel(bs.launch.served_name or bs.launch.model),)
        # Before the routing table exists: no notification yet (the Gateway publishes it once built).
        b.set_state(State.STOPPED if bs.launch.start == "on_demand" else State.STARTING,
                    "not started yet (starts on its first request)" if bs.launch.start == "on_demand"
                    else "starting with the gateway")

    # -- state -------------------------------------------------------------------------------
    def _set(self, state: State, detail: str) -> None:
        changed = self.b.set_state(state, detail)
        if changed or state is State.CRASHED:
            log.info("backend %s: %s (%s)", self.b.name, state.value, detail)
            self._changed(self.b)

    @property
    def running(self) -> bool:
        return self.up or self.start_task is not None

    @property
    def wakeable(self) -> bool:
        """Can a request expect it to serve? Not after three failed starts in a row."""
        return self.crashes_in_row < 3

    def describe(self) -> dict[str, object]:
        return {"start": self.spec.start, "idle_timeout": self.spec.idle_timeout, "group": self.spec.group,
                "pids": [c.pid for c in self.children if c.running], "restarts": self.restarts,
                "starts": self.starts, "waiting": self.waiters, "last_failure": self.last_failure,
                "last_startup_seconds": self.last_startup_s, "runs": [list(r) for r in self.runs],
                "command": [p.argv for p in self.launch.plans]}

    # -- waiting for it ----------------------------------------------------------------------
    async def wait_ready(self) -> None:
        """Hold a request until this backend serves: take the swap group's turn, start it (or join the
        start in progress), and fail with a 503 quoting its log when it cannot start."""
        if self.waiters >= self.cfg.max_waiting:
            raise limiter_refused(f"backend {self.b.name} is starting and {self.waiters} requests already wait "
                                  f"for it (supervisor.max_waiting)", "queue_full", "5")
        if self.waiters == 0:
            self.first_wait_at = time.monotonic()
        self.waiters += 1
        try:
            while not self.b.serving:
                if self.group is not None:
                    await self.group.turn(self)
                    if self.b.serving:
                        break
                if self.stop_task is not None:
                    await asyncio.shield(self.stop_task)
                    continue
                task = self.ensure_started()
                try:
                    await asyncio.shield(task)
                except StartFailed as exc:
                    raise self._failed(exc) from None
                except WillNotFit as exc:
                    raise UpstreamUnavailable(f"Backend {self.b.name} was not started: {exc}",
                                              code="backend_will_not_fit", headers={"Retry-After": "30"}) from None
                if not self.b.serving and not self.up:
                    raise self._failed(None)
                if not self.b.serving:
                    await asyncio.sleep(0.05)   # running, its probe says loading: look again
        finally:
            self.waiters -= 1
            if self.waiters:
                self.first_wait_at = time.monotonic()
        self.last_used = time.monotonic()

    def _failed(self, exc: StartFailed | None) -> UpstreamUnavailable:
        tail = exc.log_tail if exc is not None else self.logs.tail(QUOTED_LINES)
        reason = exc.reason if exc is not None else (self.last_failure or self.b.detail)
        lines = "\n".join(tail[-QUOTED_LINES:]) or "(it printed nothing)"
        return UpstreamUnavailable(f"Backend {self.b.name} could not be started: {reason}. "
                                   f"Its last log lines:\n{lines}", code="backend_start_failed",
                                   headers={"Retry-After": "5"})

    # -- starting ----------------------------------------------------------------------------
    def ensure_started(self) -> asyncio.Task[None]:
        if self.start_task is None:
            self.start_task = asyncio.get_running_loop().create_task(self._start(), name=f"start:{self.b.name}")
        return self.start_task

    async def _start(self) -> None:
        try:
            delay = self.next_start_at - time.monotonic()
            if delay > 0:
                self._set(State.CRASHED, f"restarting in {delay:.1f}s ({self.last_failure})")
                await asyncio.sleep(delay)
            t0 = time.monotonic()
            self.starts += 1
            if self.crashes_in_row:
                self.restarts += 1
                self.metrics.observe_supervisor("restart", self.b.name)
            placement = self.cfg.groups.get(self.spec.group) if self.spec.group else None
            if placement is not None:
                why = await asyncio.to_thread(refusal, self.kind, self.params, placement)
                if why is not None:
                    self.metrics.observe_supervisor("start_failed", self.b.name)
                    self._set(State.STOPPED, f"not started: {why}")
                    raise WillNotFit(why)
            self._set(State.STARTING, "starting its process")
            self.runs.append([time.time(), None])
            try:
                self.children = await bring_up(self.launch, self.logs, stall_timeout=self.cfg.stall_timeout,
                                               on_progress=self._progress, stop_grace=self.cfg.stop_grace,
                                               orphan_grace=self.cfg.stop_grace)
                self.up = True
                await self._adapter_ready()
            except StartFailed as exc:
                self._failure(exc.reason)
                self.metrics.observe_supervisor("start_failed", self.b.name)
                raise
            self.last_startup_s = time.monotonic() - t0
            self.ready_at = self.last_used = time.monotonic()
            self.crashes_in_row = 0
            self.metrics.observe_supervisor("start", self.b.name, self.last_startup_s)
            self.watch_task = asyncio.get_running_loop().create_task(self._watch(), name=f"watch:{self.b.name}")
        except BaseException:
            await self._kill_children()
            self.up = False
            raise
        finally:
            self.start_task = None

    async def _adapter_ready(self) -> None:
        """Ready by its recipe's readiness path; now ready by its adapter's probe too (a FastChat worker
        registers with its controller after both answer): the same progress rule bounds the wait."""
        deadline = time.monotonic() + self.cfg.stall_timeout
        await self._probe(self.b)          # its served models and state, through its adapter
        while not self.b.serving:
            if not all(c.running for c in self.children):
                raise StartFailed(f"it exited while starting ({self._exit_text()})", self.logs.tail(20))
            if time.monotonic() > max(deadline, self.logs.last_at + self.cfg.stall_timeout):
                raise StartFailed(f"its readiness path answers but its adapter's probe did not say ready within "
                                  f"{self.cfg.stall_timeout:g}s ({self.b.detail})", self.logs.tail(20))
            await asyncio.sleep(0.2)
            await self._probe(self.b)

    def _progress(self, phase: str) -> None:
        state = {"starting": State.STARTING, "loading": State.LOADING}.get(phase)
        if state is not None and not self.b.serving:
            self._set(state, f"{phase} (its process is running)")

    def _failure(self, reason: str) -> None:
        self.crashes_in_row += 1
        self.last_failure = reason
        backoff = min(self.cfg.restart_backoff * 2 ** (self.crashes_in_row - 1), self.cfg.restart_backoff_max)
        self.next_start_at = time.monotonic() + backoff
        self._set(State.CRASHED, reason)

    def _exit_text(self) -> str:
        codes = [f"{c.name} exit code {c.returncode}" for c in self.children if c.returncode is not None]
        return ", ".join(codes) or "no exit code"

    # -- crash -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """A child that exits while it should run is a crash."""
        waits = [asyncio.ensure_future(c.wait()) for c in self.children]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.stop_task is not None:
            return
        self.up = False
        await self._kill_children()
        self.metrics.observe_supervisor("crash", self.b.name)
        self._failure(f"its process exited ({self._exit_text()})")
        log.warning("backend %s crashed; last log lines:\n%s", self.b.name, "\n".join(self.logs.tail(QUOTED_LINES)))
        if self.group is not None:
            self.group.released(self)
        if self.spec.start == "at_boot":   # at once (after its backoff), through its swap group's turn
            asyncio.get_running_loop().create_task(self.wait_ready(), name=f"restart:{self.b.name}"
                                                   ).add_done_callback(_ignore)

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, reason: str) -> asyncio.Task[None]:
        if self.stop_task is None:
            self.stop_task = asyncio.get_running_loop().create_task(self._stop(reason), name=f"stop:{self.b.name}")
        return self.stop_task

    async def _stop(self, reason: str) -> None:
        try:
            if self.start_task is not None:
                self.start_task.cancel()
                await asyncio.gather(self.start_task, return_exceptions=True)
            self._set(State.STOPPING, f"stopping ({reason}): finishing {self.b.in_flight} request(s)")
            while self.b.in_flight > 0:        # never cut a stream
                await asyncio.sleep(0.05)
            if self.watch_task is not None:
                self.watch_task.cancel()
                self.watch_task = None
            self.up = False
            t0 = time.monotonic()
            await self._kill_children()
            self.metrics.observe_supervisor("stop", self.b.name, time.monotonic() - t0, reason=reason)
            self._set(State.STOPPED, f"stopped ({reason}); starts on its next request")
        finally:
            self.yielding = False
            self.stop_task = None
            if self.group is not None:
                self.group.released(self)

    async def _kill_children(self) -> None:
        for c in reversed(self.children):  # the worker before its controller; kept for their exit codes
            await c.stop(self.cfg.stop_grace)
        if self.runs and self.runs[-1][1] is None:
            self.runs[-1][1] = time.time()

    # -- idle --------------------------------------------------------------------------------
    def idle_for(self, now: float) -> float:
        """Seconds without a request (0 while one is in flight or waiting)."""
        if self.b.in_flight or self.waiters:
            self.last_used = now
            return 0.0
        return now - self.last_used


def _ignore(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()   # retrieved: a failed restart is already recorded in the backend's state
