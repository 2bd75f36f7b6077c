"""Usage accounting cost (gateway/auth/usage*.py): what record() adds to a request, and what one flush costs.

    python3 bench/usage.py [--calls 1000000] [--rounds 20] [--redis-server /usr/bin/redis-server]

- record(): ns per call, on an existing aggregate (the common case: a key keeps using its model), rotating over
  1,000 aggregates, and creating a new one (first request of a key x model x day).
- flush of 1,000 distinct aggregates, SQLite (a new file: inserts; then the same rows again: upserts that add) and
  Redis (a redis-server started here on a free port, no persistence): median and p90 wall time of `await flush()`,
  and the CPU time the flush takes on the event loop's thread (what requests wait behind; the rest is in sqlite's
  worker thread or in redis-server). Wall times include waiting for a CPU on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.auth.usage import UsageRecorder, UsageStore  # noqa: E402
from gateway.auth.usage_sqlite import SQLiteUsageStore  # noqa: E402

KEYS = [f"user{i}" for i in range(100)]
MODELS = [f"model-{i}" for i in range(10)]   # 100 x 10 = 1,000 distinct aggregates per day


def bench_record(calls: int) -> dict[str, float]:
    async def go() -> dict[str, float]:
        rec = UsageRecorder(SQLiteUsageStore(":memory:"), batch_size=10**9, max_pending=10**9)
        out: dict[str, float] = {}
        t = time.perf_counter_ns()
        for _ in range(calls):
            rec.record("alice", "qwen", team="research", prompt_tokens=120, completion_tokens=80, status=200,
                       latency=0.25)
        out["record, same aggregate"] = (time.perf_counter_ns() - t) / calls
        pairs = [(k, m) for k in KEYS for m in MODELS]
        t = time.perf_counter_ns()
        for i in range(calls):
            k, m = pairs[i % 1000]
            rec.record(k, m, team="research", prompt_tokens=120, completion_tokens=80, status=200, latency=0.25)
        with_loop = time.perf_counter_ns() - t
        t = time.perf_counter_ns()
        for i in range(calls):          # the same loop without record(): its cost is not record()'s
            k, m = pairs[i % 1000]
        out["record, 1,000 aggregates in turn"] = (with_loop - (time.perf_counter_ns() - t)) / calls
        n = min(calls, 200_000)
        names = [f"new{i}" for i in range(n)]
        t = time.perf_counter_ns()
        for name in names:
            rec.record(name, "qwen", prompt_tokens=1)
        out["record, new aggregate"] = (time.perf_counter_ns() - t) / n
        return out
    return asyncio.run(go())


async def flush_rounds(store: UsageStore, rounds: int) -> dict[str, list[float]]:
    rec = UsageRecorder(store, flush_interval=3600, batch_size=10**9)
    await rec.start()
    walls: dict[str, list[float]] = {"new rows": [], "existing rows": []}
    held: list[float] = []
    for r in range(rounds):
        for kind in ("new rows", "existing rows"):
            for k in KEYS:
                for m in MODELS:
                    rec.record(f"{k}-{r}", m, team="t", prompt_tokens=100, completion_tokens=50, latency=0.5)
            t, cpu = time.perf_counter(), time.thread_time()
            assert await rec.flush()
            walls[kind].append(time.perf_counter() - t)
            held.append(time.thread_time() - cpu)   # CPU of the event loop's thread, not of sqlite's worker thread
    await rec.close()
    walls["loop CPU"] = held
    return walls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    a = p.parse_args()

    for name, ns in bench_record(a.calls).items():
        print(f"{name:40s} {ns:8.0f} ns/call")

    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite (WAL, file)"] = asyncio.run(flush_rounds(SQLiteUsageStore(Path(tmp) / "u.db"), a.rounds))
    if Path(a.redis_server).exists():
        from redis import Redis

        from gateway.auth.usage_redis import RedisUsageStore
        port = free_port()
        server = subprocess.Popen([a.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    Redis(port=port).ping()
                    break
                except Exception:
                    time.sleep(0.02)
            results["Redis (loopback)"] = asyncio.run(flush_rounds(
                RedisUsageStore(f"redis://127.0.0.1:{port}/0", prefix="bench:"), a.rounds))
        finally:
            server.terminate()
            server.wait()
    print(f"\nflush of 1,000 distinct aggregates, {a.rounds} rounds (ms: median / p90):")
    for store, walls in results.items():
        parts = []
        for kind, xs in walls.items():
            xs = sorted(xs)
            parts.append(f"{kind} {statistics.median(xs) * 1e3:6.2f} / {xs[int(len(xs) * 0.9) - 1] * 1e3:6.2f}")
        print(f"  {store:20s} " + "   ".join(parts))


if __name__ == "__main__":
    main()
