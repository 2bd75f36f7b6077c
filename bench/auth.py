"""What keys and limits cost on the request path, in one run (issue 16 "Performance").

    python bench/auth.py [--seconds 3] [--rounds 10]

Same layout as bench/run.py (nginx upstream and wrk on core 0, the gateways on core 1; a redis-server
on core 0 for the Redis case). Four gateways, measured in turns (round-robin, `--rounds` times):
- no auth;
- keys only: one named key (a plaintext `key:`), usage recorded to SQLite (the default);
- keys + limits in memory: that key with rpm, tpm, concurrency and a daily quota, all far above the load;
- keys + limits in Redis: the same limits and usage in a redis-server (`state.redis`).
Prints a markdown table: throughput at 64 connections, the gateway's CPU time per request (from /proc) and
its median per-round ratio to "no auth" (the steadier figure: throughput on a saturated core is its
inverse), p50 latency at 1 connection, and the direct (no gateway) figures for scale.

`--copies N` runs N processes of each configuration (all taking turns): processes of one build differ by
±5-20% on this kind of VM (memory layout), which more rounds of one process do not average away. Each
round's figure of a configuration is then the mean over its copies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

KEY = "sk-bench-0123456789abcdef"
BASE_PORT = 18940  # the gateways: 18940 on, four per copy
TICK = os.sysconf("SC_CLK_TCK")
REDIS_PORT = 18930
LIMITS = {"rpm": 10**9, "tpm": 10**12, "concurrency": 10**6, "tokens_per_day": 10**15}


def config(name: str, copy: int = 0) -> dict[str, Any]:
    upstream = {"name": "nginx", "kind": "openai", "url": f"http://127.0.0.1:{bench.PORTS['nginx']}"}
    cfg: dict[str, Any] = {"server": {"log_level": "warning"}, "backends": [upstream],
                           "state": {"sqlite": str(bench.WORK / f"usage-{name}-{copy}.db")}}
    if name != "no auth":
        key: dict[str, Any] = {"name": "bench", "key": KEY}
        if name != "keys only":
            key["limits"] = LIMITS
        cfg["auth"] = {"keys": [key]}
    if name == "keys + limits (Redis)":
        cfg["state"]["redis"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
    return cfg


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


NAMES = ["no auth", "keys only", "keys + limits (memory)", "keys + limits (Redis)"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--copies", type=int, default=1, help="processes per configuration")
    args = ap.parse_args()
    print(table(*measure(args.rounds, args.seconds, args.copies), args.rounds, args.seconds, args.copies))


def measure(rounds: int, seconds: float, copies: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Per configuration, each round's throughput, CPU per request and p50; and the direct figures."""
    bench.WORK.mkdir(exist_ok=True)
    procs = [bench.start_nginx_upstream(),
             bench.spawn(["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no"],
                         bench.LOAD_CORE, "redis")]
    rows: dict[str, dict[str, list[float]]] = {n: {"rps": [], "cpu": [], "p50": []} for n in NAMES}
    path = "/v1/chat/completions"
    gateways = {}
    try:
        bench.wait_ready(f"http://127.0.0.1:{bench.PORTS['nginx']}/v1/models", procs[0])
        direct = bench.measure(f"http://127.0.0.1:{bench.PORTS['nginx']}{path}", seconds)
        # All four run at once on the proxy core (an idle one costs nothing) and take turns under load, many
        # short turns: the machine's drifts hit all alike, and CPU time per request (what throughput on a
        # saturated core is the inverse of) is read from /proc, steadier than throughput itself.
        for c in range(copies):
            for i, name in enumerate(NAMES):
                n = c * len(NAMES) + i
                cfg = bench.WORK / f"auth-bench-{n}.yaml"
                cfg.write_text(json.dumps(config(name, c)))
                gateways[name, c] = (BASE_PORT + n, bench.spawn(
                    [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(BASE_PORT + n)],
                    bench.PROXY_CORE, f"gateway-auth-{n}"))
        for port, proc in gateways.values():
            bench.wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
            bench.wrk(f"http://127.0.0.1:{port}{path}", 64, 2)  # warm-up
        order = list(gateways.items())
        for r in range(rounds):
            # Each round starts one gateway later: a fixed order made the later ones look dearer (the gateway
            # measured first after another's turn ran slower, whatever its config: measured with four copies
            # of one config, 110 -> 132 µs/request by position, flat once rotated).
            k = r % len(order)
            turn: dict[str, dict[str, list[float]]] = {n: {"rps": [], "cpu": [], "p50": []} for n in NAMES}
            for (name, _copy), (port, proc) in order[k:] + order[:k]:
                url = f"http://127.0.0.1:{port}{path}"
                c0 = cpu_seconds(proc.pid)
                m = bench.wrk(url, 64, seconds)
                c1 = cpu_seconds(proc.pid)
                one = bench.wrk(url, 1, max(1.0, seconds / 3))
                if m["non2xx"] or one["non2xx"]:
                    raise SystemExit(f"{name}: non-2xx answers {m} {one}")
                turn[name]["rps"].append(m["rps"])
                turn[name]["cpu"].append((c1 - c0) / m["requests"] * 1e6)
                turn[name]["p50"].append(one["p50"])
            for name in NAMES:
                for field, values in turn[name].items():
                    rows[name][field].append(statistics.fmean(values))
    finally:
        for _, proc in gateways.values():
            bench.stop(proc)
        for p in procs:
            bench.stop(p)
    return rows, direct


def table(rows: dict[str, dict[str, list[float]]], direct: dict[str, Any], rounds: int, seconds: float,
          copies: int) -> str:
    base = rows["no auth"]
    out = [f"| gateway | req/s (c=64) | CPU µs/request | vs no auth (CPU, paired) | vs no auth (req/s) | "
           f"p50 µs (c=1) | added vs no auth |  ({rounds} rounds x {seconds:g} s, interleaved, "
           f"{copies} process(es) each; direct: {direct['c64']['rps']:.0f} req/s, p50 {direct['c1']['p50']} µs)",
           "|---|---|---|---|---|---|---|"]
    for name in NAMES:
        r = rows[name]
        paired = statistics.median(b / x for b, x in zip(base["cpu"], r["cpu"]))  # <1: costs more than no auth
        rps, p50 = statistics.median(r["rps"]), statistics.median(r["p50"])
        out.append(f"| {name} | {rps:.0f} | {statistics.median(r['cpu']):.1f} | {paired:.3f} | "
                   f"{rps / statistics.median(base['rps']):.3f} | {p50:.0f} | "
                   f"{p50 - statistics.median(base['p50']):+.0f} µs |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
