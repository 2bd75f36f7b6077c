"""Latency of the limits engine: acquire + finish for one request (key + team, every limit set).

    python bench/limits.py [--n 20000] [--url redis://...]   (without --url it starts its own redis-server)

Reports p50/p99 per request for the memory store and for Redis on loopback (sequential: pure latency), the
throughput with 64 requests in flight, the round trips to Redis per request (the store's own count: its
calls travel in pipelines, a finish riding with the next acquire) and the commands the scripts ran.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from gateway.auth.limits import Limits, LimitStore, Subject  # noqa: E402
from gateway.auth.limits_memory import MemoryLimitStore  # noqa: E402
from gateway.auth.limits_redis import RedisLimitStore  # noqa: E402

BIG = 10**12
SUBJECTS = [Subject("key:bench", Limits(rpm=BIG, tpm=BIG, concurrency=BIG, tokens_per_day=BIG,
                                        tokens_per_month=BIG)),
            Subject("team:bench", Limits(rpm=BIG, tpm=BIG, concurrency=BIG))]


async def one(store: LimitStore, i: int) -> float:
    t = time.perf_counter()
    a = await store.acquire(SUBJECTS, 300, f"r{i}")
    assert a.allowed
    await store.finish(a, 120)
    return time.perf_counter() - t


async def measure(store: LimitStore, n: int) -> tuple[list[float], float]:
    for i in range(min(500, n)):  # warm-up: connections, scripts loaded
        await one(store, -i)
    lat = [await one(store, i) for i in range(n)]
    t = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def bounded(i: int) -> None:
        async with sem:
            await one(store, n + i)

    await asyncio.gather(*(bounded(i) for i in range(n)))
    return lat, n / (time.perf_counter() - t)


def report(name: str, lat: list[float], rate: float, extra: str = "") -> None:
    q = statistics.quantiles(lat, n=100)
    print(f"{name:7s} acquire+finish p50 {q[49] * 1e6:7.1f} us  p99 {q[98] * 1e6:7.1f} us  "
          f"64 in flight: {rate:8.0f} req/s{extra}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--url")
    args = ap.parse_args()
    lat, rate = await measure(MemoryLimitStore(), args.n)
    report("memory", lat, rate)
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
    try:
        sync = redis.Redis.from_url(url)
        store = RedisLimitStore(url, prefix="bench:")
        # the floor: one bare round trip (PING) through the same client library
        import redis.asyncio as aioredis

        bare = aioredis.Redis.from_url(url)
        for _ in range(500):
            await bare.ping()
        pings = []
        for _ in range(args.n):
            t = time.perf_counter()
            await bare.ping()
            pings.append(time.perf_counter() - t)
        q = statistics.quantiles(pings, n=100)
        print(f"floor   1 x PING         p50 {q[49] * 1e6:7.1f} us  p99 {q[98] * 1e6:7.1f} us")
        await bare.aclose()
        sync.config_resetstat()
        lat, rate = await measure(store, args.n)
        stats = sync.info("commandstats")
        requests = 2 * args.n + min(500, args.n)
        inner = sum(v["calls"] for k, v in stats.items() if not k.startswith(("cmdstat_eval", "cmdstat_script",
                                                                               "cmdstat_config", "cmdstat_info")))
        report("redis", lat, rate, f"  ({store.round_trips / requests:.2f} round trips, {store.calls / requests:.2f}"
                                   f" calls, {inner / requests:.0f} commands in scripts per request)")
        await store.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
