"""The limits engine shared through a real redis-server (gateway/auth/limits_redis.py), hammered by separate
Python processes (this module run as a script is the worker), plus an outage: Redis killed and restarted."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gateway.auth.limits import Admission, Limits, Subject
from gateway.auth.limits_memory import MemoryLimitStore
from gateway.auth.limits_redis import CALENDAR, RedisLimitStore

ROOT = Path(__file__).resolve().parent.parent


def start_redis(port: int, log: Path, password: str | None = None) -> subprocess.Popen[bytes]:
    auth = ["--requirepass", password] if password else []
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", *auth], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=port, password=password, socket_timeout=0.5) as r:
                if r.ping():
                    return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise TimeoutError(f"redis-server did not answer on {port}: {log.read_text()}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(10)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def workers(n: int, cfg: dict) -> list[dict]:
    """Run `n` worker processes that start together; their JSON results."""
    cfg = {**cfg, "start_at": time.time() + 1.5}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.test_limits_redis", json.dumps({**cfg, "seed": i})],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr.decode()
        out.append(json.loads(stdout))
    return out


def test_rpm_is_exact_across_two_processes(redis_url: str, prefix: str) -> None:
    results = workers(2, {"mode": "rpm", "url": redis_url, "prefix": prefix, "rpm": 25, "attempts": 40})
    assert sum(r["allowed"] for r in results) == 25  # 80 concurrent attempts, one limit: exactly 25 pass
    assert {name for r in results for name in r["refused"]} == {"rpm"}


def test_concurrency_is_never_exceeded_across_two_processes(redis_url: str, prefix: str) -> None:
    results = workers(2, {"mode": "concurrency", "url": redis_url, "prefix": prefix, "k": 3, "tasks": 10,
                          "rounds": 5})
    assert sum(r["done"] for r in results) == 2 * 10 * 5
    assert max(r["max_inflight"] for r in results) == 3  # reached, never exceeded


def test_a_killed_process_frees_its_leases_after_the_ttl(redis_url: str, prefix: str) -> None:
    cfg = {"mode": "hold", "url": redis_url, "prefix": prefix, "k": 2, "ttl": 2.0, "start_at": 0}
    holder = subprocess.Popen([sys.executable, "-m", "tests.test_limits_redis", json.dumps(cfg)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        held_at = time.monotonic()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)
    subj = [Subject("key:alice", Limits(concurrency=2))]

    async def probe() -> float:
        s = RedisLimitStore(redis_url, prefix=prefix, lease_ttl=2.0)
        first = await s.acquire(subj, 0, "probe")
        assert (first.allowed, first.limit_name) == (False, "concurrency")
        while not (await s.acquire(subj, 0, "probe")).allowed:
            await asyncio.sleep(0.05)
        await s.close()
        return time.monotonic() - held_at

    freed_after = run(probe())
    assert 1.0 < freed_after < 2.6  # the slots come back at the 2 s TTL, not before, not never


@pytest.mark.parametrize("excess", [0, 7])
def test_token_quota_across_two_processes_stays_within_the_bound(redis_url: str, prefix: str,
                                                                 excess: int) -> None:
    """Q=1000, estimate 40, 2 x 30 requests at once, at most 4 in flight (a concurrency limit of the key).
    Usage <= estimate: the quota holds exactly. Usage = estimate + 7: at most Q + 4 x 7 (docstring bound)."""
    q, est, k = 1000, 40, 4
    results = workers(2, {"mode": "quota", "url": redis_url, "prefix": prefix, "q": q, "est": est, "k": k,
                          "excess": excess, "tasks": 30})
    used = [u for r in results for u in r["used"]]
    total = sum(used)
    assert total <= q + k * excess
    assert sum(r["quota_refusals"] for r in results) > 0
    with redis.Redis.from_url(redis_url) as r:
        counter = int(r.get(f"{prefix}key:alice:q:d:{int(time.time() // 86400)}") or 0)
    assert counter == total  # every reservation was replaced by its real usage
    if excess == 0:
        assert total > q - 5 * est  # refusals were needed: the quota was spent, not refused early


def test_key_and_team_are_all_or_nothing(redis_url: str, prefix: str) -> None:
    alice = Subject("key:alice", Limits(rpm=100, tokens_per_day=1000))
    team = Subject("team:research", Limits(rpm=2))

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)
        assert (await s.acquire([alice, team], 100, "1")).allowed
        assert (await s.acquire([alice, team], 100, "2")).allowed
        refused = await s.acquire([alice, team], 100, "3")
        assert (refused.allowed, refused.limit_name, refused.subject_id) == (False, "rpm", "team:research")
        alone = await s.acquire([alice], 800, "4")  # 200 of 1000 tokens used, 2 of 100 requests: not 300 and 3
        assert alone.allowed and alone.requests is not None and alone.requests.remaining == 100 - 3
        assert (await s.acquire([alice], 1, "5")).limit_name == "tokens_per_day"
        await s.close()

    run(go())


def test_headers_count_down(redis_url: str, prefix: str) -> None:
    k = Subject("key:alice", Limits(rpm=3, tpm=100))
    t = Subject("team:research", Limits(rpm=50, tpm=40))

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)
        a = await s.acquire([k, t], 10, "1")
        assert dict(a.headers()) == {
            b"x-ratelimit-limit-requests": b"3", b"x-ratelimit-remaining-requests": b"2",
            b"x-ratelimit-reset-requests": b"1m0s",
            b"x-ratelimit-limit-tokens": b"40", b"x-ratelimit-remaining-tokens": b"30",
            b"x-ratelimit-reset-tokens": b"1m0s"}
        await s.finish(a, 4)
        h = dict((await s.acquire([k, t], 10, "2")).headers())
        assert (h[b"x-ratelimit-remaining-requests"], h[b"x-ratelimit-remaining-tokens"]) == (b"1", b"26")
        await s.acquire([k, t], 10, "3")
        refused = await s.acquire([k, t], 10, "4")
        h = dict(refused.headers())
        assert (refused.limit_name, refused.subject_id, h[b"x-ratelimit-remaining-requests"]) == (
            "rpm", "key:alice", b"0")
        assert 59 < refused.retry_after <= 60 and h[b"retry-after"] == b"60"
        too_big = await s.acquire([t], 41, "5")
        assert (too_big.limit_name, too_big.exceeds_limit) == ("tpm", True)
        await s.close()

    run(go())


def test_the_window_slides_rather_than_resets(redis_url: str, prefix: str) -> None:
    """2 s window: 4 admitted 0.3 s before a 2 s boundary of server time are still counted after it."""
    subj = [Subject("key:alice", Limits(rpm=4))]
    with redis.Redis.from_url(redis_url) as r:
        sec, usec = r.time()
    server_offset = sec + usec / 1e6 - time.time()

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix, window=2.0)
        while (time.time() + server_offset) % 2 < 1.6 or (time.time() + server_offset) % 2 > 1.7:
            await asyncio.sleep(0.005)
        start = time.monotonic()
        assert all([(await s.acquire(subj, 0, str(i))).allowed for i in range(4)])
        refused = await s.acquire(subj, 0, "x")
        assert refused.limit_name == "rpm" and 1.8 < refused.retry_after <= 2.0
        while not (await s.acquire(subj, 0, "y")).allowed:
            await asyncio.sleep(0.01)
        assert time.monotonic() - start > 1.9  # a fixed window would have let it through ~0.3 s in
        await s.close()

    run(go())


def test_lease_refresh_keeps_a_long_request_alive(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:alice", Limits(concurrency=1))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix, lease_ttl=1.0)
        a = await s.acquire(subj, 0, "long")
        for _ in range(3):
            await asyncio.sleep(0.5)
            assert await s.refresh(a)
        assert not (await s.acquire(subj, 0, "other")).allowed  # 1.5 s > TTL, still held
        await asyncio.sleep(1.1)
        assert not await s.refresh(a)  # expired: not revived
        b = await s.acquire(subj, 0, "other")
        assert b.allowed
        await s.release(b)
        assert (await s.acquire(subj, 0, "third")).allowed
        await s.close()

    run(go())


def test_the_lua_calendar_matches_utc(redis_url: str) -> None:
    rng = random.Random(7)
    days = [0, 59, 365, 10956, 11016, 11017, 20789, 20819, 47482] + [rng.randrange(0, 60000) for _ in range(200)]
    with redis.Redis.from_url(redis_url) as r:
        got = r.eval(CALENDAR + """
local out = {}
for i, d in ipairs(ARGV) do
  local y, m = civil(tonumber(d))
  out[#out+1] = y * 12 + m - 1
  out[#out+1] = days_from_civil(y, m, 1)
end
return out""", 0, *days)
    for i, d in enumerate(days):
        date = datetime.fromtimestamp(d * 86400, UTC)
        first = datetime(date.year, date.month, 1, tzinfo=UTC).timestamp() // 86400
        assert (got[2 * i], got[2 * i + 1]) == (date.year * 12 + date.month - 1, first), d


def test_every_key_expires(redis_url: str, prefix: str) -> None:
    subj = [Subject("key:alice", Limits(rpm=10, tpm=1000, concurrency=2, tokens_per_day=10**6,
                                        tokens_per_month=10**7)), Subject("team:t", Limits(rpm=10))]

    async def go() -> None:
        s = RedisLimitStore(redis_url, prefix=prefix)
        for i in range(3):
            a = await s.acquire(subj, 50, str(i))
            await s.finish(a, 20)
        await s.close()

    run(go())
    with redis.Redis.from_url(redis_url) as r:
        ttls = {k.decode(): r.pttl(k) for k in r.scan_iter(prefix + "*")}
    assert len(ttls) >= 6
    assert all(t > 0 for t in ttls.values()), ttls
    day = int(time.time() // 86400)
    # a day counter lives to two days after its UTC day ends (a late settle still lands), not forever
    assert ttls[f"{prefix}key:alice:q:d:{day}"] == pytest.approx(((day + 3) * 86400 - time.time()) * 1000, abs=2000)
    assert 0 < ttls[f"{prefix}key:alice:w"] <= 61_000 and 0 < ttls[f"{prefix}key:alice:t"] <= 61_000


def _random_limits(rng: random.Random) -> Limits:
    def maybe(lo: int, hi: int) -> int | None:
        return rng.randint(lo, hi) if rng.random() < 0.6 else None

    return Limits(rpm=maybe(1, 8), tpm=maybe(20, 200), concurrency=maybe(1, 4), tokens_per_day=maybe(50, 400),
                  tokens_per_month=maybe(100, 600))


def test_redis_decides_exactly_like_the_memory_store(redis_url: str, prefix: str) -> None:
    """Random acquire/settle/release/finish sequences for a key and a team, played on both stores: the same
    admissions, the same refusing limit and subject, the same remaining counts (within one 60 s window)."""

    async def go() -> int:
        red = RedisLimitStore(redis_url, prefix=prefix)
        compared = 0
        for seed in range(25):
            rng = random.Random(seed)
            subjects = [Subject(f"key:k{seed}", _random_limits(rng)), Subject(f"team:t{seed}", _random_limits(rng))]
            mem = MemoryLimitStore()
            live: list[tuple[Admission, Admission]] = []
            for step in range(40):
                op = rng.random()
                if op < 0.6 or not live:
                    est = rng.randint(0, 60)
                    a, b = mem.acquire_now(subjects, est, f"{step}"), await red.acquire(subjects, est, f"{step}")
                    assert (a.allowed, a.limit_name, a.subject_id, a.exceeds_limit) == (
                        b.allowed, b.limit_name, b.subject_id, b.exceeds_limit), (seed, step)
                    assert [h for h in a.headers() if b"remaining" in h[0]] == [
                        h for h in b.headers() if b"remaining" in h[0]], (seed, step)
                    compared += 1
                    if a.allowed:
                        live.append((a, b))
                    continue
                a, b = live.pop(rng.randrange(len(live)))
                used = rng.randint(0, 80)
                if op < 0.85:
                    await mem.finish(a, used)
                    await red.finish(b, used)
                elif op < 0.9:  # settled, lease kept to the end
                    await mem.settle(a, used)
                    await red.settle(b, used)
                else:  # released without a settle: the estimate stays charged
                    await mem.release(a)
                    await red.release(b)
        await red.close()
        return compared

    assert run(go()) > 500


def test_redis_outage_fail_open_and_closed_then_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.procs import free_port

    port, password = free_port(), "s3cret-redis-pw"
    url = f"redis://:{password}@127.0.0.1:{port}/0"  # the password must not reach a log line
    proc = start_redis(port, tmp_path / "redis.log", password)
    subj = [Subject("key:alice", Limits(rpm=2, concurrency=5))]
    seen: list[BaseException] = []

    async def go() -> None:
        nonlocal proc
        opened = RedisLimitStore(url, fail_mode="open", prefix="o:", timeout=0.3, on_failure=seen.append)
        closed = RedisLimitStore(url, fail_mode="closed", prefix="c:", timeout=0.3)
        before = await opened.acquire(subj, 0, "1")
        assert before.allowed and not before.degraded and (await closed.acquire(subj, 0, "1")).allowed
        stop(proc, signal.SIGKILL)
        t0 = time.monotonic()
        for i in range(3):
            a = await opened.acquire(subj, 0, f"o{i}")
            assert a.allowed and a.degraded and not a.headers()
            await opened.finish(a, 10)  # nothing to do, no error
            b = await closed.acquire(subj, 0, f"c{i}")
            assert (b.allowed, b.limit_name) == (False, "unavailable") and dict(b.headers())[b"retry-after"] == b"1"
        await opened.finish(before, 5)  # its release is lost: counted, not raised
        await opened.flush()  # finishes are sent lazily (with the next acquire, or after 10 ms)
        assert time.monotonic() - t0 < 5
        assert opened.failures == 4 and closed.failures == 3 and len(seen) == 4
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "gateway.auth.limits"]
        assert len(warnings) == 2  # once per store per outage
        proc = start_redis(port, tmp_path / "redis.log", password)  # back on the same port, empty
        for store in (opened, closed):
            assert (await store.acquire(subj, 0, "a")).allowed
            assert (await store.acquire(subj, 0, "b")).allowed
            third = await store.acquire(subj, 0, "c")
            assert (third.allowed, third.limit_name, third.degraded) == (False, "rpm", False)
        assert opened.failures == 4
        assert sum("Redis is back" in r.getMessage() for r in caplog.records) == 2
        await opened.close()
        await closed.close()

    caplog.set_level(logging.INFO, logger="gateway.auth.limits")
    try:
        run(go())
    finally:
        stop(proc)
    assert password not in caplog.text and not any(password in repr(e) for e in seen)


def test_a_lease_taken_by_a_timed_out_acquire_is_released_when_redis_answers(tmp_path: Path) -> None:
    """Redis stalls (SIGSTOP): the acquire times out and fails open, but its script runs when Redis resumes.
    That lease has no owner; the store releases it on its first call that succeeds, not at the 300 s TTL."""
    from tests.procs import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = start_redis(port, tmp_path / "redis.log")
    subj = [Subject("key:bob", Limits(concurrency=2))]

    async def go() -> None:
        s = RedisLimitStore(url, prefix="s:", timeout=0.3)
        await s.acquire([], 0, "warm-up")
        proc.send_signal(signal.SIGSTOP)
        try:
            stalled = await s.acquire(subj, 0, "stalled")
            assert stalled.allowed and stalled.degraded
        finally:
            proc.send_signal(signal.SIGCONT)
        with redis.Redis.from_url(url) as r:
            assert r.zcard("s:key:bob:c") == 1  # the stalled script ran after all: an orphan lease
            after = await s.acquire(subj, 0, "after")
            assert after.allowed and not after.degraded
            await asyncio.sleep(0.2)
            assert r.zcard("s:key:bob:c") == 1  # only `after`'s
            assert (await s.acquire(subj, 0, "second")).allowed  # the orphan's slot is free again
        await s.close()

    try:
        run(go())
    finally:
        stop(proc)


# -- the worker: `python -m tests.test_limits_redis '<json>'` -------------------------------------------
async def _worker(cfg: dict) -> dict:
    import redis.asyncio as aioredis

    rng = random.Random(cfg.get("seed", 0))
    store = RedisLimitStore(cfg["url"], prefix=cfg["prefix"], lease_ttl=cfg.get("ttl", 300.0), timeout=5.0)
    side = aioredis.Redis.from_url(cfg["url"])
    await side.ping()
    await store.acquire([], 0, "warm-up")  # connections and the script loaded before the start
    await asyncio.sleep(max(0.0, cfg["start_at"] - time.time()))
    mode, out = cfg["mode"], {}
    if mode == "rpm":
        subj = [Subject("key:alice", Limits(rpm=cfg["rpm"]))]
        got = await asyncio.gather(*(store.acquire(subj, 0, f"r{i}") for i in range(cfg["attempts"])))
        out = {"allowed": sum(a.allowed for a in got), "refused": sorted({a.limit_name for a in got if not a.allowed})}
    elif mode == "concurrency":
        subj = [Subject("key:alice", Limits(concurrency=cfg["k"]))]
        peak, done = 0, 0

        async def task() -> None:
            nonlocal peak, done
            for _ in range(cfg["rounds"]):
                while not (a := await store.acquire(subj, 0, "c")).allowed:
                    await asyncio.sleep(0.002)
                peak = max(peak, await side.incr(cfg["prefix"] + "inflight"))  # counted inside the lease only
                await asyncio.sleep(rng.uniform(0.002, 0.01))
                await side.decr(cfg["prefix"] + "inflight")
                await store.finish(a, 0)
                done += 1

        await asyncio.gather(*(task() for _ in range(cfg["tasks"])))
        out = {"max_inflight": peak, "done": done}
    elif mode == "hold":
        subj = [Subject("key:alice", Limits(concurrency=cfg["k"]))]
        assert all([(await store.acquire(subj, 0, f"h{i}")).allowed for i in range(cfg["k"])])
        sys.stdout.write("held\n")
        sys.stdout.flush()
        await asyncio.sleep(3600)  # SIGKILLed here, never releasing
    elif mode == "quota":
        subj = [Subject("key:alice", Limits(tokens_per_day=cfg["q"], concurrency=cfg["k"]))]
        used, refusals = [], 0

        async def one(i: int) -> None:
            nonlocal refusals
            while True:
                a = await store.acquire(subj, cfg["est"], f"q{i}")
                if a.allowed:
                    break
                if a.limit_name == "tokens_per_day":
                    refusals += 1
                    return
                await asyncio.sleep(0.002)
            await asyncio.sleep(rng.uniform(0.001, 0.01))
            u = cfg["est"] + cfg["excess"] if cfg["excess"] else rng.randint(cfg["est"] // 4, cfg["est"])
            await store.finish(a, u)
            used.append(u)

        await asyncio.gather(*(one(i) for i in range(cfg["tasks"])))
        out = {"used": used, "quota_refusals": refusals}
    await store.close()
    await side.aclose()
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(_worker(json.loads(sys.argv[1])))) + "\n")
    os._exit(0)
