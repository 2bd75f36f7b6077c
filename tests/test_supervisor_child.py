"""gateway.supervisor's process layer with real processes: the log ring's bounds, a Child's output, exit codes
and stop (SIGTERM once, SIGKILL after the grace, the whole group and what escaped it), the reaper's start
cost, and no orphan: a stand-in gateway (tests/supervisor_parent.py) running a real llama-server and programs
that spawn grandchildren is SIGKILLed or SIGTERMed, and every process of its tree is gone within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.supervisor.child import REAPER, Child
from gateway.supervisor.logs import LogRing
from tests.procs import ROOT, free_port

PY = sys.executable


def gone(pid: int) -> bool:
    """No such process, or a zombie (its parent, not us, has yet to collect it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):   # gone, or going while we read
        return True


def tree(root: int) -> dict[int, str]:
    """Every live descendant of root (pid -> command line)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = {}, [root]
    while todo:
        for pid in parents.get(todo.pop(), []):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            todo.append(pid)
    return {pid: cmd for pid, cmd in out.items() if not gone(pid)}


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if not gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def run_child(argv: list[str], logs: LogRing | None = None, env: dict[str, str] | None = None) -> tuple[int, LogRing]:
    ring = logs if logs is not None else LogRing()

    async def go() -> int:
        c = Child("t", argv, env or dict(os.environ), ring)
        await c.start()
        return await c.wait()

    return asyncio.run(go()), ring


# -- LogRing ----------------------------------------------------------------------------------------------------
def test_ring_bounds_lines_and_bytes() -> None:
    ring = LogRing(max_lines=5, max_bytes=1000)
    for i in range(12):
        ring.append(f"line {i}\n")
    assert ring.tail() == [f"line {i}" for i in range(7, 12)] and ring.count == 12
    assert ring.tail(2) == ["line 10", "line 11"] and ring.tail(0) == [] and ring.tail(99) == ring.tail()
    ring = LogRing(max_lines=1000, max_bytes=100)
    for i in range(50):
        ring.append(f"{i:09d}")                      # 9 bytes each: 11 fit in 100
    assert ring.size <= 100 and len(ring) == 11 and ring.tail()[-1] == "000000049"


def test_ring_cuts_a_huge_line_and_keeps_junk_readable() -> None:
    ring = LogRing(max_lines=10, max_bytes=4096, max_line=1000)
    ring.append("before")
    ring.append("x" * 1_000_000)
    ring.append(b"\xff\xfe bad bytes \xc3")
    (_, huge, junk) = ring.tail()
    assert huge.startswith("xxx") and huge.endswith("more bytes]") and len(huge.encode()) <= 1000
    assert "999" in huge.rsplit("[...", 1)[1]       # says how much was cut
    assert junk == "\ufffd\ufffd bad bytes \ufffd"
    assert ring.size <= 4096
    ring = LogRing(max_lines=10, max_bytes=100)      # a line is cut to the whole ring's size at most
    ring.append("y" * 500)
    assert len(ring) == 1 and ring.size <= 100


def test_ring_transient_lines_replace_each_other() -> None:
    ring = LogRing()
    ring.append("start")
    for pct in range(0, 101, 10):
        ring.append(f"downloading {pct}%", transient=True)
    ring.append("downloaded")
    assert ring.tail() == ["start", "downloaded"] and ring.count == 13
    ring.append("", transient=True)                  # tqdm's bars start with a CR
    ring.append("step 1/2", transient=True)
    ring.append("")                                  # "step 1/2\r" then "\n": the bar's last state stays
    ring.append("next")
    assert ring.tail() == ["start", "downloaded", "step 1/2", "next"]
    t = ring.last_at
    time.sleep(0.01)
    ring.touch()
    assert ring.last_at > t


# -- Child: output, exit codes ----------------------------------------------------------------------------------
def test_child_output_lines_progress_bars_huge_lines_and_junk() -> None:
    script = (
        "import sys, time\n"
        "w = sys.stdout.buffer.write\n"
        "w(b'first\\nsecond\\r\\n'); sys.stdout.flush(); time.sleep(0.05)\n"
        "w(b'p 10%\\r'); sys.stdout.flush(); time.sleep(0.05)\n"     # a CR at the end of a chunk
        "w(b'\\np 20%\\rp 30%\\rloaded\\n')\n"
        "w(b'\\xff\\xfe junk\\n')\n"
        "w(b'z' * 3_000_000 + b'\\nafter huge\\n')\n"
        "w(b'no newline at the end')\n"
    )
    rc, ring = run_child([PY, "-c", script], LogRing(max_line=2000))
    lines = ring.tail()
    assert rc == 0
    assert lines[:4] == ["first", "second", "p 10%", "loaded"], lines
    assert lines[4] == "\ufffd\ufffd junk"
    assert lines[5].startswith("zzz") and lines[5].endswith("more bytes]") and len(lines[5]) <= 2000
    assert lines[6:] == ["after huge", "no newline at the end"]


@pytest.mark.parametrize(("argv", "code"), [
    (["sh", "-c", "echo bye; exit 3"], 3),
    (["sh", "-c", "kill -9 $$"], -9),
    (["sh", "-c", "kill -TERM $$"], -15),
])
def test_child_exit_code_is_the_programs(argv: list[str], code: int) -> None:
    assert run_child(argv)[0] == code


def test_missing_program_exits_127_saying_why() -> None:
    rc, ring = run_child(["/nonexistent/llama-server", "-m", "x"])
    assert rc == 127
    assert any("cannot run '/nonexistent/llama-server'" in line for line in ring.tail()), ring.tail()


def test_reaper_does_not_start_the_program_when_its_parent_is_already_gone(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # --parent names a pid that is not our parent: as if the gateway died between fork and prctl.
    p = subprocess.run([PY, "-I", "-S", str(REAPER), "--parent", "1", "--", "touch", str(marker)], timeout=10)
    assert p.returncode == 137 and not marker.exists()
    p = subprocess.run([PY, "-I", "-S", str(REAPER), "--parent", str(os.getpid()), "--", "touch", str(marker)],
                       timeout=10)
    assert p.returncode == 0 and marker.exists()


def test_reaper_start_cost() -> None:
    """The wrapper's cost over starting the program directly (both to exit, `true`), median of 7."""
    async def once(wrapped: bool) -> float:
        t0 = time.perf_counter()
        if wrapped:
            c = Child("t", ["true"], dict(os.environ), LogRing())
            await c.start()
            assert await c.wait() == 0
        else:
            p = await asyncio.create_subprocess_exec("true")
            assert await p.wait() == 0
        return time.perf_counter() - t0

    async def median(wrapped: bool) -> float:
        return sorted([await once(wrapped) for _ in range(7)])[3]

    direct, wrapped = asyncio.run(median(False)), asyncio.run(median(True))
    sys.stderr.write(f"\nreaper start cost: {1000 * (wrapped - direct):.1f} ms ({1000 * wrapped:.1f} ms wrapped, "
                     f"{1000 * direct:.1f} ms direct)\n")
    assert wrapped - direct < 0.5


# -- Child: stop ------------------------------------------------------------------------------------------------
def test_stop_sends_one_sigterm_to_the_group() -> None:
    # Counts SIGTERMs, then exits after 0.5 s (llama-server and uvicorn take a second one as "quit at once").
    script = ("import signal, sys, time, subprocess\n"
              "n = []\n"
              "signal.signal(signal.SIGTERM, lambda *a: n.append(1))\n"
              "kid = subprocess.Popen(['sleep', '1000'])\n"
              "print('up', kid.pid, flush=True)\n"
              "while not n: time.sleep(0.01)\n"
              "time.sleep(0.5)\n"
              "print('terms', len(n), 'kid', kid.poll(), flush=True)\n")
    ring = LogRing()

    async def go() -> tuple[int | None, int | None, Child]:
        c = Child("t", [PY, "-c", script], dict(os.environ), ring)
        await c.start()
        while ring.count == 0:
            await asyncio.sleep(0.02)
        program = c.program_pid
        rc = await c.stop(5)
        return rc, program, c

    rc, program, c = asyncio.run(go())
    assert rc == 0 and c.returncode == 0 and not c.running
    assert ring.tail()[-1] == "terms 1 kid -15", ring.tail()   # one SIGTERM, and its grandchild had it too
    assert program is not None and gone(program) and gone(c.pid)  # type: ignore[arg-type]
    assert 0.4 < c.stop_seconds < 3  # type: ignore[operator]


def test_stop_kills_after_grace_including_what_escaped_the_group(tmp_path: Path) -> None:
    # Ignores SIGTERM, has a grandchild in its group and one in a session of its own (setsid: out of the group).
    script = ("import signal, subprocess, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "a = subprocess.Popen(['sleep', '1000'])\n"
              "b = subprocess.Popen(['sleep', '1001'], start_new_session=True)\n"
              "print('up', a.pid, b.pid, flush=True)\n"
              "time.sleep(1000)\n")
    ring = LogRing()

    async def go() -> tuple[int | None, list[int], Child]:
        c = Child("t", [PY, "-c", script], dict(os.environ), ring)
        await c.start()
        while ring.count == 0:
            await asyncio.sleep(0.02)
        pids = [c.pid, *tree(c.pid)]  # type: ignore[arg-type]
        first, second = await asyncio.gather(c.stop(0.5), c.stop(0.5))   # one stop, shared
        assert first == second
        assert await c.stop(0.5) == first                                  # and again once it has exited
        return first, pids, c

    rc, pids, c = asyncio.run(go())
    assert len(pids) == 4, pids      # reaper, program, two sleeps
    assert rc == -9 and not wait_gone(pids, 2.0)
    assert 0.5 <= c.stop_seconds < 3  # type: ignore[operator]


def test_stop_of_a_child_never_started_or_already_exited() -> None:
    async def go() -> tuple[int | None, int | None]:
        never = Child("n", ["true"], dict(os.environ), LogRing())
        done = Child("d", ["sh", "-c", "exit 4"], dict(os.environ), LogRing())
        await done.start()
        await done.wait()
        return await never.stop(), await done.stop(1)

    assert asyncio.run(go()) == (None, 4)


# -- no orphan when the gateway dies ----------------------------------------------------------------------------
COMMANDS = [
    ["bash", "-c", "sleep 1000 & echo up; wait"],                                          # shell + grandchild
    [PY, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
     "time.sleep(1000)']); print('up', flush=True); time.sleep(1000)"],                  # python spawning python
    [PY, "-c", "import subprocess, time; subprocess.Popen(['sleep', '1002'], start_new_session=True); "
     "print('up', flush=True); time.sleep(1000)"],                                       # escaped its group
    [PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
     "time.sleep(1000)"],                                                                # needs the SIGKILL
]


@pytest.mark.llamacpp
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_orphan_when_the_gateway_dies(sig: int, llama_binary: Path, tiny_gguf: Path) -> None:
    port = free_port()
    params = {"model": str(tiny_gguf), "host": "127.0.0.1", "port": port, "gpus": [], "context": 256,
              "binary": str(llama_binary)}
    spec = {"launch": {"kind": "llamacpp", "params": params}, "commands": COMMANDS, "grace": 2}
    procs: dict[int, str] = {}
    with subprocess.Popen([PY, "-m", "tests.supervisor_parent", json.dumps(spec)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as parent:
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline()
            assert line == b"UP\n", line + parent.stdout.read(4000)
            time.sleep(0.2)
            procs = tree(parent.pid)
            cmds = list(procs.values())
            assert sum(str(llama_binary) in c for c in cmds) >= 1
            assert any(c == "sleep 1000" for c in cmds) and any(c == "sleep 1002" for c in cmds)
            assert sum("time.sleep(1000)" in c for c in cmds) >= 3, cmds   # incl. the python grandchild
            assert len(procs) >= 13, procs   # 5 reapers, 5 programs, 3 grandchildren
            t0 = time.monotonic()
            parent.send_signal(sig)
            parent.wait(10)
            left = wait_gone(list(procs), 10.0)
            took = time.monotonic() - t0
            assert not left, {p: procs[p] for p in left}
            assert took < 2 + 4             # the grace the reapers were given, then SIGKILL
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, "llama-server's port is still open"
            sys.stderr.write(f"\n{signal.Signals(sig).name} to the parent: its {len(procs)} descendants gone in "
                             f"{took:.2f}s (one ignores SIGTERM: the reaper's 2 s grace)\n")
        finally:
            parent.kill()
            for pid in procs:              # a failed run must not leave them behind either
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)
