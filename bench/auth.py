"""What keys and limits cost on the request path, in one run (issue 16 "Performance").

    python bench/auth.py [--seconds 10] [--rounds 2]

Same layout as bench/run.py (nginx upstream and wrk on core 0, the gateway alone on core 1; a redis-server
on core 0 for the Redis case). Four gateways, measured in turns (round-robin, `--rounds` times):
- no auth;
- keys only: one named key (a plaintext `key:`), usage recorded to SQLite (the default);
- keys + limits in memory: that key with rpm, tpm, concurrency and a daily quota, all far above the load;
- keys + limits in Redis: the same limits and usage in a redis-server (`state.redis`).
Prints a markdown table: throughput at 64 connections and p50 latency at 1 connection, each as a ratio to
"no auth", and the direct (no gateway) figures for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402

KEY = "sk-bench-0123456789abcdef"
REDIS_PORT = 18930
LIMITS = {"rpm": 10**9, "tpm": 10**12, "concurrency": 10**6, "tokens_per_day": 10**15}


def config(name: str) -> dict[str, Any]:
    upstream = {"name": "nginx", "kind": "openai", "url": f"http://127.0.0.1:{bench.PORTS['nginx']}"}
    cfg: dict[str, Any] = {"server": {"log_level": "warning"}, "backends": [upstream],
                           "state": {"sqlite": str(bench.WORK / f"usage-{name}.db")}}
    if name != "no auth":
        key: dict[str, Any] = {"name": "bench", "key": KEY}
        if name != "keys only":
            key["limits"] = LIMITS
        cfg["auth"] = {"keys": [key]}
    if name == "keys + limits (Redis)":
        cfg["state"]["redis"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    procs = [bench.start_nginx_upstream(),
             bench.spawn(["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no"],
                         bench.LOAD_CORE, "redis")]
    names = ["no auth", "keys only", "keys + limits (memory)", "keys + limits (Redis)"]
    figures: dict[str, dict[str, list[float]]] = {n: {"rps": [], "p50": []} for n in names}
    path = "/v1/chat/completions"
    try:
        bench.wait_ready(f"http://127.0.0.1:{bench.PORTS['nginx']}/v1/models", procs[0])
        direct = bench.measure(f"http://127.0.0.1:{bench.PORTS['nginx']}{path}", args.seconds)
        for _ in range(args.rounds):
            for name in names:
                cfg = bench.WORK / "auth-bench.yaml"
                cfg.write_text(json.dumps(config(name)))
                gw = bench.spawn([sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port",
                                  str(bench.PORTS["gateway"])], bench.PROXY_CORE, "gateway-auth")
                try:
                    bench.wait_ready(f"http://127.0.0.1:{bench.PORTS['gateway']}/healthz", gw)
                    time.sleep(0.5)
                    m = bench.measure(f"http://127.0.0.1:{bench.PORTS['gateway']}{path}", args.seconds)
                    if m["c64"]["non2xx"] or m["c1"]["non2xx"]:
                        raise SystemExit(f"{name}: non-2xx answers {m}")
                    figures[name]["rps"].append(m["c64"]["rps"])
                    figures[name]["p50"].append(m["c1"]["p50"])
                finally:
                    bench.stop(gw)
    finally:
        for p in procs:
            bench.stop(p)
    base = {k: statistics.median(v) for k, v in figures["no auth"].items()}
    print(f"| gateway | req/s (c=64) | vs no auth | p50 µs (c=1) | added vs no auth |  "
          f"({args.rounds} rounds x {args.seconds:g} s; direct: {direct['c64']['rps']:.0f} req/s, "
          f"p50 {direct['c1']['p50']} µs)")
    print("|---|---|---|---|---|")
    for name in names:
        rps, p50 = statistics.median(figures[name]["rps"]), statistics.median(figures[name]["p50"])
        print(f"| {name} | {rps:.0f} | {rps / base['rps']:.3f} | {p50:.0f} | {p50 - base['p50']:+.0f} µs |")


if __name__ == "__main__":
    main()
