"""The streaming figures alone, repeated: direct, the nginx reference hop and the gateway take turns
for several rounds, so run-to-run VM noise shows as spread instead of passing for a difference.

    python bench/streams.py [--rounds 5] [--streams 40] [--compare /path/to/other/checkout]

`--compare` adds a second gateway run from another checkout (e.g. a `git worktree` of the previous
commit) to every round: an A/B of a change to the stream path, measured in the same run.
Layout as in run.py: paced upstream and client on core 0, the proxy under test alone on core 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import run  # bench/run.py: process helpers, ports, the stream client wrapper

PATH = "/v1/chat/completions"


def gateway_stream(checkout: Path, name: str, streams: int) -> dict[str, Any]:
    port = run.PORTS["gateway"] + (1 if name != "gateway" else 0)
    gw = run.spawn([sys.executable, "-m", "gateway", "serve", "--config", str(run.gateway_config()),
                    "--port", str(port)], run.PROXY_CORE, name, env={"PYTHONPATH": str(checkout)}, cwd=checkout)
    try:
        run.wait_ready(f"http://127.0.0.1:{port}/readyz", gw)
        url = f"http://127.0.0.1:{port}{PATH}"
        run.stream(url, 4)  # warm-up: the upstream connection pool, first-call code paths
        return run.stream(url, streams)
    finally:
        run.stop(gw)


def nginx_stream(streams: int) -> dict[str, Any]:
    return run.reference_hop(PATH, streams)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--streams", type=int, default=40, help="streams of 50 events per target and round")
    p.add_argument("--compare", help="another checkout of this repository to measure as gateway-b")
    a = p.parse_args()
    run.WORK.mkdir(exist_ok=True)
    run.ensure_tools()
    paced = run.spawn([sys.executable, str(run.HERE / "paced_upstream.py"), str(run.PORTS["paced"])],
                      run.LOAD_CORE, "paced")
    nginx_conf = (run.HERE / "nginx.conf.template").read_text().replace("{WORK}", str(run.WORK)).replace(
        "{PORT}", str(run.PORTS["nginx"]))
    (run.WORK / "nginx.conf").write_text(nginx_conf)
    nginx = run.spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(run.WORK / "nginx.conf")],
                      run.LOAD_CORE, "nginx")  # the gateway config names it; it must answer probes
    targets: dict[str, Any] = {
        "direct": lambda: run.stream(f"http://127.0.0.1:{run.PORTS['paced']}{PATH}", a.streams),
        "nginx-proxy": lambda: nginx_stream(a.streams),
        "gateway": lambda: gateway_stream(run.ROOT, "gateway", a.streams),
    }
    if a.compare:
        targets["gateway-b"] = lambda: gateway_stream(Path(a.compare).resolve(), "gateway-b", a.streams)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    try:
        run.wait_ready(f"http://127.0.0.1:{run.PORTS['paced']}/v1/models", paced)
        run.wait_ready(f"http://127.0.0.1:{run.PORTS['nginx']}/v1/models", nginx)
        for r in range(a.rounds):
            for name, fn in targets.items():
                rows[name].append(fn())
            d = rows["direct"][-1]
            print(f"round {r + 1}: " + "; ".join(
                f"{n} +{rows[n][-1]['delay_p50_us'] - d['delay_p50_us']:.0f}/+{rows[n][-1]['delay_p99_us'] - d['delay_p99_us']:.0f}"
                for n in targets if n != "direct") + " us (per event p50/p99 added)", flush=True)
    finally:
        run.stop(paced)
        run.stop(nginx)
    print("\nadded per event, median over rounds (p50 / p99 us); first event p50 us; coalesced reads")
    for n in targets:
        if n == "direct":
            continue
        p50 = statistics.median(x["delay_p50_us"] - d["delay_p50_us"] for x, d in zip(rows[n], rows["direct"]))
        p99 = statistics.median(x["delay_p99_us"] - d["delay_p99_us"] for x, d in zip(rows[n], rows["direct"]))
        ttft = statistics.median(x["ttft_p50_us"] - d["ttft_p50_us"] for x, d in zip(rows[n], rows["direct"]))
        co = sum(x["coalesced_reads"] for x in rows[n])
        print(f"  {n:12s} {p50:6.0f} / {p99:6.0f}   first event {ttft:6.0f}   coalesced {co}")
    (run.WORK / "streams.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
