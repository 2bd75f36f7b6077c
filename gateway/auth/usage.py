"""Usage accounting: how much each key name used each model, per UTC day (issue 16 "Usage").

Why this shape:
- The request path only calls `UsageRecorder.record()`: one dict lookup and a few additions in memory, no I/O and
  no await, so accounting adds no latency and can never fail a request.
- A background task writes the aggregates every `flush_interval` (sooner when `batch_size` distinct ones pile
  up), each batch in ONE store transaction. A failed write keeps the batch and retries that same batch later (the
  Redis store applies a batch at most once, so a retry after a lost reply does not count twice). Beyond
  `max_pending` distinct aggregates new ones are dropped and counted: an outage cannot exhaust memory.
- Only names are recorded: the key's config name ("alice", "api_keys[0]"), never the key. A name that looks like
  a generated key (sk-...) is refused (dropped and counted, its value never logged), so a wiring mistake cannot
  write a secret to disk.
- Stores share one query API: SQLite in usage_sqlite.py (one process, the default), Redis in usage_redis.py
  (replicas sharing usage).
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

log = logging.getLogger("gateway.usage")

EPOCH_ORDINAL = date(1970, 1, 1).toordinal()   # day numbers are days since 1970-01-01 (UTC, POSIX time)
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{20,}")


def day_number(d: date) -> int:
    return d.toordinal() - EPOCH_ORDINAL


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One key name x model x UTC day. `team` is the key's team as of its latest record that day."""
    day: date
    key: str
    model: str
    team: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0           # answers with status >= 400, and streams that failed
    latency_s: float = 0.0    # sum of request durations; mean = latency_s / requests


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    latency_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def sum_rows(rows: list[UsageRow]) -> UsageTotals:
    return UsageTotals(sum(r.requests for r in rows), sum(r.prompt_tokens for r in rows),
                       sum(r.completion_tokens for r in rows), sum(r.errors for r in rows),
                       sum(r.latency_s for r in rows))


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Filters; None matches all. `start` and `end` are inclusive UTC days."""
    key: str | None = None
    team: str | None = None
    model: str | None = None
    start: date | None = None
    end: date | None = None

    def matches_names(self, r: UsageRow) -> bool:
        """The key, team and model filters (a store selects the date range itself: SQL, the Redis days set)."""
        return ((self.key is None or r.key == self.key) and (self.team is None or r.team == self.team)
                and (self.model is None or r.model == self.model))


@dataclass(slots=True)
class Aggregate:
    """What one key name did with one model on one day since the last write (mutated by record())."""
    day: date
    key: str
    model: str
    team: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    """One write: `writer` (random per recorder) and `seq` (1, 2, ...) let a store skip a batch it already applied."""
    writer: str
    seq: int
    entries: list[Aggregate]


@dataclass(slots=True)
class RecorderStats:
    flushes: int = 0          # batches written
    failures: int = 0         # failed write attempts
    dropped: int = 0          # records not kept (beyond max_pending, or a key-like name)
    lost_at_close: int = 0    # aggregates still unwritten when close() gave up
    outage: bool = False      # the last write failed


class UsageStore(abc.ABC):
    """Where aggregates end up. `write` applies a batch in one transaction (all or nothing) or raises."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def write(self, batch: Batch) -> None: ...

    @abc.abstractmethod
    async def read(self, q: UsageQuery) -> list[UsageRow]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def query(self, key: str | None = None, team: str | None = None, model: str | None = None,
                    start: date | None = None, end: date | None = None) -> list[UsageRow]:
        """Rows per key x model x day that match every given filter, sorted by (day, key, model)."""
        rows = await self.read(UsageQuery(key, team, model, start, end))
        return sorted(rows, key=lambda r: (r.day, r.key, r.model))

    async def totals(self, key: str | None = None, team: str | None = None, model: str | None = None,
                     start: date | None = None, end: date | None = None) -> UsageTotals:
        return sum_rows(await self.query(key, team, model, start, end))


class UsageRecorder:
    """In-process aggregation in front of a store: `record()` on the request path, writes in the background."""

    def __init__(self, store: UsageStore, *, flush_interval: float = 1.0, batch_size: int = 1000,
                 max_pending: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.flush_interval, self.batch_size, self.max_pending = flush_interval, batch_size, max_pending
        self.stats = RecorderStats()
        self._clock = clock                     # epoch seconds; a request counts on the UTC day it is recorded
        self._pending: dict[tuple[int, str, str], Aggregate] = {}
        self._unsent: Batch | None = None       # a batch whose write failed: retried as it is, before anything else
        self._writer = secrets.token_hex(8)
        self._seq = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._drop_logged = self._key_logged = False

    async def start(self) -> None:
        await self.store.open()
        self._task = asyncio.create_task(self._run(), name="usage-flush")

    def record(self, key: str, model: str, team: str | None = None, prompt_tokens: int = 0,
               completion_tokens: int = 0, status: int = 200, failed: bool = False, latency: float = 0.0) -> None:
        """Count one finished request. `key` is the key's NAME from config, never the key. O(1), no I/O.
        (Positional on the request path: keywords cost a dict's worth of work per call.)"""
        day = int(self._clock() // 86400)
        a = self._pending.get((day, key, model))
        if a is None:
            if self.pending >= self.max_pending or _KEY_LIKE.fullmatch(key):
                self._drop(key)
                return
            a = self._pending[(day, key, model)] = Aggregate(date.fromordinal(EPOCH_ORDINAL + day), key, model, team)
            if len(self._pending) >= self.batch_size:
                self._wake.set()
        a.team = team
        a.requests += 1
        a.prompt_tokens += prompt_tokens
        a.completion_tokens += completion_tokens
        if status >= 400 or failed:
            a.errors += 1
        a.latency_s += latency

    @property
    def pending(self) -> int:
        """Aggregates held in memory, not yet written (at most max_pending)."""
        return len(self._pending) + (len(self._unsent.entries) if self._unsent else 0)

    async def flush(self) -> bool:
        """Write everything pending now. False when the store failed: the aggregates stay, retried later."""
        async with self._lock:
            while True:
                if self._unsent is None:
                    if not self._pending:
                        return True
                    self._unsent = self._take()
                try:
                    await self.store.write(self._unsent)
                except Exception as exc:  # any store failure (disk full, locked, Redis down): keep, retry, go on
                    self._failed(exc)
                    return False
                self._unsent = None
                self.stats.flushes += 1
                if self.stats.outage:
                    self.stats.outage = self._drop_logged = False
                    log.warning("usage store %s is back: writing the aggregates kept in memory", self.store)

    async def query(self, key: str | None = None, team: str | None = None, model: str | None = None,
                    start: date | None = None, end: date | None = None) -> list[UsageRow]:
        """Like UsageStore.query, after flushing what is pending (best effort: if the store cannot take it now,
        the answer holds only what was written; the pending aggregates stay and are written later)."""
        await self.flush()
        return await self.store.query(key, team, model, start, end)

    async def totals(self, key: str | None = None, team: str | None = None, model: str | None = None,
                     start: date | None = None, end: date | None = None) -> UsageTotals:
        return sum_rows(await self.query(key, team, model, start, end))

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the background task and write everything (retrying for up to `timeout` s), then close the store."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        deadline = time.monotonic() + timeout
        while not await self.flush() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, self.flush_interval))
        if self.pending:
            self.stats.lost_at_close = self.pending
            log.error("usage: %d aggregates could not be written at shutdown (store %s unavailable)",
                      self.pending, self.store)
        await self.store.close()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                return
            if not await self.flush():   # store down: wait a whole interval, whatever piles up meanwhile
                await asyncio.sleep(self.flush_interval)

    def _take(self) -> Batch:
        if len(self._pending) <= self.batch_size:
            entries = list(self._pending.values())
            self._pending = {}
        else:
            keys = list(itertools.islice(self._pending, self.batch_size))
            entries = [self._pending.pop(k) for k in keys]
        self._seq += 1
        return Batch(self._writer, self._seq, entries)

    def _failed(self, exc: Exception) -> None:
        self.stats.failures += 1
        if not self.stats.outage:
            self.stats.outage = True
            log.warning("usage store %s failed (%s: %s): keeping usage in memory (up to %d aggregates), retrying "
                        "every %.3g s", self.store, type(exc).__name__, exc, self.max_pending, self.flush_interval)

    def _drop(self, key: str) -> None:
        self.stats.dropped += 1
        if _KEY_LIKE.fullmatch(key):
            if not self._key_logged:      # once per process: this is a wiring bug, not an event
                self._key_logged = True
                log.error("usage: refused a record whose key name looks like a key (sk-...): record names, not keys")
        elif not self._drop_logged:
            self._drop_logged = True
            log.error("usage: %d aggregates pending (max_pending): dropping new ones until the store takes them",
                      self.pending)


def usage_store(sqlite: str, redis: str | None = None) -> UsageStore:
    """The store `state:` asks for: Redis when `state.redis` is set (replicas share usage), else the SQLite file.
    Redis is imported only then."""
    if redis:
        from gateway.auth.usage_redis import RedisUsageStore
        return RedisUsageStore(redis)
    from gateway.auth.usage_sqlite import SQLiteUsageStore
    return SQLiteUsageStore(sqlite)
