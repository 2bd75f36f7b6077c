"""The wrapper each launched backend runs under: `python reaper.py [--grace S] [--parent PID] -- argv...`.

Why a wrapper: a parent-death signal (PR_SET_PDEATHSIG) reaches only the direct child, while vLLM and FastChat
start grandchildren (vLLM's EngineCore). This process asks the kernel for SIGTERM when the gateway dies,
becomes a child subreaper (orphaned descendants are re-parented to it, not to init), and runs the program in
a process group of its own. Then:
- SIGTERM/SIGINT (the gateway's stop): forwarded to the program's group;
- SIGUSR1 (the gateway's grace ran out): SIGKILL to the group and every descendant;
- the gateway died (SIGTERM arrives and getppid() changed): SIGTERM to the group, SIGKILL after --grace;
- the program exited: what it left behind is stopped the same way; exits with the program's exit code (a
  program killed by signal N kills this process with N, so the gateway sees the same -N).
Linux only for the parent-death part; stdlib only and no gateway imports (it is run by path, not -m) to
start fast.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HANDLED = {*STOP_SIGNALS, signal.SIGUSR1, signal.SIGCHLD}


def _prctl(option: int, arg: int) -> bool:
    """True when applied (Linux); elsewhere there is no parent-death signal and main() polls getppid()."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")
    return True


def _children() -> list[int]:
    """This process's direct children (orphaned descendants are re-parented here: we are a subreaper)."""
    me = os.getpid()
    try:   # Linux >= 3.5 with CONFIG_PROC_CHILDREN: one read instead of a scan of /proc
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(program: int, status: list[int]) -> None:
    """Collects every exited child; the program's wait status goes into status."""
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == program:
            status.append(st)


def _spawn(argv: list[str], me: int) -> int:
    """fork + exec in a new process group; an exec failure is reported through a close-on-exec pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setpgid(0, 0)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):   # Python ignores these; an exec'd program must not
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)   # if this wrapper is itself killed, the program goes too
            if os.getppid() != me:
                os._exit(137)
            os.execvp(argv[0], argv)
        except BaseException as exc:  # noqa: B036 - the forked child must never return into the caller
            os.write(w, f"{exc}".encode(errors="replace"))
        os._exit(127)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        error = f.read()
    if error:
        os.waitpid(pid, 0)
        sys.stderr.write(f"reaper: cannot run {argv[0]!r}: {error.decode(errors='replace')}\n")
        sys.exit(127)
    return pid


def _finish(program: int, status: list[int], deadline: float, alive: bool) -> None:
    """Stops what is left: the program's group (SIGTERM unless already sent, SIGKILL at the deadline),
    then every descendant that left the group, until no child remains."""
    if alive:
        _signal(program, signal.SIGTERM, group=True)
    while time.monotonic() < deadline:
        _reap(program, status)
        try:
            os.killpg(program, 0)
        except (ProcessLookupError, PermissionError):
            break
        signal.sigtimedwait([signal.SIGCHLD], 0.05)
    _signal(program, signal.SIGKILL, group=True)
    while True:
        _reap(program, status)
        kids = _children()
        if not kids:
            return
        for pid in kids:
            _signal(pid, signal.SIGKILL)
        signal.sigtimedwait([signal.SIGCHLD], 0.05)


def main(args: list[str]) -> None:
    grace, parent = 10.0, os.getppid()
    while args and args[0] != "--":
        opt, value, *args = args
        if opt == "--grace":
            grace = float(value)
        elif opt == "--parent":
            parent = int(value)
        else:
            sys.exit(f"reaper: unknown option {opt}")
    argv = args[1:]
    if not argv:
        sys.exit("usage: reaper.py [--grace S] [--parent PID] -- program [args...]")
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)   # taken synchronously by sigtimedwait below
    told = _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)   # the kernel signals us when the gateway dies
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:          # the gateway died before the prctl: never start the program
        sys.exit(137)
    program = _spawn(argv, os.getpid())
    status: list[int] = []
    deadline: float | None = None       # set once the group must be gone (parent died / program exited)
    termed = False                      # the group has had its SIGTERM (never send it twice: a second one
                                        # means "quit at once" to llama-server, uvicorn, vLLM)
    while not status:
        if deadline is None and told:   # nothing to time: sleep until a signal (the parent's death is one)
            info = signal.sigwaitinfo(HANDLED)
        else:
            info = signal.sigtimedwait(HANDLED, 0.05 if deadline is not None else 0.5)
        _reap(program, status)
        if status:
            break
        if info is not None and info.si_signo in STOP_SIGNALS:
            if os.getppid() != parent:   # parent death: nobody will escalate for us
                deadline = time.monotonic() + grace
            _signal(program, info.si_signo, group=True)
            termed = True
        elif info is not None and info.si_signo == signal.SIGUSR1:
            deadline = time.monotonic()
        elif not told and os.getppid() != parent and deadline is None:   # no parent-death signal here
            _signal(program, signal.SIGTERM, group=True)
            deadline, termed = time.monotonic() + grace, True
        if deadline is not None and time.monotonic() >= deadline:
            _finish(program, status, deadline, alive=False)
    # The program is gone; what it left in its group (or re-parented here) gets the same treatment.
    _finish(program, status, (deadline or time.monotonic() + grace), alive=not termed)
    st = status[0]
    if os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        import resource   # only here: every import is start-up time
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # a SIGSEGV passed on must not dump this process
        if sig != signal.SIGKILL:           # SIGKILL's action cannot be set (and is to die already)
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(st))


if __name__ == "__main__":
    main(sys.argv[1:])
