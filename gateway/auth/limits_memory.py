"""The limits of gateway/auth/limits.py kept in this process's memory (one gateway, no Redis)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from gateway.auth.limits import (LEASE_TTL, WINDOW, Admission, RateInfo, Refusal, Subject, distinct, periods,
                                 worst)


class _State:
    __slots__ = ("times", "amounts", "base", "tokens", "leases", "next_expiry", "quota")

    def __init__(self) -> None:
        # The window: one admission time and one tpm charge (estimate, then usage) per admitted request, in
        # admission (== time) order. Plain floats and ints, not an object per request: a window of 60 s at
        # 10,000 req/s holds 600,000 of them, and objects the garbage collector tracks made every full
        # collection walk them all (a third of the gateway's throughput, measured).
        self.times: deque[float] = deque()
        self.amounts: deque[int] = deque()
        self.base = 0  # the admission number of times[0]: a request's number finds its charge to settle
        self.tokens = 0  # sum of `amounts`
        self.leases: dict[str, float] = {}  # lease token -> expiry
        # The earliest expiry among the leases (a lower bound once leases were released): the leases are
        # scanned only when it has passed, not kept in a heap whose released items would linger for a TTL.
        self.next_expiry = math.inf
        self.quota: dict[tuple[str, int], int] = {}  # ("d", day) / ("m", month) -> tokens charged


class MemoryLimitStore:
    """One process: every call runs to completion on the event loop, so it is atomic without locks.

    Per call: amortised O(1) per subject for rpm/tpm (pruning pops each entry once) and for leases (a release
    drops its lease; expired ones, i.e. lost, are swept when the earliest expiry has passed);
    a refusal's retry time walks the window (O(n), refusals only).
    """

    def __init__(self, *, window: float = WINDOW, lease_ttl: float = LEASE_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self.window, self.lease_ttl, self.clock = window, lease_ttl, clock
        self._states: dict[str, _State] = {}
        self._seq = 0
        self._keys: tuple[tuple[str, int], ...] = (("d", -1), ("m", -1))

    def _prune(self, st: _State, now: float) -> None:
        cut = now - self.window
        times = st.times
        while times and times[0] <= cut:
            times.popleft()
            st.tokens -= st.amounts.popleft()
            st.base += 1
        if st.leases and st.next_expiry <= now:   # leases are released at once; only a lost one expires here
            st.leases = {t: e for t, e in st.leases.items() if e > now}
            st.next_expiry = min(st.leases.values(), default=math.inf)

    def _check(self, sub: Subject, st: _State, est: int, now: float, keys: tuple[tuple[str, int], ...],
               to_midnight: float, to_month: float) -> Refusal | None:
        lim, bad = sub.limits, None
        if lim.rpm is not None and len(st.times) >= lim.rpm:
            retry = st.times[len(st.times) - lim.rpm] + self.window - now if lim.rpm else self.window
            bad = worst(bad, Refusal("rpm", sub.id, retry, lim.rpm == 0))
        if lim.tpm is not None and st.tokens + est > lim.tpm:
            retry, freed = self.window, 0
            if est <= lim.tpm:
                for t, amount in zip(st.times, st.amounts):  # the oldest entries leave first
                    freed += amount
                    if st.tokens - freed + est <= lim.tpm:
                        retry = t + self.window - now
                        break
            bad = worst(bad, Refusal("tpm", sub.id, retry, est > lim.tpm))
        if lim.concurrency is not None and len(st.leases) >= lim.concurrency:
            soonest = min(st.leases.values(), default=now + 1.0)
            bad = worst(bad, Refusal("concurrency", sub.id, min(1.0, soonest - now), lim.concurrency == 0))
        q = lim.tokens_per_day
        if q is not None and st.quota.get(keys[0], 0) + est > q:
            bad = worst(bad, Refusal("tokens_per_day", sub.id, to_midnight, est > q))
        q = lim.tokens_per_month
        if q is not None and st.quota.get(keys[1], 0) + est > q:
            bad = worst(bad, Refusal("tokens_per_month", sub.id, to_month, est > q))
        return bad

    def acquire_now(self, subjects: list[Subject] | tuple[Subject, ...], estimate_tokens: int,
                    request_id: str) -> Admission:
        # The request path's cost (bench/auth.py): no object per subject beyond its handle, nothing built that
        # an admitted request does not need.
        now, est = self.clock(), max(0, estimate_tokens)
        if len(subjects) > 1 and (len(subjects) > 2 or subjects[0].id == subjects[1].id):
            subjects = tuple(distinct(list(subjects)))
        day, month, to_midnight, to_month = periods(now)
        keys = self._keys
        if keys[0][1] != day or keys[1][1] != month:
            keys = self._keys = (("d", day), ("m", month))  # the quota counters' keys, made once a day
        states = []
        bad: Refusal | None = None
        for sub in subjects:
            st = self._states.get(sub.id)
            if st is None:
                st = self._states[sub.id] = _State()
            states.append(st)
            self._prune(st, now)
            refusal = self._check(sub, st, est, now, keys, to_midnight, to_month)
            if refusal is not None:
                bad = worst(bad, refusal)
        self._seq += 1
        adm = Admission(bad is None, request_id=request_id, estimate=est,
                        subjects=subjects if type(subjects) is tuple else tuple(subjects),
                        token=f"{request_id}#{self._seq}", day=day, month=month)
        if bad is not None:
            adm.limit_name, adm.subject_id, adm.retry_after, adm.exceeds_limit = (
                bad.name, bad.subject_id, max(0.0, bad.retry), bad.exceeds)
        reqs: RateInfo | None = None
        toks: RateInfo | None = None
        handle = []
        window = self.window
        for sub, st in zip(subjects, states):
            lim = sub.limits
            entry = -1  # its admission number in the window
            if bad is None:
                if lim.rpm is not None or lim.tpm is not None:
                    entry = st.base + len(st.times)
                    amount = est if lim.tpm is not None else 0
                    st.times.append(now)
                    st.amounts.append(amount)
                    st.tokens += amount
                if lim.concurrency is not None:
                    expiry = now + self.lease_ttl
                    st.leases[adm.token] = expiry
                    if expiry < st.next_expiry:
                        st.next_expiry = expiry
                if lim.tokens_per_day is not None:
                    self._charge(st, keys[0], est)
                if lim.tokens_per_month is not None:
                    self._charge(st, keys[1], est)
            handle.append((sub, st, entry))
            times = st.times
            reset = times[-1] + window - now if times else 0.0
            if lim.rpm is not None:
                info = RateInfo(lim.rpm, lim.rpm - len(times), reset)
                if reqs is None or info.remaining < reqs.remaining:
                    reqs = info
            if lim.tpm is not None:
                info = RateInfo(lim.tpm, lim.tpm - st.tokens, reset)
                if toks is None or info.remaining < toks.remaining:
                    toks = info
        adm.requests, adm.tokens, adm.handle = reqs, toks, handle
        return adm

    @staticmethod
    def _charge(st: _State, key: tuple[str, int], est: int) -> None:
        quota = st.quota
        if key not in quota:  # a new period: one over for a day is no longer settled into
            for old in [k for k in quota if k[0] == key[0] and k[1] < key[1] - 1]:
                del quota[old]
            quota[key] = est
        else:
            quota[key] += est

    def settle_now(self, adm: Admission, used_tokens: int) -> None:
        if not adm.allowed or adm.settled or adm.handle is None:
            return
        adm.settled = True
        delta = max(0, used_tokens) - adm.estimate
        for sub, st, entry in adm.handle:
            i = entry - st.base  # < 0: it left the window, and the window only holds what was admitted in it
            if entry >= 0 and i >= 0 and sub.limits.tpm is not None:
                st.amounts[i] += delta  # a deque indexes from its nearer end: a recent request is cheap
                st.tokens += delta
            for key in (("d", adm.day), ("m", adm.month)):
                if key in st.quota:
                    st.quota[key] += delta

    def release_now(self, adm: Admission) -> None:
        if not adm.allowed or adm.released or adm.handle is None:
            return
        adm.released = True
        for _sub, st, _entry in adm.handle:
            st.leases.pop(adm.token, None)

    def refresh_now(self, adm: Admission) -> bool:
        """Extend the admission's leases by a TTL; False if one had already expired (it is not revived)."""
        if not adm.allowed or adm.released or adm.handle is None:
            return False
        now, ok = self.clock(), True
        for sub, st, _entry in adm.handle:
            if sub.limits.concurrency is None:
                continue
            if st.leases.get(adm.token, now) > now:
                st.leases[adm.token] = now + self.lease_ttl
                # next_expiry stays a lower bound: at worst one early scan finds nothing expired
            else:
                st.leases.pop(adm.token, None)
                ok = False
        return ok

    async def acquire(self, subjects: list[Subject], estimate_tokens: int, request_id: str) -> Admission:
        return self.acquire_now(subjects, estimate_tokens, request_id)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        self.settle_now(admission, used_tokens)

    async def release(self, admission: Admission) -> None:
        self.release_now(admission)

    async def finish(self, admission: Admission, used_tokens: int) -> None:
        self.settle_now(admission, used_tokens)
        self.release_now(admission)

    async def refresh(self, admission: Admission) -> bool:
        return self.refresh_now(admission)

    async def flush(self) -> None:
        """Nothing to wait for: every call has taken effect when it returns."""

    async def close(self) -> None:
        self._states.clear()
