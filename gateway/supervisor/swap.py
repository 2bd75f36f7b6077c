"""Swap groups: backends that share GPUs, one running at a time, without thrashing.

The policy (README "Running backends", swap groups), llama-swap's #612 proposal made exact:
- The member that holds the group runs; requests for another member wait (in that member's queue).
- The holder keeps the group for its turn: at least `supervisor.min_turn` seconds from when it became ready,
  cut short only when it has had no request for `supervisor.idle_grace` seconds. Two clients hammering two
  models therefore get one swap per turn, not one per request.
- When its turn is over and another member has waiting requests, the holder yields: it takes no new requests
  (they wait for its next turn), finishes the ones in flight (a stream is never cut), and stops.
- The group then goes to the member whose oldest request has waited longest.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from gateway.settings import SupervisorSettings

if TYPE_CHECKING:
    from gateway.supervisor.managed import Managed

RECHECK = 0.25  # how often waiting requests look at the holder's turn


class SwapGroup:
    def __init__(self, name: str, cfg: SupervisorSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.members: list[Managed] = []
        self.holder: Managed | None = None
        self.held_since = 0.0
        self.swaps = 0
        self._event = asyncio.Event()

    def grant(self, m: Managed) -> None:
        self.holder = m
        self.held_since = time.monotonic()
        self._notify()

    def released(self, m: Managed) -> None:
        """m stopped or crashed: the group is free for the member waiting longest."""
        if self.holder is m:
            self.holder = None
            nxt = self._longest_waiting()
            if nxt is not None:
                self.swaps += 1
                self.grant(nxt)
            else:
                self._notify()

    async def turn(self, m: Managed) -> None:
        """Return once m holds the group (and is not yielding it)."""
        while True:
            if self.holder is None:
                self.grant(self._longest_waiting() or m)
            if self.holder is m and not m.yielding:
                return
            self._maybe_swap()
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), RECHECK)
            except TimeoutError:
                pass

    def _longest_waiting(self) -> Managed | None:
        waiting = [x for x in self.members if x.waiters > 0]
        return min(waiting, key=lambda x: x.first_wait_at) if waiting else None

    def _maybe_swap(self) -> None:
        h = self.holder
        if h is None or h.yielding or h.stop_task is not None:
            return
        if not any(x is not h and x.waiters > 0 for x in self.members):
            return
        if h.start_task is not None:
            return                                   # never interrupt a start: it would only start again
        if not h.up:                                 # granted, but its requests gave up before it started
            self.released(h)
            return
        if h.up:
            now = time.monotonic()
            served = now - max(self.held_since, h.ready_at)
            idle = h.b.in_flight == 0 and h.waiters == 0 and now - h.last_used >= self.cfg.idle_grace
            if served < self.cfg.min_turn and not idle:
                return
        h.yielding = True
        h.stop("swap")                               # released() hands the group on when it has stopped

    def _notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "members": [m.b.name for m in self.members],
                "holder": self.holder.b.name if self.holder else None, "swaps": self.swaps}
