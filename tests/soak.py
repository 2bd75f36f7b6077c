"""A soak: mixed traffic against a real gateway in front of two OpenAI doubles, then proof nothing leaked.

Shared by bench/soak.py (the long run, figures in bench/RESULTS.md) and tests/test_soak.py (a short
run in the suite): the same traffic, the same checks, the same bounds.

Traffic (W workers, each one request at a time, for a bounded time): chat, completions and embeddings,
complete streams, clients that vanish mid-stream (FIN or RST after the first event) or before the
answer, bad requests (invalid JSON, unknown model, wrong content-type, an upstream 400). Half-way
through, backend "b" is killed (SIGKILL) and started again on the same port.

Every request is classified: 2xx (checked answer), 4xx/5xx in the OpenAI envelope, a started stream
ended by an error event, client-aborted (on purpose), or unexplained (a hang past the deadline, a
transport error, a non-envelope error, a truncated stream, a bad request answered 2xx...): zero allowed.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Double, Gateway, Spawner

# The bounds (see check()): what "flat" means.
RSS_GROWTH_MIB = 20.0  # gateway RSS after the soak vs after warm-up
FD_GROWTH = 5  # gateway fds other than upstream sockets, after the soak vs after warm-up
REQUEST_DEADLINE = 30.0  # one request's answer; they take milliseconds (>= 100x margin)
SETTLE_DEADLINE = 30.0  # in-flight 0, no half-closed socket, fd count steady

MODEL = "m"
ANSWER = re.compile(r"^Hello from (a|b), this is a streamed answer$")
# kind -> weight. Bad kinds carry the status they must get.
WEIGHTS = {"chat": 24, "completion": 8, "embedding": 7, "stream": 24, "vanish_mid": 10, "vanish_early": 5,
           "invalid_json": 5, "unknown_model": 5, "wrong_ctype": 6, "upstream_400": 6}
BAD = {"invalid_json": 400, "unknown_model": 404, "wrong_ctype": 415, "upstream_400": 400}
OUTCOMES = ("2xx", "4xx_envelope", "5xx_envelope", "stream_error_event", "client_aborted", "unexplained")
TCP_STATES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT", "06": "TIME_WAIT", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "09": "LAST_ACK", "0A": "LISTEN", "07": "CLOSE", "0B": "CLOSING", "02": "SYN_SENT"}


class Unexplained(Exception):
    pass


@dataclass
class Tally:
    issued: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, kind: str, outcome: str, why: str = "") -> None:
        self.outcomes[outcome] += 1
        self.by_kind[f"{kind}:{outcome}"] += 1
        if why and len(self.failures) < 20:
            self.failures.append(f"{kind}: {why}")


# -- the gateway process, from /proc ------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def sockets(pid: int, upstream_ports: set[int]) -> dict[str, Any]:
    """fd count, and the process's own TCP sockets (its fds' inodes matched in /proc/<pid>/net/tcp)."""
    inodes, fds = set(), 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        fds += 1
        try:
            target = fd.readlink().as_posix()
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    upstream: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] not in inodes:
                continue
            state = TCP_STATES.get(cols[3], cols[3])
            states[state] += 1
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if remote_port in upstream_ports and state != "LISTEN":
                upstream[f"{remote_port}:{state}"] += 1
    n_up = sum(upstream.values())
    return {"fds": fds, "upstream": n_up, "other_fds": fds - n_up, "upstream_by_port": dict(upstream),
            "tcp_states": dict(states)}


def in_flight(gw: Gateway) -> dict[str, float]:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return {m[1]: float(m[2]) for m in re.finditer(r'^llm_gateway_in_flight_requests\{backend="([^"]+)"\} (\S+)$',
                                                   text, re.M)}


def backend_states(gw: Gateway) -> dict[str, str]:
    return {x["name"]: x["state"] for x in httpx.get(gw.url + "/admin/backends", timeout=10).json()["backends"]}


def settle(gw: Gateway, doubles: list[Double]) -> dict[str, Any]:
    """Wait (on states, with a generous deadline) until nothing is in flight anywhere, no gateway socket
    is half-closed, and the fd count holds still over a few polls; then one snapshot."""
    ports = {d.port for d in doubles}
    deadline = time.monotonic() + SETTLE_DEADLINE
    last, steady = -1, 0
    while time.monotonic() < deadline:
        snap = sockets(gw.proc.popen.pid, ports)
        quiet = (all(v == 0 for v in in_flight(gw).values()) and all(d.stats()["in_flight"] == 0 for d in doubles)
                 and snap["tcp_states"].get("CLOSE_WAIT", 0) == 0)
        steady = steady + 1 if quiet and snap["fds"] == last else 0
        last = snap["fds"]
        if steady >= 3:
            break
        time.sleep(0.2)
    snap = sockets(gw.proc.popen.pid, ports)
    snap["rss_mib"] = rss_mib(gw.proc.popen.pid)
    snap["settled"] = steady >= 3
    return snap


# -- one request of each kind -------------------------------------------------------------------------
def is_envelope(doc: Any) -> bool:
    err = doc.get("error") if isinstance(doc, dict) else None
    return (isinstance(err, dict) and {"message", "type", "param", "code"} <= err.keys()
            and isinstance(err["message"], str) and isinstance(err["type"], str))


def error_outcome(kind: str, status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        raise Unexplained(f"{status} with a non-JSON body {body[:120]!r}") from None
    if not is_envelope(doc):
        raise Unexplained(f"{status} outside the envelope: {body[:200]!r}")
    if kind in BAD and status != BAD[kind]:
        raise Unexplained(f"expected {BAD[kind]}, got {status}: {body[:200]!r}")
    if kind not in BAD and status < 500:  # a good request may meet a dead backend (5xx), never a 4xx
        raise Unexplained(f"a valid request got {status}: {body[:200]!r}")
    return "4xx_envelope" if status < 500 else "5xx_envelope"


def payload(kind: str, i: int) -> tuple[str, dict[str, Any]]:
    msgs = [{"role": "user", "content": f"soak request {i} {'x' * (i % 300)}"}]
    if kind == "completion":
        return "/v1/completions", {"model": MODEL, "prompt": msgs[0]["content"], "x_double": {"delay": 0.005}}
    if kind == "embedding":
        return "/v1/embeddings", {"model": MODEL, "input": ["a", msgs[0]["content"]]}
    body: dict[str, Any] = {"model": MODEL, "messages": msgs}
    if kind == "stream":
        body |= {"stream": True, "stream_options": {"include_usage": True}, "x_double": {"chunks": 8, "delay": 0.005}}
    elif kind == "vanish_mid":
        body |= {"stream": True, "x_double": {"chunks": 20, "delay": 0.05}}
    elif kind == "vanish_early":
        body |= {"x_double": {"headers_delay": 0.5}}
    elif kind == "unknown_model":
        body["model"] = f"no-such-model-{i}"
    elif kind == "upstream_400":
        body["x_double"] = {"status": 400, "message": "injected bad request"}
    else:
        body["x_double"] = {"delay": 0.005}
    return "/v1/chat/completions", body


async def plain(client: httpx.AsyncClient, base: str, kind: str, i: int) -> str:
    path, body = payload(kind, i)
    if kind == "invalid_json":
        r = await client.post(base + path, content=b'{"model": "m", "messages": [{"role": ',
                              headers={"content-type": "application/json"})
    elif kind == "wrong_ctype":
        r = await client.post(base + path, content=json.dumps(body).encode(), headers={"content-type": "text/plain"})
    else:
        r = await client.post(base + path, json=body)
    if r.status_code != 200:
        return error_outcome(kind, r.status_code, r.content)
    if kind in BAD:
        raise Unexplained(f"a bad request got 200: {r.text[:200]}")
    doc = r.json()
    got = (doc["choices"][0]["message"]["content"] if kind == "chat" else doc["choices"][0]["text"]
           if kind == "completion" else len(doc["data"]))
    if got != 2 and not (isinstance(got, str) and ANSWER.match(got)):
        raise Unexplained(f"wrong answer {got!r}")
    return "2xx"


async def stream(client: httpx.AsyncClient, base: str, i: int) -> str:
    path, body = payload("stream", i)
    async with client.stream("POST", base + path, json=body) as r:
        if r.status_code != 200:
            return error_outcome("stream", r.status_code, await r.aread())
        text, done, errored = "", False, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            doc = json.loads(line[6:])
            if "error" in doc:
                if not is_envelope(doc):
                    raise Unexplained(f"error event outside the envelope: {line[:200]}")
                errored = True
            elif doc["choices"]:
                text += doc["choices"][0]["delta"].get("content") or ""
    if not done:
        raise Unexplained("stream ended without [DONE]")
    if errored:
        return "stream_error_event"
    if not ANSWER.match(text):
        raise Unexplained(f"stream text {text!r}")
    return "2xx"


async def vanish(port: int, kind: str, i: int, rst: bool) -> str:
    """A raw client that leaves: after the first SSE event (vanish_mid) or right after sending (early)."""
    path, body = payload(kind, i)
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        if kind == "vanish_mid":
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if not m:
                    raise Unexplained(f"{status} without a content-length")
                return error_outcome(kind, status, await reader.readexactly(int(m[1])))
            await reader.readuntil(b"\n\n")  # the first event (a chunked frame holds it whole or in part)
    finally:
        if rst:  # a client that vanishes without a FIN: the kernel answers with RST
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
    return "client_aborted"


async def one(client: httpx.AsyncClient, gw: Gateway, kind: str, i: int, tally: Tally) -> None:
    tally.issued += 1
    try:
        async with asyncio.timeout(REQUEST_DEADLINE):
            if kind in ("vanish_mid", "vanish_early"):
                outcome = await vanish(gw.port, kind, i, rst=i % 2 == 0)
            elif kind == "stream":
                outcome = await stream(client, gw.url, i)
            else:
                outcome = await plain(client, gw.url, kind, i)
        tally.add(kind, outcome)
    except Unexplained as e:
        tally.add(kind, "unexplained", str(e))
    except TimeoutError:
        tally.add(kind, "unexplained", f"no answer within {REQUEST_DEADLINE} s")
    except Exception as e:  # noqa: BLE001 (a transport error, a parse failure: all of it is a finding)
        tally.add(kind, "unexplained", repr(e)[:200])


async def traffic(gw: Gateway, seconds: float, workers: int, tally: Tally, seed: int) -> None:
    """W workers, one request at a time each, until `seconds` have passed (each loop ends by itself)."""
    rng = random.Random(seed)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(timeout=REQUEST_DEADLINE, limits=limits) as client:
        async def worker() -> None:
            while time.monotonic() < end:
                await one(client, gw, rng.choices(kinds, weights)[0], tally.issued, tally)
        await asyncio.gather(*(worker() for _ in range(workers)))


async def restart(spawn: Spawner, gw: Gateway, b: Double, at: float, log: dict[str, Any]) -> Double:
    """At `at` seconds: SIGKILL backend b under load, wait until the gateway has it down, start it again
    on the same port, wait until the gateway has it ready. Returns the new double."""
    await asyncio.sleep(at)  # a point in the soak's timeline, not a synchronisation
    t0 = time.monotonic()
    await asyncio.to_thread(b.proc.stop, signal.SIGKILL)
    log["killed_at_s"] = round(at, 1)
    await wait_state(gw, "b", "down")
    log["seen_down_after_s"] = round(time.monotonic() - t0, 2)
    new = await asyncio.to_thread(spawn.start_double, "openai_server", "/health", "--name", "b", "--models", MODEL,
                                  name="b-restarted", port=b.port)
    await wait_state(gw, "b", "ready")
    log["ready_again_after_s"] = round(time.monotonic() - t0, 2)
    return new


async def wait_state(gw: Gateway, name: str, state: str) -> None:
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(backend_states, gw)).get(name) != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"backend {name} not {state} within 60 s")
        await asyncio.sleep(0.05)


def start(spawn: Spawner) -> tuple[Gateway, Double, Double]:
    a = spawn.double("a", MODEL)
    b = spawn.double("b", MODEL)
    gw = spawn.gateway({"health": {"interval": 1.0, "not_ready_interval": 0.2, "down_max_interval": 1.0},
                        "backends": [{"name": "a", "kind": "vllm", "url": a.url},
                                     {"name": "b", "kind": "vllm", "url": b.url}]})
    return gw, a, b


def soak(spawn: Spawner, seconds: float, warmup: float, workers: int = 8, seed: int = 11) -> dict[str, Any]:
    """The whole soak; returns the figures (check() turns them into pass/fail)."""
    gw, a, b = start(spawn)
    warm = Tally()
    asyncio.run(traffic(gw, warmup, workers, warm, seed))
    before = settle(gw, [a, b])
    tally, restart_log = Tally(), {}
    samples: list[float] = []

    async def main() -> Double:
        async def sampler() -> None:
            while True:
                samples.append(rss_mib(gw.proc.popen.pid))
                await asyncio.sleep(1.0)
        s = asyncio.create_task(sampler())
        r = asyncio.create_task(restart(spawn, gw, b, seconds / 2, restart_log))
        t0 = time.monotonic()
        await traffic(gw, seconds, workers, tally, seed + 1)
        restart_log["traffic_s"] = round(time.monotonic() - t0, 1)
        s.cancel()
        return await r

    b2 = asyncio.run(main())
    after = settle(gw, [a, b2])
    flights = in_flight(gw)
    log = gw.proc.output()
    return {"seconds": seconds, "warmup_s": warmup, "ports": {str(a.port): "a", str(b.port): "b"},
            "workers": workers, "warmup_requests": warm.issued,
            "warmup_unexplained": warm.outcomes["unexplained"], "issued": tally.issued,
            "answered": sum(tally.outcomes.values()), "outcomes": {k: tally.outcomes[k] for k in OUTCOMES},
            "by_kind": dict(sorted(tally.by_kind.items())), "failures": warm.failures + tally.failures,
            "before": before, "after": after, "rss_peak_mib": max(samples, default=0.0), "restart": restart_log,
            "in_flight_after": flights, "tracebacks": log.count("Traceback"), "backend_cancelled": {
                "a": a.stats()["cancelled"], "b(restarted)": b2.stats()["cancelled"]}}


def check(r: dict[str, Any]) -> list[str]:
    """Every bound the soak holds the gateway to; an empty list is a pass."""
    bad = []
    o, before, after = r["outcomes"], r["before"], r["after"]
    if o["unexplained"] or r["warmup_unexplained"]:
        bad.append(f"unexplained outcomes: {r['failures']}")
    if r["answered"] != r["issued"]:
        bad.append(f"issued {r['issued']} but accounted for {r['answered']}")
    for must in ("2xx", "4xx_envelope", "client_aborted"):  # the mix really happened
        if not o[must]:
            bad.append(f"no {must} outcome at all: the traffic mix did not run")
    if not (before["settled"] and after["settled"]):
        bad.append(f"did not settle (in flight, CLOSE_WAIT or moving fds): {before} / {after}")
    if after["rss_mib"] - before["rss_mib"] > RSS_GROWTH_MIB:
        bad.append(f"RSS grew {after['rss_mib'] - before['rss_mib']:.1f} MiB (> {RSS_GROWTH_MIB})")
    if after["other_fds"] - before["other_fds"] > FD_GROWTH:
        bad.append(f"fds (upstream sockets aside) {before['other_fds']} -> {after['other_fds']} (> +{FD_GROWTH})")
    # a request holds one upstream connection; probes one more per backend: beyond that is a leak
    for port_state, n in after["upstream_by_port"].items():
        if not port_state.endswith(":ESTABLISHED") or n > r["workers"] + 1:
            bad.append(f"upstream pool: {n} connection(s) {port_state}")
    if after["tcp_states"].get("CLOSE_WAIT"):
        bad.append(f"half-closed sockets left: {after['tcp_states']}")
    if set(r["in_flight_after"]) != {"a", "b"} or any(r["in_flight_after"].values()):
        bad.append(f"llm_gateway_in_flight_requests after: {r['in_flight_after']}")
    if r["tracebacks"]:
        bad.append(f"{r['tracebacks']} traceback(s) in the gateway log")
    if "ready_again_after_s" not in r["restart"]:
        bad.append(f"the backend restart did not complete: {r['restart']}")
    return bad


def report(r: dict[str, Any]) -> str:
    b, a, o = r["before"], r["after"], r["outcomes"]

    def named(by_port: dict[str, int]) -> dict[str, int]:  # "port:STATE" -> "backend:STATE"
        return {f"{r['ports'].get(k.split(':')[0], k.split(':')[0])}:{k.split(':')[1]}": n for k, n in by_port.items()}
    return "\n".join([
        f"duration {r['seconds']:.0f} s (+{r['warmup_s']:.0f} s warm-up, {r['warmup_requests']} requests), "
        f"{r['workers']} workers; backend b killed at {r['restart'].get('killed_at_s')} s, seen down after "
        f"{r['restart'].get('seen_down_after_s')} s, ready again after {r['restart'].get('ready_again_after_s')} s",
        f"requests issued {r['issued']}, accounted for {r['answered']}: "
        + ", ".join(f"{k} {o[k]}" for k in OUTCOMES),
        f"gateway RSS {b['rss_mib']:.1f} MiB after warm-up -> {a['rss_mib']:.1f} MiB after "
        f"(growth {a['rss_mib'] - b['rss_mib']:+.1f}, bound {RSS_GROWTH_MIB}); peak during {r['rss_peak_mib']:.1f}",
        f"gateway fds {b['fds']} -> {a['fds']} (other than upstream sockets {b['other_fds']} -> {a['other_fds']}, "
        f"bound +{FD_GROWTH}); upstream connections {named(b['upstream_by_port'])} -> {named(a['upstream_by_port'])}",
        f"in flight after: {r['in_flight_after']}; upstream requests cancelled (clients gone): "
        f"{r['backend_cancelled']}; tracebacks in the log: {r['tracebacks']}",
        f"by kind: {r['by_kind']}",
    ])
