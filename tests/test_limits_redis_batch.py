"""Redis limits cost at most one round trip per request (gateway/auth/redis_batch.py), against a real
redis-server: a finish rides with the next acquire and reaches Redis before it, concurrent acquires share
round trips, a flushed script cache is reloaded, and a client that leaves mid-acquire gives its lease back."""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway.auth.limits import Limits, Subject
from gateway.auth.limits_redis import RedisLimitStore
from tests.test_limits_redis import run


def test_sequential_requests_cost_one_round_trip_each_and_a_release_precedes_the_next_acquire(
        redis_url: str, prefix: str) -> None:
    one = [Subject("key:alice", Limits(concurrency=1, tpm=10**6))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)
        for i in range(20):
            a = await s.acquire(one, 10, str(i))
            # concurrency 1: admitted only if the previous request's release, queued in the same
            # pipeline, ran first
            assert a.allowed, (i, a.limit_name)
            await s.finish(a, 3)
        # one to load the scripts, then one per request: 20 acquires, with 19 finishes riding along
        assert s.round_trips == 1 + 20 and s.calls == 39
        await s.flush()  # the last finish, alone
        assert s.round_trips == 1 + 21 and s.calls == 40
        with redis.Redis.from_url(redis_url) as r:
            assert r.zcard(prefix + "key:alice:c") == 0  # every lease released
            assert int(r.get(prefix + "key:alice:t")) == 20 * 3  # every reservation settled to its usage
        await s.close()

    run(go())


def test_a_lone_finish_goes_after_the_linger(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:bob", Limits(concurrency=5))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix, linger=0.05)
        a = await s.acquire(subj, 0, "1")
        await s.finish(a, 0)
        with redis.Redis.from_url(redis_url) as r:
            assert r.zcard(prefix + "key:bob:c") == 1  # not yet: it waits for an acquire to carry it
            await asyncio.sleep(0.2)
            assert r.zcard(prefix + "key:bob:c") == 0  # sent alone after the linger
        assert s.round_trips == 1 + 2  # the scripts' load, the acquire, the finish
        await s.close()

    run(go())


def test_concurrent_acquires_share_round_trips_and_stay_exact(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:carol", Limits(rpm=150, concurrency=1000))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)

        async def one(i: int) -> bool:
            a = await s.acquire(subj, 0, str(i))
            await asyncio.sleep(0.001)
            await s.finish(a, 0)
            return a.allowed

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(results) == 150  # exactly the rpm limit, however the calls were batched
        await s.flush()
        assert s.calls == 200 + 150  # every acquire, and a finish per admitted one (a refusal holds nothing)
        assert s.round_trips < 100  # most round trips carried several calls
        await s.close()

    run(go())


def test_a_flushed_script_cache_is_reloaded(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:dave", Limits(rpm=3))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)
        assert (await s.acquire(subj, 0, "1")).allowed
        with redis.Redis.from_url(redis_url) as r:
            r.script_flush()  # as after a Redis restart
        assert (await s.acquire(subj, 0, "2")).allowed
        assert (await s.acquire(subj, 0, "3")).allowed
        refused = await s.acquire(subj, 0, "4")
        assert (refused.allowed, refused.limit_name) == (False, "rpm")  # no call ran twice, none was lost
        assert s.failures == 0
        await s.close()

    run(go())


def test_a_client_gone_mid_acquire_gives_its_lease_back(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:erin", Limits(concurrency=1))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)
        task = asyncio.ensure_future(s.acquire(subj, 0, "gone"))
        await asyncio.sleep(0)  # queued (its script will run), then the client leaves
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # its reply came back: the lease it took is given back
        await s.flush()
        with redis.Redis.from_url(redis_url) as r:
            assert r.zcard(prefix + "key:erin:c") == 0
        assert (await s.acquire(subj, 0, "next")).allowed  # not refused for a lease TTL
        await s.close()

    run(go())


def test_close_sends_what_is_queued(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:frank", Limits(concurrency=2))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix, linger=10.0)
        a = await s.acquire(subj, 0, "1")
        await s.finish(a, 0)
        await s.close()  # well before the linger: sent now
        with redis.Redis.from_url(redis_url) as r:
            assert r.zcard(prefix + "key:frank:c") == 0

    run(go())
