"""The limits of gateway/auth/limits.py kept in this process's memory (one gateway, no Redis)."""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable

from gateway.auth.limits import (DAY, LEASE_TTL, WINDOW, Admission, RateInfo, Refusal, Subject, distinct, periods,
                                 worst)


MAX_CHARGE = 2**53  # a request's tokens as charged: int64 room for any sum of them in a window


class _State:
    __slots__ = ("t", "a", "head", "base", "tokens", "leases", "next_expiry", "quota")

    def __init__(self) -> None:
        # The window: one admission time and one tpm charge (estimate, then usage) per admitted request, in
        # admission (== time) order, from index `head` on. Raw doubles and int64s in two arrays, not Python
        # objects: a window of 60 s at 10,000 req/s holds 600,000 entries, 10 MB here against 37 MB as floats
        # and ints in deques (measured with tracemalloc), and nothing for the collector's full passes to walk.
        # Entries before `head` have left the window; they are cut off in one memmove once they are the
        # larger part.
        self.t = array("d")
        self.a = array("q")
        self.head = 0
        self.base = 0  # the admission number of t[0]: a request's number finds its charge to settle
        self.tokens = 0  # sum of the charges in the window
        self.leases: dict[int, float] = {}  # lease token -> expiry
        # The earliest expiry among the leases (a lower bound once leases were released): the leases are
        # scanned only when it has passed, not kept in a heap whose released items would linger for a TTL.
        self.next_expiry = math.inf
        self.quota: dict[tuple[str, int], int] = {}  # ("d", day) / ("m", month) -> tokens charged

    @property
    def times(self) -> list[float]:
        """The admission times in the window (a copy: for tests and inspection)."""
        return self.t[self.head:].tolist()

    @property
    def amounts(self) -> list[int]:
        return self.a[self.head:].tolist()

    def prune(self, cut: float) -> None:
        t, a, i = self.t, self.a, self.head
        n = len(t)
        while i < n and t[i] <= cut:
            self.tokens -= a[i]
            i += 1
        if i > 1024 and i * 2 > n:
            del t[:i], a[:i]
            self.base += i
            i = 0
        self.head = i


class InProcess:
    """The LimitStore protocol's coroutines over a store whose every call completes at once (`*_now`): the
    Python store here and the C one (limits_native.py)."""

    def settle_now(self, adm: Admission, used_tokens: int) -> None:
        self.finish_now(adm, used_tokens, release=False)  # type: ignore[attr-defined]

    def release_now(self, adm: Admission) -> None:
        self.finish_now(adm, 0, settle=False)  # type: ignore[attr-defined]

    async def acquire(self, subjects: list[Subject], estimate_tokens: int, request_id: str) -> Admission:
        return self.acquire_now(subjects, estimate_tokens, request_id)  # type: ignore[attr-defined, no-any-return]

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        self.settle_now(admission, used_tokens)

    async def release(self, admission: Admission) -> None:
        self.release_now(admission)

    async def finish(self, admission: Admission, used_tokens: int) -> None:
        self.finish_now(admission, used_tokens)  # type: ignore[attr-defined]

    async def refresh(self, admission: Admission) -> bool:
        return self.refresh_now(admission)  # type: ignore[attr-defined, no-any-return]

    async def flush(self) -> None:
        """Nothing to wait for: every call has taken effect when it returns."""


class MemoryLimitStore(InProcess):
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
        self._day = self._month = -1
        self._keys: tuple[tuple[str, int], ...] = (("d", -1), ("m", -1))

    def _check(self, sub: Subject, st: _State, est: int, now: float, keys: tuple[tuple[str, int], ...],
               to_midnight: float, to_month: float) -> Refusal | None:
        lim, bad = sub.limits, None
        t = st.t
        if lim.rpm is not None and len(t) - st.head >= lim.rpm:
            retry = t[len(t) - lim.rpm] + self.window - now if lim.rpm else self.window
            bad = worst(bad, Refusal("rpm", sub.id, retry, lim.rpm == 0))
        if lim.tpm is not None and st.tokens + est > lim.tpm:
            retry, freed = self.window, 0
            if est <= lim.tpm:
                for i in range(st.head, len(t)):  # the oldest entries leave first
                    freed += st.a[i]
                    if st.tokens - freed + est <= lim.tpm:
                        retry = t[i] + self.window - now
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
        # Every limited request runs this, in the middle of ~100 µs of other work that leaves the caches cold:
        # each bytecode counts about three times what a tight loop shows (bench/auth.py). So one pass per
        # subject with the checks inline, the exact (slower) refusal analysis only when a check fails, the
        # calendar once a day, and nothing built that an admitted request does not need.
        now = self.clock()
        est = estimate_tokens if estimate_tokens > 0 else 0
        if len(subjects) > 1 and (len(subjects) > 2 or subjects[0].id == subjects[1].id):
            subjects = tuple(distinct(list(subjects)))
        elif type(subjects) is not tuple:
            subjects = tuple(subjects)
        if int(now // DAY) != self._day:
            self._new_day(now)
        keys = self._keys
        cut = now - self.window
        states = self._states
        bad: Refusal | None = None
        handle = []
        for sub in subjects:
            st = states.get(sub.id)
            if st is None:
                st = states[sub.id] = _State()
            t = st.t
            if len(t) > st.head and t[st.head] <= cut:
                st.prune(cut)
            if st.next_expiry <= now and st.leases:  # leases are released at once; only a lost one expires
                st.leases = {t: e for t, e in st.leases.items() if e > now}
                st.next_expiry = min(st.leases.values(), default=math.inf)
            lim = sub.limits
            q = st.quota
            if ((lim.rpm is not None and len(t) - st.head >= lim.rpm)
                    or (lim.tpm is not None and st.tokens + est > lim.tpm)
                    or (lim.concurrency is not None and len(st.leases) >= lim.concurrency)
                    or (lim.tokens_per_day is not None and q.get(keys[0], 0) + est > lim.tokens_per_day)
                    or (lim.tokens_per_month is not None and q.get(keys[1], 0) + est > lim.tokens_per_month)):
                day, month, to_midnight, to_month = periods(now)
                refusal = self._check(sub, st, est, now, keys, to_midnight, to_month)
                if refusal is not None:
                    bad = worst(bad, refusal)
            handle.append((sub, st, -1))
        self._seq += 1
        # Positional: the dataclass's field order (limits.py), cheaper than keywords on every request.
        adm = Admission(bad is None, None, None, 0.0, False, False, request_id, est, subjects, None, None,
                        self._seq, self._day, self._month)
        if bad is not None:
            adm.limit_name, adm.subject_id, adm.retry_after, adm.exceeds_limit = (
                bad.name, bad.subject_id, max(0.0, bad.retry), bad.exceeds)
        reqs: RateInfo | None = None
        toks: RateInfo | None = None
        window = self.window
        for i, (sub, st, _) in enumerate(handle):
            lim = sub.limits
            t = st.t
            if bad is None:
                if lim.rpm is not None or lim.tpm is not None:
                    handle[i] = (sub, st, st.base + len(t))  # its admission number in the window
                    amount = est if lim.tpm is not None else 0
                    t.append(now)
                    st.a.append(amount)
                    st.tokens += amount
                if lim.concurrency is not None:
                    expiry = now + self.lease_ttl
                    st.leases[adm.token] = expiry
                    if expiry < st.next_expiry:
                        st.next_expiry = expiry
                if lim.tokens_per_day is not None:
                    if keys[0] in st.quota:
                        st.quota[keys[0]] += est
                    else:
                        self._new_period(st, keys[0], est)
                if lim.tokens_per_month is not None:
                    if keys[1] in st.quota:
                        st.quota[keys[1]] += est
                    else:
                        self._new_period(st, keys[1], est)
            if lim.rpm is not None:
                remaining = lim.rpm - (len(t) - st.head)
                if reqs is None or remaining < reqs.remaining:
                    reqs = RateInfo(lim.rpm, remaining, t[-1] + window - now if len(t) > st.head else 0.0)
            if lim.tpm is not None:
                remaining = lim.tpm - st.tokens
                if toks is None or remaining < toks.remaining:
                    toks = RateInfo(lim.tpm, remaining, t[-1] + window - now if len(t) > st.head else 0.0)
        adm.requests, adm.tokens, adm.handle = reqs, toks, handle
        return adm

    def _new_day(self, now: float) -> None:
        day, month, _, _ = periods(now)
        self._day, self._month = day, month
        self._keys = (("d", day), ("m", month))  # the quota counters' keys, made once a day

    @staticmethod
    def _new_period(st: _State, key: tuple[str, int], est: int) -> None:
        """The first charge of a day or month; one over for a day is no longer settled into: dropped."""
        quota = st.quota
        for old in [k for k in quota if k[0] == key[0] and k[1] < key[1] - 1]:
            del quota[old]
        quota[key] = est

    def finish_now(self, adm: Admission, used_tokens: int, settle: bool = True, release: bool = True) -> None:
        """Settle the admission's charge to `used_tokens` and release its leases, in one pass (the request
        path's end); each happens at most once, and settle_now / release_now are this with one of them."""
        if not adm.allowed or adm.handle is None:
            return
        settle = settle and not adm.settled
        release = release and not adm.released
        if settle:
            adm.settled = True
        if release:
            adm.released = True
        # A backend's report is not trusted to fit an int64 charge: no limit is above 2**53 (settings).
        delta = (min(used_tokens, MAX_CHARGE) if used_tokens > 0 else 0) - adm.estimate if settle else 0
        keys = self._keys if adm.day == self._day else (("d", adm.day), ("m", adm.month))
        for sub, st, entry in adm.handle:
            if delta:
                i = entry - st.base  # < head: it left the window, which only holds what was admitted in it
                if entry >= 0 and i >= st.head and sub.limits.tpm is not None:
                    st.a[i] += delta
                    st.tokens += delta
                quota = st.quota
                if quota:
                    for key in keys:
                        if key in quota:
                            quota[key] += delta
            if release and st.leases:
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

    def refresh_held(self, older_than: float) -> None:
        """Extend by a TTL every lease taken or refreshed more than `older_than` seconds ago and not yet
        expired: the gatekeeper's keeper (enforce.py), since in one process a held lease is a running request."""
        now = self.clock()
        due = now + self.lease_ttl - older_than
        for st in self._states.values():
            leases = st.leases
            for token, expiry in leases.items():
                if now < expiry < due:
                    leases[token] = now + self.lease_ttl

    async def close(self) -> None:
        self._states.clear()
