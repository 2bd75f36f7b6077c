"""The scheduler: resident runners (loading, keep_alive, expiry), per-model slots and the bounded
wait queue (server/sched.go)."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .gojson import now_ns
from .binding import parse_duration_ns, Reply
from .catalog import model_facts, ModelInfo, Name, parse_name

ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"


# ---------------------------------------------------------------------------------------------------
# Scheduler: resident runners, keep_alive, slots, queue
# ---------------------------------------------------------------------------------------------------

@dataclass
class Runner:
    info: ModelInfo
    num_ctx: int
    ctx_auto: bool
    session_ns: int
    slots: asyncio.Semaphore
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)
    refcount: int = 0
    expires_ns: int | None = None
    timer: asyncio.TimerHandle | None = None
    load_task: asyncio.Task | None = None


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.name = a.name
        self.version = a.version
        self.load_seconds = a.load_seconds
        self.max_queue = a.max_queue
        self.num_parallel = max(a.num_parallel, 1)
        self.max_loaded = a.max_loaded
        self.default_ctx = a.context_length
        self.default_keep_ns = parse_duration_ns(_num_or_str(a.keep_alive))
        self.host_guard = a.host_guard
        self.models: dict[str, ModelInfo] = {}
        start = now_ns()
        thinking = {parse_name(m).key for m in _split(a.thinking_models)}
        vision = {parse_name(m).key for m in _split(a.vision_models)}
        all_names = [(m, False) for m in _split(a.models)] + [(m, True) for m in _split(a.embed_models)]
        for i, (m, embed) in enumerate(all_names):
            n = parse_name(m)
            caps = ["embedding"] if embed else ["completion", "tools"]
            if n.key in vision:
                caps.append("vision")
            if n.key in thinking:
                caps.append("thinking")
            self.models[n.key] = ModelInfo(n, caps, start - (i + 1) * 60_000_000_000 - 123_456_789,
                                           model_facts(n, embed))
        self.runners: dict[str, Runner] = {}
        self.waiting = 0
        self.running = 0
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.cancelled = self.completed = self.rejected = self.loads = self.unloads = 0
        self.release = asyncio.Event()

    def lookup(self, name: Name, exact: bool = False) -> ModelInfo | None:
        info = self.models.get(name.key)
        if info is not None and exact and info.name.full != name.full:
            return None  # /api/embeddings opens the manifest path as given: case-sensitive on Linux
        return info

    # --- runners ---------------------------------------------------------------------------------
    def effective_ctx(self, info: ModelInfo, requested: int | None) -> int:
        n = requested if requested is not None else self.default_ctx
        n = max(n, 4)
        if "vision" in info.caps:
            n = max(n, 2048)
        return min(n, info.facts["ctx"])

    def needs_reload(self, r: Runner, requested: int | None) -> bool:
        if r.ctx_auto and requested is None:
            return False
        return r.num_ctx != self.effective_ctx(r.info, requested)

    def unload(self, r: Runner) -> None:
        if self.runners.get(r.info.name.key) is r:
            del self.runners[r.info.name.key]
            self.unloads += 1
        if r.timer:
            r.timer.cancel()
            r.timer = None
        if r.load_task and not r.load_task.done():
            r.load_task.cancel()
        r.unloaded.set()

    def expire(self, r: Runner) -> None:
        """sched.expireRunner: expire now, unload as soon as it is idle."""
        r.expires_ns = now_ns()
        if r.timer:
            r.timer.cancel()
            r.timer = None
        r.session_ns = 0
        if r.refcount <= 0:
            self.unload(r)

    def release_ref(self, r: Runner) -> None:
        r.refcount -= 1
        if r.refcount > 0 or r.unloaded.is_set():
            return
        if r.session_ns <= 0:
            self.unload(r)
            return
        r.expires_ns = now_ns() + r.session_ns
        if r.timer:
            r.timer.cancel()
            r.timer = None
        if r.session_ns < (1 << 62):
            r.timer = asyncio.get_running_loop().call_later(r.session_ns / 1e9, self._timer_expired, r)

    def _timer_expired(self, r: Runner) -> None:
        r.timer = None
        if r.refcount <= 0:
            self.unload(r)

    def start_load(self, info: ModelInfo, requested_ctx: int | None, keep_ns: int | None,
                   seconds: float) -> Runner:
        r = Runner(info, self.effective_ctx(info, requested_ctx), requested_ctx is None,
                   keep_ns if keep_ns is not None else self.default_keep_ns, asyncio.Semaphore(self.num_parallel))
        self.runners[info.name.key] = r

        async def load() -> None:
            if seconds > 0:
                await asyncio.sleep(seconds)
            r.loaded.set()
            self.loads += 1

        r.load_task = asyncio.get_running_loop().create_task(load())
        return r

    async def get_runner(self, info: ModelInfo, keep_ns: int | None, requested_ctx: int | None) -> Runner:
        while True:
            r = self.runners.get(info.name.key)
            if r is not None:
                if self.needs_reload(r, requested_ctx):
                    self.expire(r)
                    await r.unloaded.wait()
                    continue
                r.refcount += 1
                if r.timer:
                    r.timer.cancel()
                    r.timer = None
                if keep_ns is not None:
                    r.session_ns = keep_ns
                try:
                    if not r.loaded.is_set():
                        await asyncio.shield(r.load_task)
                except asyncio.CancelledError:
                    self.release_ref(r)
                    if not r.loaded.is_set() and r.refcount <= 0:
                        self.unload(r)  # the load is abandoned with its last requester, as WaitUntilRunning(ctx)
                    raise
                return r
            if self.max_loaded > 0 and len(self.runners) >= self.max_loaded:
                victims = sorted(self.runners.values(), key=lambda x: x.session_ns)
                idle = [v for v in victims if v.refcount <= 0]
                victim = (idle or victims)[0]
                self.expire(victim)
                await victim.unloaded.wait()
                continue
            self.start_load(info, requested_ctx, keep_ns, self.load_seconds)


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _num_or_str(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


@dataclass
class Lease:
    st: State
    runner: Runner | None = None
    slot: bool = False
    waiting: bool = False
    loaded_ns: int = 0

    def close(self) -> None:
        if self.waiting:
            self.st.waiting -= 1
            self.waiting = False
        if self.slot and self.runner:
            self.runner.slots.release()
            self.st.running -= 1
            self.slot = False
        if self.runner:
            r, self.runner = self.runner, None
            self.st.release_ref(r)


async def schedule(st: State, lease: Lease, info: ModelInfo, keep_ns: int | None, requested_ctx: int | None,
                   need_slot: bool) -> None:
    r = st.runners.get(info.name.key)
    ready = r is not None and r.loaded.is_set() and not st.needs_reload(r, requested_ctx)
    would_wait = not ready or (need_slot and r is not None and r.slots.locked())
    if would_wait:
        if st.waiting >= st.max_queue:
            st.rejected += 1
            raise Reply(503, ERR_MAX_QUEUE)
        st.waiting += 1
        lease.waiting = True
    lease.runner = await st.get_runner(info, keep_ns, requested_ctx)
    lease.loaded_ns = time.monotonic_ns()
    if need_slot:
        await lease.runner.slots.acquire()
        lease.slot = True
        st.running += 1
    if lease.waiting:
        st.waiting -= 1
        lease.waiting = False
