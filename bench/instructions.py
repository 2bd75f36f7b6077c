"""What keys and limits cost, counted in instructions: deterministic where bench/auth.py's time is not.

    python bench/instructions.py [--requests 3000] [--conc 1] [--compare DIR]

The same four gateways as bench/auth.py (no auth, keys only, keys + limits in memory, keys + limits in Redis),
each run under valgrind's callgrind against the same nginx upstream. Counting starts after a warm-up and stops
after exactly `--requests` requests (a client with `--conc` connections), so each figure is the gateway's
user-space instructions per request: the same on every run within ~1% (the event loop's batching varies a
little with timing), where CPU time differs by 5-20% between processes of one build on this kind of VM. It does
not count the kernel's share (sockets), nor cache misses; it shows what the gateway's own code costs.

Made quiet for counting: health probes far apart and usage written every 1000 s (`state.usage_flush_interval`),
since callgrind runs the gateway ~50x slower and a once-a-second task would be charged to 50x fewer requests.
`--compare DIR` also counts another checkout's gateways (e.g. `git worktree add /tmp/prev HEAD~1`).
Needs valgrind (apt-get installs it when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import auth  # noqa: E402  (the four configurations)
import run as bench  # noqa: E402  (nginx, spawn, wait_ready)

BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Hello, who are you?"}],"max_tokens":16}'
PORT = 18960


async def load(url: str, n: int, conc: int) -> None:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + auth.KEY}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conc)) as client:
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                r = await client.post(url, content=BODY, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"{url}: {r.status_code} {r.text[:200]}")
        await asyncio.gather(*(one() for _ in range(n)))


def count(name: str, tree: Path, n: int, requests: int, conc: int) -> int:
    """Instructions per request of one configuration's gateway from checkout `tree`."""
    cfg = auth.config(name, 50 + n)
    cfg["health"] = {"interval": 10**6}
    if "usage_flush_interval" in (tree / "gateway" / "settings_team.py").read_text():
        cfg["state"]["usage_flush_interval"] = 1000
    elif name != "no auth":
        print(f"note: {tree} has no state.usage_flush_interval: its usage writes (1/s) are counted too", flush=True)
    path = bench.WORK / f"instructions-{n}.yaml"
    path.write_text(json.dumps(cfg))
    out = bench.WORK / f"callgrind-{n}.out"
    for old in bench.WORK.glob(out.name + "*"):
        old.unlink()
    port = PORT + n
    proc = bench.spawn(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                        sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
                       bench.PROXY_CORE, f"instructions-{n}", cwd=tree)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        bench.wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout=300)
        asyncio.run(load(url, 300, conc))  # warm-up: pools, caches, the first of everything
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(load(url, requests, conc))
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)  # -> out.1
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        bench.stop(proc)
    dump = Path(f"{out}.1")
    total = next(int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:"))
    return round(total / requests)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--conc", type=int, default=1)
    ap.add_argument("--compare", type=Path, help="another checkout, counted the same way")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    bench.WORK.mkdir(exist_ok=True)
    trees = {"this checkout": bench.ROOT, **({f"before ({args.compare})": args.compare} if args.compare else {})}
    procs = [bench.start_nginx_upstream(),
             bench.spawn(["redis-server", "--port", str(auth.REDIS_PORT), "--save", "", "--appendonly", "no"],
                         bench.LOAD_CORE, "redis")]
    names = ["no auth", "keys only", "keys + limits (memory)", "keys + limits (Redis)"]
    got: dict[str, dict[str, int]] = {}
    try:
        bench.wait_ready(f"http://127.0.0.1:{bench.PORTS['nginx']}/v1/models", procs[0])
        for t, (label, tree) in enumerate(trees.items()):
            got[label] = {name: count(name, tree, t * len(names) + i, args.requests, args.conc)
                          for i, name in enumerate(names)}
    finally:
        for p in procs:
            bench.stop(p)
    print(f"| gateway | instructions / request | over no auth | vs no auth |  ({args.requests} requests, "
          f"{args.conc} connection(s), callgrind)")
    print("|---|---|---|---|")
    for label, rows in got.items():
        base = rows["no auth"]
        for name, ir in rows.items():
            who = name if len(got) == 1 else f"{name}, {label}"
            print(f"| {who} | {ir:,} | {ir - base:+,} | {base / ir:.3f} |")


if __name__ == "__main__":
    main()
