"""A rendered launch (gateway.recipes.plan.build(..., target="host")) brought up as child processes.

Each plan's process is started in order (FastChat: controller, then worker) and waited for until its
ready_url answers 2xx; then its post-start steps run (an HTTP call, or a command such as `ollama pull`).
Start-up is judged by progress, not by one fixed timeout: a new line of output, a partial line (loading
dots), or a non-2xx answer from the ready URL (llama-server's 503 "Loading model") each restart the stall
clock. It fails when the process exits, when nothing progressed for stall_timeout seconds, or when the
plan's ready_budget_s is spent; every process already started is then stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from gateway.recipes.plan import EnvVar, Launch, Plan, Step
from gateway.supervisor.child import Child
from gateway.supervisor.logs import LogRing

TAIL_LINES = 20
PROBE_TIMEOUT_S = 5.0
Probe = Callable[[str, str], Awaitable[int | None]]


class StartFailed(Exception):
    """A launch did not come up: `reason` is one line, `log_tail` the children's last output lines."""

    def __init__(self, reason: str, log_tail: list[str]) -> None:
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail


def _env(variables: list[EnvVar]) -> dict[str, str]:
    """The caller's environment with these variables: literals as given, from_env copied from the
    caller's variable of that name (a secret is never written down); one that is missing stays unset."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")     # a Python server's output must arrive as it happens (progress)
    for v in variables:
        if v.from_env is not None:
            if v.from_env in os.environ:
                env[v.name] = os.environ[v.from_env]
            else:
                env.pop(v.name, None)          # not an inherited value the launch did not ask for
        elif v.value is not None:
            env[v.name] = v.value
    return env


def env_for(plan: Plan) -> dict[str, str]:
    return _env(plan.env)


async def http_call(method: str, url: str, body: dict[str, Any] | None = None,
                    timeout: float = PROBE_TIMEOUT_S) -> tuple[int, bytes] | None:
    """One plain-HTTP request on a new connection: (status, first 4 KiB of the body), or None when nothing
    answered (refused, reset, timed out)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not a plain http URL: {url}")
    data = json.dumps(body).encode() if body is not None else b""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = (f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Content-Type: application/json\r\n" if body is not None else "")
            + "\r\n").encode()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            writer.write(head + data)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            # Up to EOF (Connection: close): one read returns what has arrived, which may be the headers only
            # (a server writes its headers and its body separately).
            rest = b""
            while len(rest) < 65536 and (chunk := await reader.read(65536 - len(rest))):
                rest += chunk
            return status, rest.split(b"\r\n\r\n", 1)[-1][:4096]
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def probe(method: str, url: str) -> int | None:
    """The default readiness probe: the status the ready URL answers, None when nothing answers."""
    answer = await http_call(method, url)
    return answer[0] if answer is not None else None


def _exit_text(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-rc).name}"
    return f"exited with code {rc}" + (" (command not found or not executable)" if rc == 127 else "")


async def _port_taken(host: str, port: int) -> bool:
    """Something already listens there: the probe would find it ready, and the gateway would talk to it."""
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_connection("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def _ready(child: Child, plan: Plan, logs: LogRing, stall_timeout: float, http_probe: Probe,
                 on_progress: Callable[[str], None]) -> None:
    """Until the plan's ready URL answers 2xx, judged by progress (see the module's docstring)."""
    t0 = last_progress = time.monotonic()
    seen, loading, pause = logs.count, False, 0.05
    exited = asyncio.ensure_future(child.wait())
    try:
        while True:
            status = await http_probe(plan.ready_method, plan.ready_url)
            now = time.monotonic()
            if status is not None and 200 <= status < 300 and child.running:
                return
            if status is not None:            # it answers: listening, still loading
                last_progress = now
                if not loading:
                    loading = True
                    on_progress("loading")
            if logs.count != seen or logs.last_at > last_progress:
                seen, last_progress = logs.count, max(last_progress, min(logs.last_at, now))
            if exited.done() or not child.running:
                rc = await exited
                raise StartFailed(f"{child.name} {_exit_text(rc)} while starting", logs.tail(TAIL_LINES))
            if now - last_progress > stall_timeout:
                raise StartFailed(f"{child.name} made no progress for {stall_timeout:g}s (no output, and "
                                  f"{plan.ready_url} {'answered ' + str(status) if status else 'did not answer'})",
                                  logs.tail(TAIL_LINES))
            if now - t0 > plan.ready_budget_s:
                raise StartFailed(f"{child.name} was not ready within its budget of {plan.ready_budget_s:g}s "
                                  f"({plan.ready_url} {'answered ' + str(status) if status else 'did not answer'})",
                                  logs.tail(TAIL_LINES))
            await asyncio.wait([exited], timeout=pause)
            pause = min(pause * 1.5, 0.5)
    finally:
        exited.cancel()


async def _step(step: Step, child: Child, logs: LogRing, orphan_grace: float) -> None:
    """One post-start step within its budget; the server exiting meanwhile fails it too."""
    async def run() -> str | None:
        if step.url is not None:
            answer = await http_call(step.method, step.url, step.body, timeout=step.budget_s)
            if answer is None:
                return f"{step.method} {step.url} got no answer within {step.budget_s:g}s"
            if not 200 <= answer[0] < 300:
                return f"{step.method} {step.url} answered {answer[0]}: {answer[1].decode(errors='replace')[:200]}"
            return None
        cmd = Child(f"{child.name}:{step.name}", step.argv, _env(step.env), logs, orphan_grace=orphan_grace)
        await cmd.start()
        try:
            rc = await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(cmd.wait())), step.budget_s)
        except TimeoutError:
            return f"{step.argv[0]} did not finish within {step.budget_s:g}s"
        finally:
            await cmd.stop(2.0)
        return None if rc == 0 else f"{step.argv[0]} {_exit_text(rc)}"

    work, exited = asyncio.ensure_future(run()), asyncio.ensure_future(child.wait())
    try:
        await asyncio.wait([work, exited], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise StartFailed(f"{child.name} {_exit_text(exited.result())} during its {step.name} step",
                              logs.tail(TAIL_LINES))
        if (why := work.result()) is not None:
            raise StartFailed(f"{child.name}: post-start step {step.name} failed: {why}", logs.tail(TAIL_LINES))
    finally:
        for t in (work, exited):
            if not t.done():
                t.cancel()
        await asyncio.gather(work, exited, return_exceptions=True)


async def bring_up(launch: Launch, logs: LogRing, *, stall_timeout: float = 60.0, http_probe: Probe | None = None,
                   on_progress: Callable[[str], None] | None = None, stop_grace: float = 10.0,
                   orphan_grace: float = 10.0) -> list[Child]:
    """Starts the launch's processes in order, each ready (and its post-start steps done) before the next;
    the started children. On failure (StartFailed) or cancellation, every child started is stopped."""
    if launch.target != "host":
        raise ValueError(f"a {launch.target} launch is not run on this host")
    report = on_progress or (lambda phase: None)
    children: list[Child] = []
    try:
        for plan in launch.plans:
            report("starting")
            if await _port_taken(plan.host, plan.port):
                raise StartFailed(f"{plan.host}:{plan.port} is already in use by another process; {plan.service} "
                                  "was not started", logs.tail(TAIL_LINES))
            child = Child(plan.service, plan.argv, env_for(plan), logs, orphan_grace=orphan_grace)
            children.append(child)
            await child.start()
            await _ready(child, plan, logs, stall_timeout, http_probe or probe, report)
            for step in plan.post_start:
                report("loading")
                await _step(step, child, logs, orphan_grace)
        report("ready")
        return children
    except BaseException:
        # Also on cancellation (the gateway stopped this start): nothing it started keeps running.
        stopping = asyncio.ensure_future(asyncio.gather(*(c.stop(stop_grace) for c in reversed(children))))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(stopping)
        raise
