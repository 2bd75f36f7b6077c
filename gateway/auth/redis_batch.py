"""Lua script calls to Redis, many per round trip (gateway/auth/limits_redis.py).

Every call waits in a queue; one task sends everything queued as one pipeline (one write, one read of
all replies) and, while that round trip is in flight, the next calls queue for the next one. So a lone
call goes out at once, and under load the round trips per request fall well below one.

Two kinds of call:
- `call` / `submit`: the caller waits for its reply (an acquire, a lease refresh); it is sent at once.
- `defer`: the caller does not wait (a request's finish, after its answer was sent); it rides with the
  next batch that has a `call` in it, or goes alone after `linger` seconds. A deferred call is sent
  before the calls queued after it, so a release always reaches Redis before a later acquire: a freed
  slot is never refused to the next request.

The scripts are loaded together before the first batch. A Redis that lost them (a restart, SCRIPT
FLUSH) answers NOSCRIPT to every call of a batch: they are loaded again and the calls sent again, in
order; that is safe because a NOSCRIPT call did not run. A failed round trip fails every call in it.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError


@dataclass(slots=True)
class _Call:
    script: str
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any] = field(repr=False)


class ScriptBatcher:
    def __init__(self, redis: Any, scripts: dict[str, str], *, linger: float = 0.01) -> None:
        self.redis, self.linger = redis, linger
        self.source = scripts
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in scripts.items()}
        self.round_trips = 0  # pipelines sent (a NOSCRIPT reload and resend counts too)
        self.calls = 0
        self._now: list[_Call] = []
        self._later: list[_Call] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._inflight: list[_Call] = []  # the batch on its way
        self._loaded = False  # the scripts were loaded on this Redis (first use; after a NOSCRIPT)

    def _queue(self, queue: list[_Call], script: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        queue.append(_Call(script, keys, args, fut))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="redis:batches")
        if queue is self._now or len(self._later) == 1:  # a later deferred call must not cut a linger short
            self._wake.set()
        return fut

    def submit(self, script: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a call to go at once (with whatever else is queued); the future holds its reply."""
        return self._queue(self._now, script, keys, args)

    async def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._queue(self._now, script, keys, args)

    def defer(self, script: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a call without waiting; the returned future holds its reply (or its failure)."""
        return self._queue(self._later, script, keys, args)

    async def _run(self) -> None:
        while True:
            if not self._now:
                if not self._later:
                    self._wake.clear()
                    await self._wake.wait()
                if not self._now and self._later and not self._closing:
                    # only deferred calls: give a waited-for call `linger` seconds to carry them
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.linger)
                    except TimeoutError:
                        pass
            batch, self._later, self._now = self._later + self._now, [], []
            if batch:
                self._inflight = batch
                try:
                    await self._send(batch)
                finally:
                    self._inflight = []

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if not self._loaded:
                await self._load()
            replies = await self._pipeline(batch)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                await self._load()
                for i, r in zip(missing, await self._pipeline([batch[i] for i in missing])):
                    replies[i] = r
        except BaseException as exc:  # the whole round trip failed: so did every call in it
            for c in batch:
                if not c.future.done():
                    c.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for c, r in zip(batch, replies):
            if c.future.done():
                continue
            if isinstance(r, Exception):
                c.future.set_exception(r)
            else:
                c.future.set_result(r)

    async def _load(self) -> None:
        """Every script at once, so that they are known or unknown together: a Redis that lost them (a restart,
        SCRIPT FLUSH) answers NOSCRIPT to a whole batch, which is then sent again in its order."""
        pipe = self.redis.pipeline(transaction=False)
        for src in self.source.values():
            pipe.script_load(src)
        self.round_trips += 1
        async with pipe:
            await pipe.execute()
        self._loaded = True

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for c in batch:
            pipe.evalsha(self.sha[c.script], len(c.keys), *c.keys, *c.args)
        self.round_trips += 1
        self.calls += len(batch)
        async with pipe:
            return list(await pipe.execute(raise_on_error=False))

    async def flush(self) -> None:
        """Wait until every call queued so far (deferred ones too) has its reply or its failure."""
        pending = [c.future for c in (*self._inflight, *self._later, *self._now)]
        if pending:
            self._wake.set()  # ends a linger: the deferred calls go now
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Send what is queued, then stop."""
        self._closing = True
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
