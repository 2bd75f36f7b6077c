"""The benchmark: direct vs through this gateway vs peer gateways, side by side in one run.

    python bench/run.py [--quick] [--peers litellm] [--compare DIR] [--auth] [--out bench/RESULTS.md]

--compare DIR adds the gateway of another checkout (e.g. `git worktree add /tmp/prev HEAD~1`) as
"gateway-before", measured in the same run right after this one and taking turns with it in the
stream test: the A/B every change to the request path is judged by. --auth adds what keys and limits cost
(bench/auth.py's table: no auth, keys only, keys + limits in memory, keys + limits in Redis).

Layout (2 cores): the upstream (nginx, fixed answer) and the load generator (wrk) share core 0;
the proxy under test runs alone on core 1, one at a time. Streams use a paced upstream
(bench/paced_upstream.py) and an async client that timestamps each event (bench/stream_client.py).
Heavy peers (LiteLLM) are installed once into ~/.cache/llm-gateway/bench/, keyed by version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
LOAD_CORE, PROXY_CORE = "0", "1"
PORTS = {"nginx": 18900, "paced": 18902, "nginx-proxy": 18903, "gateway": 18910, "gateway-before": 18911,
         "litellm": 18920, "vllm-router": 18925}
sys.path.insert(0, str(HERE))
import peers  # noqa: E402  (bench/peers.py: how each peer gateway is installed and started)


def ensure_tools() -> None:
    missing = [p for p, b in (("wrk", "wrk"), ("nginx-light", "nginx")) if not shutil.which(b)
               and not Path("/usr/sbin/" + b).exists()]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def spawn(args: list[str], core: str, name: str, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    log = open(WORK / f"{name}.log", "wb")
    return subprocess.Popen(["taskset", "-c", core, *args], stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **(env or {})})


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120, headers: dict | None = None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code < 500:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wrk(url: str, conc: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s",
                          "--timeout", "10s",
                          "-s", str(HERE / "post.lua"), url], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("JSON "))
    r = json.loads(line[5:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(url: str, secs: float, warmup: float = 2) -> dict[str, Any]:
    wrk(url, 64, warmup)  # warm-up: connection pools, caches
    return {"c1": wrk(url, 1, secs), "c64": wrk(url, 64, secs)}


def stream_client(urls: list[str], streams: int, conc: int) -> dict[str, dict[str, Any]]:
    out = subprocess.run(["taskset", "-c", LOAD_CORE, sys.executable, str(HERE / "stream_client.py"), str(streams),
                          str(conc), "50", "10", *urls], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def streams(targets: dict[str, str], n: int) -> dict[str, dict[str, Any]]:
    """Latency from one stream at a time, the targets taking turns (so all of them see the same
    machine noise), then the coalescing check with 8 streams at once, per target."""
    res = stream_client(list(targets.values()), n, 1)
    out = {name: res[url] for name, url in targets.items()}
    for name, url in targets.items():
        busy = stream_client([url], max(n // 2, 8), 8)[url]
        out[name]["concurrent_events"], out[name]["coalesced_reads"] = busy["events"], busy["coalesced_reads"]
    return out


def start_nginx_upstream() -> subprocess.Popen[bytes]:
    """nginx with a fixed answer on the load core: the upstream of the non-stream runs."""
    WORK.mkdir(exist_ok=True)
    ensure_tools()
    conf = (HERE / "nginx.conf.template").read_text().replace("{WORK}", str(WORK)).replace(
        "{PORT}", str(PORTS["nginx"]))
    (WORK / "nginx.conf").write_text(conf)
    return spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(WORK / "nginx.conf")], LOAD_CORE, "nginx")


def start_reference_hop() -> subprocess.Popen[bytes]:
    """nginx as a non-buffering reverse proxy to the paced upstream, on the proxy core."""
    conf = (HERE / "nginx-proxy.conf.template").read_text().replace("{WORK}", str(WORK)).replace(
        "{PORT}", str(PORTS["nginx-proxy"])).replace("{UPSTREAM}", str(PORTS["paced"]))
    (WORK / "nginx-proxy.conf").write_text(conf)
    proc = spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(WORK / "nginx-proxy.conf")], PROXY_CORE,
                 "nginx-proxy")
    wait_ready(f"http://127.0.0.1:{PORTS['nginx-proxy']}/v1/models", proc)
    return proc


def gateway_config() -> Path:
    cfg = WORK / "gateway.yaml"
    cfg.write_text(json.dumps({
        "server": {"log_level": "warning"},
        "auth": {"api_keys": ["sk-bench-0123456789abcdef"]},
        "backends": [{"name": "nginx", "kind": "openai", "url": f"http://127.0.0.1:{PORTS['nginx']}"},
                     {"name": "paced", "kind": "openai", "url": f"http://127.0.0.1:{PORTS['paced']}"}],
    }))
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    secs = 3 if args.quick else 10
    nginx = start_nginx_upstream()
    paced = spawn([sys.executable, str(HERE / "paced_upstream.py"), str(PORTS["paced"])], LOAD_CORE, "paced")
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        wait_ready(f"http://127.0.0.1:{PORTS['nginx']}/v1/models", nginx)
        wait_ready(f"http://127.0.0.1:{PORTS['paced']}/v1/models", paced)
        path = "/v1/chat/completions"
        res["direct"] = measure(f"http://127.0.0.1:{PORTS['nginx']}{path}", secs)
        hop = start_reference_hop()
        gw = spawn([sys.executable, "-m", "gateway", "serve", "--config", str(gateway_config()),
                    "--port", str(PORTS["gateway"])], PROXY_CORE, "gateway")
        # The other checkout's gateway runs from its own directory (python -m imports from the cwd).
        prev_gw = spawn([sys.executable, "-m", "gateway", "serve", "--config", str(gateway_config()), "--port",
                        str(PORTS["gateway-before"])], PROXY_CORE, "gateway-before",
                       cwd=Path(args.compare)) if args.compare else None
        try:
            wait_ready(f"http://127.0.0.1:{PORTS['gateway']}/readyz", gw)
            url = f"http://127.0.0.1:{PORTS['gateway']}{path}"
            res["gateway"] = measure(url, secs)
            targets = {"direct": f"http://127.0.0.1:{PORTS['paced']}{path}",
                       "nginx-proxy": f"http://127.0.0.1:{PORTS['nginx-proxy']}{path}", "gateway": url}
            if prev_gw is not None:
                wait_ready(f"http://127.0.0.1:{PORTS['gateway-before']}/readyz", prev_gw)
                targets["gateway-before"] = f"http://127.0.0.1:{PORTS['gateway-before']}{path}"
                res["gateway-before"] = measure(targets["gateway-before"], secs)
                res["gateway-before"]["version"] = f"({args.compare})"
                stream_client([targets["gateway-before"]], 4, 1)
            stream_client([url], 4, 1)  # warm-up: the gateway's connection to the paced upstream
            s = streams(targets, 20 if args.quick else 100)
            res["direct"]["stream"], res["gateway"]["stream"] = s["direct"], s["gateway"]
            res["nginx-proxy"] = {"stream": s["nginx-proxy"]}
            if prev_gw is not None:
                res["gateway-before"]["stream"] = s["gateway-before"]
                stop(prev_gw)
                prev_gw = None
            before = rss_kb(gw.pid)
            total, target = 0, (20_000 if args.quick else 200_000)
            while total < target:
                total += wrk(url, 64, max(2.0, (target - total) / max(res["gateway"]["c64"]["rps"], 1) + 1))["requests"]
            res["gateway"]["rss"] = {"requests": total, "before_kb": before, "after_kb": rss_kb(gw.pid)}
        finally:
            stop(gw)
            stop(hop)
            if prev_gw is not None:
                stop(prev_gw)

        for name in args.peers:
            peer = peers.PEERS[name]
            proc, ready_url, headers = peer.start(WORK, PORTS[name], f"http://127.0.0.1:{PORTS['nginx']}", PROXY_CORE)
            try:
                wait_ready(ready_url, proc, timeout=300, headers=headers)
                res[name] = measure(f"http://127.0.0.1:{PORTS[name]}{path}", secs, peer.warmup_seconds)
                res[name]["version"] = peer.version
            finally:
                stop(proc)
    finally:
        stop(paced)
        stop(nginx)
    return res


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, Linux {platform.release()}, Python {platform.python_version()}"


def report(res: dict[str, Any], quick: bool) -> str:
    res = dict(res)
    d, g = res["direct"], res["gateway"]
    lines = [
        "# Benchmark results", "",
        f"Date: {res.pop('date', '?')}. Machine: {machine()}.",
        "Upstream nginx (fixed answer) and wrk on core 0; each proxy alone on core 1, one worker.",
        f"Mode: {'quick (3 s runs)' if quick else '10 s runs'}. Produced by `python bench/run.py`.", "",
        "## Non-streaming (POST /v1/chat/completions)", "",
        "| target | req/s c=64 | p99 c=64 (ms) | p50 c=1 (us) | p99 c=1 (us) | added p50 c=1 (us) "
        "| added p99 c=1 (us) | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        if "c1" not in r:
            continue
        c1, c64 = r["c1"], r["c64"]
        added = "" if name == "direct" else f"{c1['p50'] - d['c1']['p50']} | {c1['p99'] - d['c1']['p99']}"
        lines.append(f"| {name}{' ' + r['version'] if 'version' in r else ''} | {c64['rps']:,.0f} | "
                     f"{c64['p99'] / 1000:.1f} | {c1['p50']} | {c1['p99']} | {added or '— | —'} | "
                     f"{c64['non2xx'] + c1['non2xx'] + c64['errors'] + c1['errors']} |")
    ratios = [f"gateway / direct = {g['c64']['rps'] / d['c64']['rps']:.3f}"]
    ratios += [f"gateway / {n} = {g['c64']['rps'] / r['c64']['rps']:.2f}" for n, r in res.items()
               if n not in ("direct", "gateway") and "c64" in r]
    lines += ["", "Throughput ratios at c=64: " + "; ".join(ratios) + "."]
    ds, gs = d["stream"], g["stream"]
    lines += ["", "## Streaming (paced upstream: 50 events, 10 ms apart)", "",
              "Latency: one stream at a time, the three targets taking turns (stream i goes to target i mod 3), "
              "each event's arrival minus its upstream send time. "
              "Coalescing: reads carrying more than one event, with 8 streams at once.", "",
              "| target | events | TTFT p50 (us) | TTFT p99 (us) | event delay p50 (us) | event delay p99 (us) "
              "| coalesced reads (8 streams) |",
              "|---|---|---|---|---|---|---|"]
    rows = [("direct", ds), ("nginx-proxy (reference hop)", res["nginx-proxy"]["stream"]), ("gateway", gs)]
    if "gateway-before" in res:
        rows.append((f"gateway-before {res['gateway-before']['version']}", res["gateway-before"]["stream"]))
    for name, s in rows:
        lines.append(f"| {name} | {s['events']} | {s['ttft_p50_us']:.0f} | {s['ttft_p99_us']:.0f} | "
                     f"{s['delay_p50_us']:.0f} | {s['delay_p99_us']:.0f} | "
                     f"{s['coalesced_reads']} of {s['concurrent_events']} events |")
    lines += ["", f"Added by the gateway: first event {gs['ttft_p50_us'] - ds['ttft_p50_us']:.0f} us (p50), "
              f"per event {gs['delay_p50_us'] - ds['delay_p50_us']:.0f} us p50 / "
              f"{gs['delay_p99_us'] - ds['delay_p99_us']:.0f} us p99. A plain nginx hop adds "
              f"{res['nginx-proxy']['stream']['delay_p50_us'] - ds['delay_p50_us']:.0f} us p50 / "
              f"{res['nginx-proxy']['stream']['delay_p99_us'] - ds['delay_p99_us']:.0f} us p99 per event.", ""]
    if "gateway-before" in res:
        b = res["gateway-before"]
        lines += [f"Against gateway-before in the same run: c=64 throughput {g['c64']['rps'] / b['c64']['rps']:.3f}x; "
                  f"added c=1 p50 {g['c1']['p50'] - d['c1']['p50']} vs {b['c1']['p50'] - d['c1']['p50']} us, "
                  f"p99 {g['c1']['p99'] - d['c1']['p99']} vs {b['c1']['p99'] - d['c1']['p99']} us; "
                  f"per event p99 {gs['delay_p99_us'] - ds['delay_p99_us']:.0f} vs "
                  f"{b['stream']['delay_p99_us'] - ds['delay_p99_us']:.0f} us.", ""]
    rss = g["rss"]
    lines += ["## Memory", "", f"Gateway RSS {rss['before_kb'] / 1024:.1f} MiB before and "
              f"{rss['after_kb'] / 1024:.1f} MiB after {rss['requests']:,} requests "
              f"(growth {(rss['after_kb'] - rss['before_kb']) / 1024:.1f} MiB).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="short runs (smoke test of the harness)")
    p.add_argument("--peers", default="", help="comma-separated peer gateways to include: " + ", ".join(peers.PEERS))
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--compare", default="", help="another checkout whose gateway is measured as gateway-before")
    p.add_argument("--auth", action="store_true", help="add issue 16's table: no auth, keys only, keys + limits in "
                   "memory and in Redis (bench/auth.py, 10 rounds x 2 s, 3 processes each; ~7 min)")
    a = p.parse_args()
    a.peers = [x for x in a.peers.split(",") if x]
    res = run(a)
    (WORK / "results.json").write_text(json.dumps(res, indent=1))
    text = report(res, a.quick)
    if a.auth:
        import auth  # bench/auth.py (it imports this module's helpers)
        rounds, secs, copies = (2, 1.0, 1) if a.quick else (10, 2.0, 3)
        text += ("\n## Keys and limits (bench/auth.py)\n\nThe same requests through four gateways taking turns; CPU "
                 "per request read from /proc, the steadier figure (README \"Performance\").\n\n"
                 + auth.table(*auth.measure(rounds, secs, copies), rounds, secs, copies) + "\n")
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
