"""Streaming measurement: time to first event and per-event delay, at the client.

python bench/stream_client.py STREAMS CONCURRENCY CHUNKS GAP_MS URL [URL ...] -> one JSON line,
an object of figures per URL.

Each event carries its upstream send time; delay = arrival - send (same host clock). A read that
carries more than one event counts as coalesced. With several URLs the streams take turns (stream
i goes to URL i mod n), so every target is measured in the same minutes of the machine's life:
a burst of noise from the VM's neighbours lands on all of them instead of on whichever ran then.
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


def empty() -> dict:
    return {"delays": [], "ttft": [], "reads": 0, "coalesced_reads": 0}


async def one(session: aiohttp.ClientSession, url: str, chunks: int, gap: float, out: dict) -> None:
    body = {"model": "paced-model", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "bench_chunks": chunks, "bench_gap_ms": gap}
    t0 = time.time_ns()
    first = None
    async with session.post(url, json=body, headers={"Authorization": "Bearer sk-bench-0123456789abcdef"}) as resp:
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


def pct(xs: list[int], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] / 1000 if xs else 0.0  # us


async def main(streams: int, conc: int, chunks: int, gap: float, urls: list[str]) -> None:
    outs = {u: empty() for u in urls}
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def guarded(url: str) -> None:
            async with sem:
                await one(s, url, chunks, gap, outs[url])
        # Round-robin order; with concurrency 1 the semaphore runs them one after another.
        await asyncio.gather(*(guarded(urls[i % len(urls)]) for i in range(streams * len(urls))))
    print(json.dumps({u: {"events": len(o["delays"]), "reads": o["reads"], "coalesced_reads": o["coalesced_reads"],
                          "delay_p50_us": pct(o["delays"], 0.50), "delay_p99_us": pct(o["delays"], 0.99),
                          "ttft_p50_us": pct(o["ttft"], 0.50), "ttft_p99_us": pct(o["ttft"], 0.99)}
                      for u, o in outs.items()}))


if __name__ == "__main__":
    a = sys.argv
    uvloop.run(main(int(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5:]))
