"""One launched process: started under the reaper (reaper.py), its output read into a LogRing, stopped as a
group (SIGTERM, then SIGKILL after a grace period).

The reaper is what makes "no orphan" hold when the gateway is SIGKILLed: it gets a parent-death signal and
stops the program's whole process group and every descendant. The fork happens in the thread that runs the
event loop, and the kernel's parent-death signal follows that thread: run the loop in the main thread (or in
one that lives as long as the children).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

from gateway.supervisor.logs import LogRing

REAPER = Path(__file__).with_name("reaper.py")
_EOL = re.compile(rb"\r\n|\n|\r")
READ_CHUNK = 1 << 16
DRAIN_S = 2.0          # after the exit, how long the last output may take to arrive
KILL_WAIT_S = 5.0      # after SIGKILL, how long until we stop waiting for the reaper


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: LogRing, *,
                 orphan_grace: float = 10.0, cwd: str | None = None) -> None:
        if not argv:
            raise ValueError(f"{name}: empty command")
        self.name, self.argv, self.env, self.logs, self.cwd = name, list(argv), env, logs, cwd
        self.orphan_grace = orphan_grace     # the reaper's SIGTERM-to-SIGKILL grace when the gateway has died
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[int | None] | None = None
        self.started_at: float | None = None
        self.stop_seconds: float | None = None   # how long the last stop() took

    @property
    def pid(self) -> int | None:
        """The reaper's pid (the leader of the child's session); the program runs as its child."""
        return self._proc.pid if self._proc is not None else None

    @property
    def program_pid(self) -> int | None:
        """The program's own pid (None before it started or after it exited)."""
        if self.pid is None or not self.running:
            return None
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                kids = f.read().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """The program's exit code; -N when a signal N ended it (as subprocess reports it)."""
        return self._proc.returncode if self._proc is not None else None

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: already started")
        # -I -S: the reaper needs only the standard library; no site-packages scan, no PYTHON* variables.
        cmd = [sys.executable, "-I", "-S", str(REAPER), "--grace", f"{self.orphan_grace:g}",
               "--parent", str(os.getpid()), "--", *self.argv]
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True)
        self.started_at = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"log:{self.name}")

    async def _read(self) -> None:
        """Output into the ring, line by line (a bare CR ends a transient line: progress bars). A line longer
        than the ring keeps is cut where the ring would cut it and the rest skipped up to its end."""
        assert self._proc is not None and self._proc.stdout is not None
        out, logs = self._proc.stdout, self.logs
        limit = logs.max_line + 64
        buf, skipping = b"", False
        while chunk := await out.read(READ_CHUNK):
            buf += chunk
            start = 0
            for m in _EOL.finditer(buf):
                if m.group() == b"\r" and m.end() == len(buf):
                    break                      # maybe the first half of a CRLF: wait for the next chunk
                if not skipping:
                    logs.append(buf[start:m.start()].decode("utf-8", errors="replace"),
                                transient=m.group() == b"\r")
                skipping, start = False, m.end()
            buf = buf[start:]
            if len(buf) > limit:               # a huge line: keep its head now, skip the rest
                if not skipping:
                    logs.append(buf.decode("utf-8", errors="replace"))
                buf, skipping = b"", True
            logs.touch()
        if buf and not skipping:
            logs.append(buf.decode("utf-8", errors="replace"))

    async def wait(self) -> int:
        """Until the process has exited and its output is read; its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        rc = await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), DRAIN_S)
        return rc

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM to the program's process group; SIGKILL to the group and every descendant after grace.
        Idempotent (concurrent calls share one stop); None if it was never started."""
        if self._proc is None:
            return None
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace), name=f"stop:{self.name}")
        return await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> int | None:
        t0 = time.monotonic()
        waiting = asyncio.ensure_future(self.wait())
        try:
            for sig, budget in ((signal.SIGTERM, grace), (signal.SIGUSR1, KILL_WAIT_S), (signal.SIGKILL, KILL_WAIT_S)):
                if waiting.done():
                    break
                # SIGTERM: the reaper passes it to the group; SIGUSR1: it SIGKILLs the group and what left it;
                # SIGKILL: the reaper itself is stuck (the program then gets its own parent-death SIGKILL).
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(sig)  # type: ignore[union-attr]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiting), budget)
            return await waiting if waiting.done() else None
        finally:
            if not waiting.done():
                waiting.cancel()
            self.stop_seconds = time.monotonic() - t0
