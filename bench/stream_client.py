"""Streaming measurement: time to first event and per-event delay, at the client.

python bench/stream_client.py URL STREAMS CONCURRENCY CHUNKS GAP_MS -> one JSON line.
Each event carries its upstream send time; delay = arrival - send (same host clock). A read that
carries more than one event counts as coalesced.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

import aiohttp
import uvloop

T_RE = re.compile(rb'"t":(\d+)')


async def one(session: aiohttp.ClientSession, url: str, chunks: int, gap: float, out: dict) -> None:
    body = {"model": "paced-model", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "bench_chunks": chunks, "bench_gap_ms": gap}
    t0 = time.time_ns()
    first = None
    async with session.post(url, json=body, headers={"Authorization": "Bearer sk-bench"}) as resp:
        async for data in resp.content.iter_any():
            now = time.time_ns()
            stamps = T_RE.findall(data)
            if first is None and stamps:
                first = now - t0
            if len(stamps) > 1:
                out["coalesced_reads"] += 1
            out["reads"] += 1
            for s in stamps:
                out["delays"].append(now - int(s))
    out["ttft"].append(first or 0)


async def main(url: str, streams: int, conc: int, chunks: int, gap: float) -> None:
    out: dict = {"delays": [], "ttft": [], "reads": 0, "coalesced_reads": 0}
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def guarded() -> None:
            async with sem:
                await one(s, url, chunks, gap, out)
        await asyncio.gather(*(guarded() for _ in range(streams)))

    def pct(xs: list[int], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * p))] / 1000 if xs else 0.0  # us

    print(json.dumps({"events": len(out["delays"]), "reads": out["reads"], "coalesced_reads": out["coalesced_reads"],
                      "delay_p50_us": pct(out["delays"], 0.50), "delay_p99_us": pct(out["delays"], 0.99),
                      "ttft_p50_us": pct(out["ttft"], 0.50), "ttft_p99_us": pct(out["ttft"], 0.99)}))


if __name__ == "__main__":
    a = sys.argv
    uvloop.run(main(a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5])))
