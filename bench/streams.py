"""The streaming figures alone, with more samples: direct, the nginx reference hop and the gateway
take turns stream by stream (as in run.py), for several rounds, so the spread shows.

    python bench/streams.py [--rounds 3] [--streams 100] [--compare /path/to/other/checkout]

`--compare` adds a second gateway run from another checkout (e.g. a `git worktree` of the previous
commit) to the turns: an A/B of a change to the stream path, measured in the same minutes.
Layout as in run.py: paced upstream and client on core 0, the proxies under test on core 1.
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


def start_gateway(checkout: Path, name: str, port: int) -> Any:
    gw = run.spawn([sys.executable, "-m", "gateway", "serve", "--config", str(run.gateway_config()),
                    "--port", str(port)], run.PROXY_CORE, name, env={"PYTHONPATH": str(checkout)}, cwd=checkout)
    run.wait_ready(f"http://127.0.0.1:{port}/readyz", gw)
    run.stream_client([f"http://127.0.0.1:{port}{PATH}"], 4, 1)  # warm-up: pool, first-call code paths
    return gw


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, default=100, help="streams of 50 events per target and round")
    p.add_argument("--compare", help="another checkout of this repository to measure as gateway-b")
    a = p.parse_args()
    run.WORK.mkdir(exist_ok=True)
    run.ensure_tools()
    procs = [run.spawn([sys.executable, str(run.HERE / "paced_upstream.py"), str(run.PORTS["paced"])],
                       run.LOAD_CORE, "paced")]
    nginx_conf = (run.HERE / "nginx.conf.template").read_text().replace("{WORK}", str(run.WORK)).replace(
        "{PORT}", str(run.PORTS["nginx"]))
    (run.WORK / "nginx.conf").write_text(nginx_conf)
    # The fixed-answer nginx is named in the gateway's config: it must answer the health probes.
    procs.append(run.spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(run.WORK / "nginx.conf")],
                           run.LOAD_CORE, "nginx"))
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        run.wait_ready(f"http://127.0.0.1:{run.PORTS['paced']}/v1/models", procs[0])
        run.wait_ready(f"http://127.0.0.1:{run.PORTS['nginx']}/v1/models", procs[1])
        procs.append(run.start_reference_hop())
        targets = {"direct": f"http://127.0.0.1:{run.PORTS['paced']}{PATH}",
                   "nginx-proxy": f"http://127.0.0.1:{run.PORTS['nginx-proxy']}{PATH}"}
        gateways = [("gateway", run.ROOT)] + ([("gateway-b", Path(a.compare).resolve())] if a.compare else [])
        for i, (name, checkout) in enumerate(gateways):
            port = run.PORTS["gateway"] + i
            procs.append(start_gateway(checkout, name, port))
            targets[name] = f"http://127.0.0.1:{port}{PATH}"
        rows = {k: [] for k in targets}
        for r in range(a.rounds):
            res = run.streams(targets, a.streams)
            for name in targets:
                rows[name].append(res[name])
            d = res["direct"]
            added = [f"{n} +{res[n]['delay_p50_us'] - d['delay_p50_us']:.0f}"
                     f"/+{res[n]['delay_p99_us'] - d['delay_p99_us']:.0f}" for n in targets if n != "direct"]
            print(f"round {r + 1}: " + "; ".join(added) + " us added per event (p50/p99)", flush=True)
    finally:
        for proc in reversed(procs):
            run.stop(proc)
    print("\nadded per event, median over rounds (p50 / p99 us); first event p50 us; coalesced reads")
    for n, xs in rows.items():
        if n == "direct":
            continue
        pairs = list(zip(xs, rows["direct"]))
        p50 = statistics.median(x["delay_p50_us"] - d["delay_p50_us"] for x, d in pairs)
        p99 = statistics.median(x["delay_p99_us"] - d["delay_p99_us"] for x, d in pairs)
        ttft = statistics.median(x["ttft_p50_us"] - d["ttft_p50_us"] for x, d in pairs)
        co = sum(x["coalesced_reads"] for x in xs)
        print(f"  {n:12s} {p50:6.0f} / {p99:6.0f}   first event {ttft:6.0f}   coalesced {co}")
    (run.WORK / "streams.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
