"""Admission limits per key and per team, exact: rpm, tpm, concurrency leases, day/month token quotas.

A request is checked against all its subjects (its key and its team) in one atomic step: either every
subject admits it and every subject is charged, or nothing is charged anywhere.

Semantics (the same in `MemoryLimitStore` and `gateway.auth.limits_redis.RedisLimitStore`):
- rpm: a sliding window log. A request admitted at time t counts while t > now - window (60 s), so in
  every half-open interval of one window at most `rpm` requests are admitted (no 2x burst at a boundary),
  and a request is refused only when `rpm` requests were admitted in the window before it.
- tpm: the same window, counting each admitted request's tokens at its admission instant: its estimate
  until it is settled, its real usage afterwards (a settle after the request left the window changes
  nothing: the window only ever holds requests admitted in it).
- concurrency: a lease per request that expires `lease_ttl` (300 s) after it was taken or last refreshed
  (`refresh`), so a replica that dies without `release` frees its slots after the TTL.
- tokens_per_day / tokens_per_month: UTC calendar day / month of admission. The estimate is reserved at
  admission; settle replaces it by real usage in the period it was reserved in (a refund or a charge).

Overshoot bound (stated for a quota Q; for a tpm limit Q the same holds for the requests admitted in any
one window, since all of them are still in the window when the last of them is admitted). Let
request i reserve its estimate E_i and really use U_i, with excess X_i = max(0, U_i - E_i). A request is
admitted only if (settled usage + outstanding reservations + E_i) <= Q, so when the last request L is
admitted, with F the requests admitted before L and not yet settled (in flight):

    total usage charged to the period  <=  Q + X_L + sum over j in F of X_j

- If estimates are upper bounds (prompt tokens + `max_tokens`, enforced by the backend), X = 0: the
  quota is never exceeded, however many requests run in parallel or however long they stream.
- Otherwise the overshoot is at most the excess of the requests in flight at once, so at most
  `concurrency` x (largest excess), and with one request at a time at most that request's excess.
Refused requests charge nothing. Compare one-api/Envoy, which charge after the fact: there the overshoot is
the whole usage of every request in flight.

Use (the request path):
    adm = await store.acquire([Subject("key:alice", key_limits), Subject("team:research", team_limits)],
                              prompt_tokens + max_tokens, request_id)
    if not adm.allowed: 429 with adm.headers() (Retry-After included); adm.exceeds_limit: waiting won't help
    else: adm.headers() on the answer; keep_alive(store, adm) as a task for a long stream;
          finally `await store.finish(adm, real_total_tokens)` (also on error or client disconnect)

The stores: gateway/auth/limits_memory.py (one process) and gateway/auth/limits_redis.py (shared).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

WINDOW = 60.0  # seconds of the rpm/tpm sliding window
LEASE_TTL = 300.0  # seconds a concurrency lease lives without a refresh
DAY = 86400.0
LIMIT_NAMES = ("rpm", "tpm", "concurrency", "tokens_per_day", "tokens_per_month")
REQUEST_HEADERS = (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests")
TOKEN_HEADERS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens")


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def windowed(self) -> bool:
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True)
class Subject:
    id: str  # e.g. "key:alice", "team:research": a name from config, never key material
    limits: Limits


class RateInfo(NamedTuple):  # a tuple: made for every limited request, and a frozen dataclass is slow to make
    """One OpenAI header trio: the limit, what remains of it, seconds until the window is empty again."""

    limit: int
    remaining: int
    reset: float


def openai_duration(seconds: float) -> str:
    """Go's time.Duration text, as OpenAI's x-ratelimit-reset-* headers use: "17ms", "1s", "6m0s", "1.5s"."""
    return duration_ms(math.ceil(seconds * 1000 - 1e-6))


def duration_ms(ms: int) -> str:
    ms = max(0, ms)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest // 1000}" if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s" if m else f"{s}s"


_ends: dict[tuple[bytes, int, float], tuple[tuple[bytes, bytes], tuple[bytes, bytes]]] = {}


def _ends_of(names: tuple[bytes, bytes, bytes], info: RateInfo) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """A trio's limit and reset headers, remembered: a limit is the same on every answer, and so is nearly
    every reset (an admitted request's is the window: its own admission is the newest)."""
    key = (names[0], info.limit, info.reset)
    ends = _ends.get(key)
    if ends is None:
        if len(_ends) >= 4096:
            _ends.clear()
        ends = _ends[key] = ((names[0], b"%d" % info.limit),
                             (names[2], duration_ms(math.ceil(info.reset * 1000 - 1e-6)).encode()))
    return ends


@dataclass(slots=True)
class Admission:
    allowed: bool
    limit_name: str | None = None  # which limit refused; "unavailable" when the store is down (fail-closed)
    subject_id: str | None = None  # whose limit refused
    retry_after: float = 0.0  # seconds
    exceeds_limit: bool = False  # the estimate alone is over the limit: waiting will not help
    degraded: bool = False  # admitted unchecked because the store is unavailable (fail-open)
    request_id: str = ""
    estimate: int = 0
    subjects: tuple[Subject, ...] = ()
    requests: RateInfo | None = None  # the most constraining subject's rpm trio
    tokens: RateInfo | None = None  # the most constraining subject's tpm trio
    token: str = ""  # the store's id of this admission (window member, lease)
    day: int = 0  # UTC day number (days since 1970-01-01) of admission: where quota corrections go
    month: int = 0  # year * 12 + month - 1 of admission
    settled: bool = False
    released: bool = False
    started: float = 0.0  # monotonic time of admission, for the lease refresh of long requests (enforce.py)
    handle: Any = field(default=None, repr=False)  # store-private

    def block(self) -> bytes:
        """headers() as HTTP/1.1 lines (b"name: value\\r\\n" each), for a response head written whole."""
        return b"".join([b"%s: %s\r\n" % h for h in self.headers()])

    def headers(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        info = self.requests
        if info is not None:
            limit, reset = _ends_of(REQUEST_HEADERS, info)
            out += (limit, (REQUEST_HEADERS[1], b"%d" % info.remaining if info.remaining > 0 else b"0"), reset)
        info = self.tokens
        if info is not None:
            limit, reset = _ends_of(TOKEN_HEADERS, info)
            out += (limit, (TOKEN_HEADERS[1], b"%d" % info.remaining if info.remaining > 0 else b"0"), reset)
        if not self.allowed:
            out.append((b"retry-after", str(max(1, math.ceil(self.retry_after - 1e-6))).encode()))
        return out


class LimitStore(Protocol):
    async def acquire(self, subjects: list[Subject], estimate_tokens: int, request_id: str) -> Admission: ...
    async def settle(self, admission: Admission, used_tokens: int) -> None: ...
    async def release(self, admission: Admission) -> None: ...
    async def finish(self, admission: Admission, used_tokens: int) -> None: ...
    async def refresh(self, admission: Admission) -> bool: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


_month_of_day: list[tuple[int, int, float]] = [(-1, 0, 0.0)]  # the last day asked: (day, month, next month's start)


def periods(now: float) -> tuple[int, int, float, float]:
    """(day number, month number, seconds to next UTC midnight, seconds to next UTC month) at `now`."""
    day = int(now // DAY)
    cached = _month_of_day[0]
    if cached[0] != day:  # the calendar, once a day rather than per request
        d = datetime.fromtimestamp(day * DAY, UTC)
        nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC).timestamp()
        cached = _month_of_day[0] = (day, d.year * 12 + d.month - 1, nxt)
    return day, cached[1], (day + 1) * DAY - now, cached[2] - now


@dataclass
class Refusal:
    name: str
    subject_id: str
    retry: float
    exceeds: bool


def worst(a: Refusal | None, b: Refusal) -> Refusal:
    """The refusal to report: one that waiting cannot cure, else the one that lifts last."""
    if a is None or (b.exceeds, b.retry) > (a.exceeds, a.retry):
        return b
    return a


def distinct(subjects: list[Subject]) -> list[Subject]:
    """One entry per subject id (the first): a key that is also named as its team is charged once."""
    seen: dict[str, Subject] = {}
    for s in subjects:
        seen.setdefault(s.id, s)
    return list(seen.values())


async def keep_alive(store: LimitStore, admission: Admission, every: float = LEASE_TTL / 3) -> None:
    """Refresh the admission's concurrency leases every `every` seconds while the request lives (run it as a
    task and cancel it at the end). Stops by itself once a lease is gone (released or expired)."""
    while True:
        await asyncio.sleep(every)
        if admission.released or not await store.refresh(admission):
            return


def tightest(infos: list[RateInfo]) -> RateInfo | None:
    return min(infos, key=lambda i: i.remaining) if infos else None
