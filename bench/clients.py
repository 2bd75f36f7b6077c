"""Upstream client choice, on evidence: httpx vs aiohttp vs the gateway's own gateway/http1.py,
each making N POSTs at concurrency 64 to a fast fixed-answer upstream, one core each.

    python bench/clients.py   (starts nginx from bench/nginx.conf.template on core 0)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
PORT = 18930
URL = f"http://127.0.0.1:{PORT}/v1/chat/completions"
BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}'
N, C = 20000, 64


async def run_httpx() -> float:
    import httpx
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)) as c:
        async def w(k: int) -> None:
            for _ in range(k):
                r = await c.post(URL, content=BODY, headers={"content-type": "application/json"})
                await r.aread()
        t = time.perf_counter()
        await asyncio.gather(*(w(N // C) for _ in range(C)))
        return N / (time.perf_counter() - t)


async def run_aiohttp() -> float:
    import aiohttp
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
        async def w(k: int) -> None:
            for _ in range(k):
                async with s.post(URL, data=BODY, headers={"content-type": "application/json"}) as r:
                    await r.read()
        t = time.perf_counter()
        await asyncio.gather(*(w(N // C) for _ in range(C)))
        return N / (time.perf_counter() - t)


async def run_http1() -> float:
    from gateway.http1 import Pool
    pool = Pool(connect_timeout=5, read_timeout=60, max_connections=100)

    async def w(k: int) -> None:
        for _ in range(k):
            r = await pool.request("POST", URL, {"Content-Type": "application/json"}, BODY)
            await r.read()
            r.release()
    t = time.perf_counter()
    await asyncio.gather(*(w(N // C) for _ in range(C)))
    rate = N / (time.perf_counter() - t)
    pool.close()
    return rate


def main() -> None:
    work = HERE / ".work"
    work.mkdir(exist_ok=True)
    conf = (HERE / "nginx.conf.template").read_text().replace("{WORK}", str(work)).replace("{PORT}", str(PORT))
    (work / "nginx-clients.conf").write_text(conf.replace("nginx.pid", "nginx-clients.pid"))
    nginx = subprocess.Popen(["taskset", "-c", "0", shutil.which("nginx") or "/usr/sbin/nginx", "-c",
                              str(work / "nginx-clients.conf")])
    try:
        time.sleep(0.5)
        out = {}
        for name in ("httpx", "aiohttp", "http1"):
            r = subprocess.run(["taskset", "-c", "1", sys.executable, __file__, name], capture_output=True, text=True,
                               check=True)
            out[name] = float(r.stdout.strip())
        print(json.dumps({k: round(v) for k, v in out.items()}))
    finally:
        nginx.terminate()
        nginx.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        import uvloop
        print(uvloop.run(globals()["run_" + sys.argv[1]]()))
    else:
        main()
