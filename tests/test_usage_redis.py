"""Usage in a real redis-server (gateway/auth/usage_redis.py): the same query semantics as SQLite, exact sums from
two processes, a batch applied once, names with ':' kept apart, TTLs, no KEYS/SCAN, and an outage survived."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from redis import Redis as SyncRedis

from gateway.auth.usage import Aggregate, Batch, UsageRecorder, UsageRow
from gateway.auth.usage_redis import RedisUsageStore
from tests.procs import Proc, Spawner, free_port
from tests.test_usage import D1, D2, at, check_batch_applied_once, check_queries, check_rollover, concurrent_writers

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    spawn: Spawner
    port: int
    proc: Proc | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.proc = self.spawn.proc([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], f"redis-{self.port}-{self.starts}")
        deadline = time.monotonic() + 10
        while True:
            try:
                SyncRedis(port=self.port, socket_timeout=1).ping()
                return
            except Exception:
                assert self.proc.popen.poll() is None and time.monotonic() < deadline, self.proc.output()
                time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.stop()

    def client(self) -> SyncRedis:
        return SyncRedis(port=self.port, decode_responses=True)


@pytest.fixture(scope="module")
def redis_server(module_spawn: Spawner) -> Iterator[RedisServer]:
    server = RedisServer(module_spawn, free_port())
    server.start()
    yield server


def store(server: RedisServer, **kw: object) -> RedisUsageStore:
    return RedisUsageStore(server.url, prefix=f"t-{uuid.uuid4().hex[:8]}:", **kw)  # type: ignore[arg-type]


def test_query_filters_and_totals(redis_server: RedisServer) -> None:
    asyncio.run(check_queries(store(redis_server)))


def test_utc_midnight_rollover(redis_server: RedisServer) -> None:
    asyncio.run(check_rollover(store(redis_server)))


def test_names_with_colons_stay_apart(redis_server: RedisServer) -> None:
    async def go() -> None:
        rec = UsageRecorder(store(redis_server), flush_interval=3600, clock=lambda: at(D1))
        await rec.start()
        rec.record("a:b", "c", prompt_tokens=1)
        rec.record("a", "b:c", prompt_tokens=2)
        rec.record("a%3Ab", "c", prompt_tokens=4)   # looks like the escaped form of "a:b"
        rec.record("bob", "qwen2.5:7b", prompt_tokens=8, team="x:y")
        assert [(r.key, r.model, r.team, r.prompt_tokens) for r in await rec.query()] == \
            [("a", "b:c", None, 2), ("a%3Ab", "c", None, 4), ("a:b", "c", None, 1), ("bob", "qwen2.5:7b", "x:y", 8)]
        await rec.close()
    asyncio.run(go())


def test_a_retried_batch_is_applied_once(redis_server: RedisServer) -> None:
    asyncio.run(check_batch_applied_once(store(redis_server)))


def test_ttl_index_and_no_keyspace_scan(redis_server: RedisServer) -> None:
    r = redis_server.client()

    async def go() -> None:
        s = store(redis_server, ttl_days=3)
        await s.open()
        await s.write(Batch("w", 1, [Aggregate(D1, "alice", "m1", "t", 1, 1, 1, 0, 0.0)]))
        h = s.hash_name(D1, "alice", "m1")
        assert h == f"{s.prefix}usage:2026-12-03:alice:m1"
        assert 3 * 86400 - 5 <= r.ttl(h) <= 3 * 86400 and 3 * 86400 - 5 <= r.ttl(s.index_name(D1)) <= 3 * 86400
        assert r.smembers(s.index_name(D1)) == {h}
        assert r.hgetall(h) == {"day": "2026-12-03", "key": "alice", "model": "m1", "team": "t", "requests": "1",
                                "prompt_tokens": "1", "completion_tokens": "1", "errors": "0", "latency_s": "0"}
        r.config_resetstat()
        assert [x.key for x in await s.query(start=D1, end=D2)] == ["alice"]
        stats = r.info("commandstats")
        assert not any(c in stats for c in ("cmdstat_keys", "cmdstat_scan")) and "cmdstat_zrangebyscore" in stats
        # a write 4 days later trims D1 from the days set (older than ttl_days)
        await s.write(Batch("w", 2, [Aggregate(D1 + timedelta(days=4), "alice", "m1", "t", 1, 1, 1, 0, 0.0)]))
        assert r.zrange(s.days_name, 0, -1) == [(D1 + timedelta(days=4)).isoformat()]
        await s.close()
    asyncio.run(go())


def test_two_processes_into_one_redis_exact_sums(redis_server: RedisServer, spawn: Spawner) -> None:
    concurrent_writers(spawn, redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}:")


def test_redis_outage_keeps_usage_and_recovers(spawn: Spawner, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(spawn, free_port())
    server.start()

    async def go() -> None:
        rec = UsageRecorder(store(server, timeout=0.5), flush_interval=0.05, clock=lambda: at(D1))
        await rec.start()
        rec.record("alice", "m1", prompt_tokens=1)
        assert await rec.flush()
        server.kill()
        for i in range(100):
            rec.record("alice", "m1", prompt_tokens=2, completion_tokens=1, latency=0.5)
            rec.record(f"user{i % 7}", "m2", prompt_tokens=3, status=429)
            await asyncio.sleep(0.005)
        # the failed batch is kept as it was (retried whole), newer records aggregate beside it
        assert rec.stats.outage and rec.stats.failures >= 3 and 8 <= rec.pending <= 16
        server.start()                                   # same port, empty (no persistence)
        deadline = time.monotonic() + 15
        while rec.stats.outage or rec.pending:
            assert time.monotonic() < deadline, rec.stats
            await asyncio.sleep(0.05)
        rows = await rec.query()
        assert [(r.key, r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.errors) for r in rows] == \
            [("alice", "m1", 100, 200, 100, 0)] + [(f"user{i}", "m2", n, 3 * n, 0, n)
                                                   for i, n in enumerate([15, 15, 14, 14, 14, 14, 14])]
        assert rows[0] == UsageRow(D1, "alice", "m1", None, 100, 200, 100, 0, 50.0)
        await rec.close()

    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        asyncio.run(go())
    msgs = [r.getMessage() for r in caplog.records if r.name == "gateway.usage"]
    assert sum("failed" in m for m in msgs) == 1 and sum("is back" in m for m in msgs) == 1, msgs


def test_unreachable_at_start_does_not_fail_open() -> None:
    async def go() -> None:
        rec = UsageRecorder(RedisUsageStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2), flush_interval=3600)
        await rec.start()                                 # no connection yet: the gateway starts
        rec.record("alice", "m1")
        assert not await rec.flush() and rec.pending == 1
        await rec.close(timeout=0.3)
        assert rec.stats.lost_at_close == 1
    asyncio.run(go())


def test_a_restart_between_flushes_costs_no_failed_flush(spawn: Spawner) -> None:
    """The pooled connection went stale across a Redis restart: the write is retried at once on a new one."""
    server = RedisServer(spawn, free_port())
    server.start()

    async def go() -> None:
        rec = UsageRecorder(store(server), flush_interval=3600, clock=lambda: at(D1))
        await rec.start()
        rec.record("alice", "m1")
        assert await rec.flush()
        server.kill()
        server.start()
        rec.record("alice", "m1", prompt_tokens=7)
        assert await rec.flush() and rec.stats.failures == 0
        assert await rec.query() == [UsageRow(D1, "alice", "m1", None, 1, 7, 0, 0, 0.0)]
        await rec.close()
    asyncio.run(go())
