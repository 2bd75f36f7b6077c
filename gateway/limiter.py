"""Per-backend concurrency limit with a bounded wait queue (never an unbounded one).

A backend that serves N requests at once (RWKV-Runner: 1, behind its global generation lock) gets
at most N from the gateway; up to `max_queue` more wait here, in order, for at most `queue_timeout`
seconds; beyond that the client gets 429 with Retry-After at once. Event-loop only: no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.errors import limiter_refused


class Limiter:
    __slots__ = ("limit", "max_queue", "timeout", "in_use", "waiters", "name")

    def __init__(self, name: str, limit: int, max_queue: int, timeout: float) -> None:
        self.name = name
        self.limit = limit
        self.max_queue = max_queue
        self.timeout = timeout
        self.in_use = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self.waiters)

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self.waiters:
            self.in_use += 1
            return
        if len(self.waiters) >= self.max_queue:
            raise limiter_refused(f"backend {self.name} is at its concurrency limit ({self.limit}) and its queue "
                                  f"({self.max_queue}) is full; try again shortly.", "queue_full", "1")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.waiters.append(fut)
        timer = loop.call_later(self.timeout, lambda: fut.done() or fut.set_exception(TimeoutError()))
        try:
            await fut  # release() hands its slot over: in_use is already counted for us
        except TimeoutError:
            raise limiter_refused(f"backend {self.name} stayed busy for {self.timeout:g}s while this request "
                                  f"waited in its queue; try again shortly.", "queue_timeout",
                                  str(max(1, int(self.timeout)))) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # the slot was handed to us just as we were cancelled
            raise
        finally:
            timer.cancel()
            try:
                self.waiters.remove(fut)
            except ValueError:
                pass

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the oldest waiter
                return
        self.in_use -= 1
