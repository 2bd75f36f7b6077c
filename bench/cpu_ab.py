"""CPU time per non-stream request, this checkout against another, interleaved in one run.

    python bench/cpu_ab.py DIR [--rounds 6] [--seconds 5] [--conc 16]

Throughput on a 2-core machine moves with whatever else runs; the gateway's own CPU time per
request (utime + stime from /proc, divided by the requests wrk completed) moves much less. The two
gateways take turns on the proxy core (A, B, A, B, ...) against the same nginx upstream, so slow
drifts of the machine hit both alike. Prints one JSON line per round and a summary: medians per side
and the median of the per-round ratios (CPU per request, wrk's p50 latency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (spawn, wrk, wait_ready, the nginx and gateway configs)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="the other checkout (e.g. git worktree add /tmp/prev HEAD~1)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conc", type=int, default=16)
    args = ap.parse_args()
    nginx = bench.start_nginx_upstream()
    procs = {}
    try:
        bench.wait_ready(f"http://127.0.0.1:{bench.PORTS['nginx']}/v1/models", nginx)
        cfg = str(bench.gateway_config())
        for side, port, cwd in (("this", bench.PORTS["gateway"], bench.ROOT),
                                ("other", bench.PORTS["gateway-before"], Path(args.other))):
            procs[side] = (bench.spawn([sys.executable, "-m", "gateway", "serve", "--config", cfg, "--port", str(port)],
                                       bench.PROXY_CORE, f"cpu-ab-{side}", cwd=cwd), port)
        for proc, port in procs.values():
            bench.wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            bench.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.conc, 2)  # warm-up
        per: dict[str, list[float]] = {side: [] for side in procs}
        p50: dict[str, list[float]] = {side: [] for side in procs}
        for i in range(args.rounds):
            for side in (("this", "other") if i % 2 == 0 else ("other", "this")):
                proc, port = procs[side]
                t0 = cpu_seconds(proc.pid)
                r = bench.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.conc, args.seconds)
                us = (cpu_seconds(proc.pid) - t0) / max(r["requests"], 1) * 1e6
                per[side].append(us)
                p50[side].append(r["p50"])
                print(json.dumps({"round": i, "side": side, "cpu_us_per_request": round(us, 1),
                                  "rps": round(r["rps"]), "p50_us": r["p50"], "non2xx": r["non2xx"]}), flush=True)
        # Paired by round: each round's two sides ran back to back, so their ratio cancels the
        # machine's slow drift (this VM's speed varies by 2x over minutes).
        med = {side: statistics.median(v) for side, v in per.items()}
        paired = statistics.median(a / b for a, b in zip(per["this"], per["other"]))
        paired_p50 = statistics.median(a / b for a, b in zip(p50["this"], p50["other"]))
        print(json.dumps({"median_cpu_us_per_request": {k: round(v, 1) for k, v in med.items()},
                          "median_p50_us": {k: statistics.median(v) for k, v in p50.items()},
                          "paired_cpu_ratio_this_over_other": round(paired, 3),
                          "paired_p50_ratio_this_over_other": round(paired_p50, 3)}))
    finally:
        for proc, _ in procs.values():
            bench.stop(proc)
        bench.stop(nginx)


if __name__ == "__main__":
    main()
