"""The limits engine in one process (gateway/auth/limits.py): exact semantics against naive oracles, on a fake clock.

Every test runs on both in-memory stores: the Python one (limits_memory.py) and the C one (limits_native.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.limits import Limits, Subject, keep_alive, openai_duration, periods
from gateway.auth.limits_memory import MemoryLimitStore
from gateway.auth.limits_native import NativeLimitStore
from tests.native import require_native

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


IMPL: list[type] = [MemoryLimitStore]


@pytest.fixture(scope="module", params=[MemoryLimitStore, NativeLimitStore], ids=["python", "native"], autouse=True)
def impl(request: pytest.FixtureRequest) -> type:
    if request.param is NativeLimitStore:
        require_native()
    IMPL[0] = request.param
    return request.param


def store(clock: Clock | None = None, **kw: float) -> MemoryLimitStore:
    return IMPL[0](clock=clock, **kw) if clock is not None else IMPL[0](**kw)


def key(**limits: int) -> Subject:
    return Subject("key:alice", Limits(**limits))


def test_openai_duration_is_gos_format() -> None:
    # OpenAI's docs show "1s", "6m0s"; Go's Duration.String gives "17ms", "1.5s", "2m59.56s", "1h0m0s".
    cases = {0: "0s", 0.017: "17ms", 1: "1s", 360: "6m0s", 1.5: "1.5s", 179.56: "2m59.56s", 3600: "1h0m0s",
             3723.25: "1h2m3.25s", 0.0001: "1ms"}
    assert {k: openai_duration(k) for k in cases} == cases


@given(st.integers(min_value=0, max_value=4_102_444_800 * 1000))
def test_periods_match_the_utc_calendar(ms: int) -> None:
    now = ms / 1000
    day, month, to_midnight, to_month = periods(now)
    d = datetime.fromtimestamp(now, UTC)
    assert day == (d.date() - datetime(1970, 1, 1).date()).days
    assert month == d.year * 12 + d.month - 1
    nxt_day = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() + 86400
    nxt_month = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC).timestamp()
    assert to_midnight == pytest.approx(nxt_day - now, abs=1e-6)
    assert to_month == pytest.approx(nxt_month - now, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=5),
       st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=60))
def test_rpm_is_an_exact_sliding_window(limit: int, gaps: list[int]) -> None:
    """Against a naive log: admitted iff fewer than `limit` admissions in (t - W, t]; the retry time is exact."""
    clock, window = Clock(), 10.0
    s = store(clock, window=window)
    admitted: list[float] = []
    for gap in gaps:
        clock.t += gap / 40  # steps of 25 ms up to 10 s: bursts and boundaries both
        a = s.acquire_now([key(rpm=limit)], 0, "r")
        recent = [t for t in admitted if t > clock.t - window]
        assert a.allowed == (len(recent) < limit)
        if a.allowed:
            admitted.append(clock.t)
            assert a.requests is not None and a.requests.remaining == limit - len(recent) - 1
        else:
            assert a.limit_name == "rpm" and a.subject_id == "key:alice"
            assert a.retry_after == pytest.approx(recent[len(recent) - limit] + window - clock.t)
            assert a.requests is not None and a.requests.remaining == 0
    # the property itself: no interval of one window holds more than `limit` admissions
    for i, t in enumerate(admitted):
        assert sum(1 for u in admitted[i:] if u < t + window) <= limit


def test_no_double_burst_at_a_window_boundary() -> None:
    """A fixed window would admit `limit` at 59.9 s and `limit` again at 60.1 s."""
    clock = Clock(T0 - T0 % 60 + 59.9)
    s = store(clock)
    assert all(s.acquire_now([key(rpm=5)], 0, f"a{i}").allowed for i in range(5))
    clock.t += 0.2
    refused = s.acquire_now([key(rpm=5)], 0, "b")
    assert not refused.allowed and refused.retry_after == pytest.approx(59.8)
    clock.t += 59.79
    assert not s.acquire_now([key(rpm=5)], 0, "c").allowed
    clock.t += 0.02
    assert s.acquire_now([key(rpm=5)], 0, "d").allowed


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=300),
       st.lists(st.tuples(st.integers(0, 120), st.integers(0, 120), st.integers(0, 60), st.booleans()),
                min_size=1, max_size=50))
def test_tpm_counts_reservations_then_usage_in_a_sliding_window(limit: int, ops: list) -> None:
    """Against a naive model: each admitted request counts its estimate, then its usage once settled, at its
    admission time; admitted iff that sum over the window plus the estimate fits."""
    clock, window = Clock(), 10.0
    s = store(clock, window=window)
    model: list[list[float]] = []  # [t, amount]
    pending = []
    for est, used, gap, settle_now in ops:
        clock.t += gap / 10
        a = s.acquire_now([key(tpm=limit)], est, "r")
        in_window = sum(amount for t, amount in model if t > clock.t - window)
        assert a.allowed == (in_window + est <= limit)
        if not a.allowed:
            assert a.limit_name == "tpm" and a.exceeds_limit == (est > limit)
            if est <= limit:  # the retry time is when enough of the oldest have left the window
                freed, live = 0, [r for r in model if r[0] > clock.t - window]
                retry = next(t + window - clock.t for t, amount in live
                             if (freed := freed + amount) and in_window - freed + est <= limit)
                assert a.retry_after == pytest.approx(retry)
            continue
        row = [clock.t, est]
        model.append(row)
        assert a.tokens is not None and a.tokens.remaining == limit - in_window - est
        pending.append((a, row, used))
        if settle_now:
            for adm, r, u in pending:
                s.settle_now(adm, u)
                r[1] = u
            pending.clear()


def quota_run(q: int, ops: list[tuple[str, int, int]]) -> tuple[int, int, int]:
    """Acquire/settle interleavings against a day quota. Returns (total used, the stated bound, admissions)."""
    clock = Clock()
    s = store(clock)
    inflight: list = []
    bound, total, n, charged = q, 0, 0, 0
    for op, est, used in ops:
        if op == "acquire":
            a = s.acquire_now([key(tokens_per_day=q)], est, "r")
            assert a.allowed == (charged + est <= q)  # refused only when it would not fit
            if a.allowed:
                n += 1
                charged += est
                inflight.append((a, est, used))
                # the bound of the module docstring at this admission: Q + excess of it and of those in flight
                bound = q + sum(max(0, u - e) for _a, e, u in inflight)
        elif inflight:
            a, e, u = inflight.pop(used % len(inflight))
            s.settle_now(a, u)
            total += u
            charged += u - e
    for a, _e, u in inflight:
        s.settle_now(a, u)
        total += u
    return total, bound, n


ops_strategy = st.lists(st.tuples(st.sampled_from(["acquire", "acquire", "settle"]), st.integers(0, 60),
                                  st.integers(0, 90)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), ops_strategy)
def test_quota_overshoot_never_exceeds_the_stated_bound(q: int, ops: list) -> None:
    total, bound, _ = quota_run(q, ops)
    assert total <= bound


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), ops_strategy)
def test_quota_is_never_exceeded_when_estimates_bound_usage(q: int, ops: list) -> None:
    total, _, _ = quota_run(q, [(op, e, min(u, e)) for op, e, u in ops])
    assert total <= q


def test_quota_bound_is_attained_by_parallel_requests_that_use_more_than_estimated() -> None:
    # 10 in flight at once, each estimating 10 against Q=100 and using 25: all fit, the overshoot is 10 x 15.
    total, bound, n = quota_run(100, [("acquire", 10, 25)] * 11 + [("settle", 0, 0)] * 10)
    assert (n, total, bound) == (10, 250, 250)
    # charged after the fact (Envoy, one-api) the same 11 requests would all pass: 11 x 25 = 275.
    total, bound, n = quota_run(100, [("acquire", 10, 8)] * 11 + [("settle", 0, 0)] * 10 + [("acquire", 10, 8)] * 3)
    assert n == 12 and total == 96 <= 100


def test_day_and_month_quotas_follow_the_utc_calendar() -> None:
    clock = Clock(datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC).timestamp())
    s = store(clock)
    subj = key(tokens_per_day=100, tokens_per_month=150)
    late = s.acquire_now([subj], 60, "a")
    assert late.allowed
    refused = s.acquire_now([subj], 60, "b")
    assert (refused.allowed, refused.limit_name, refused.retry_after) == (False, "tokens_per_day", 60.0)
    clock.t += 61  # 2027-01-01 00:00:01: a new day and a new month
    early = s.acquire_now([subj], 60, "c")
    assert early.allowed
    s.settle_now(late, 10)  # settles into 2026-12-31 (its admission day), not into the new day
    assert s.acquire_now([subj], 41, "d").allowed is False
    assert s.acquire_now([subj], 40, "e").allowed
    # month: 60 + 40 = 100 of 150 used in January; the day quota is full
    clock.t += 86400
    m = s.acquire_now([subj], 51, "f")
    assert (m.allowed, m.limit_name) == (False, "tokens_per_month")
    assert m.retry_after == pytest.approx(datetime(2027, 2, 1, tzinfo=UTC).timestamp() - clock.t)
    assert s.acquire_now([subj], 50, "g").allowed


def test_key_and_team_are_all_or_nothing() -> None:
    clock = Clock()
    s = store(clock)
    alice = Subject("key:alice", Limits(rpm=100, tokens_per_day=1000))
    bob = Subject("key:bob", Limits(rpm=1))
    team = Subject("team:research", Limits(rpm=2))
    assert s.acquire_now([alice, team], 100, "1").allowed and s.acquire_now([alice, team], 100, "2").allowed
    refused = s.acquire_now([alice, team], 100, "3")
    assert (refused.allowed, refused.limit_name, refused.subject_id) == (False, "rpm", "team:research")
    # nothing was charged to alice: 2 requests and 200 tokens, not 3 and 300
    alone = s.acquire_now([alice], 800, "4")
    assert alone.allowed and alone.requests is not None and alone.requests.remaining == 100 - 3
    # the other way round: bob's own limit refuses and the team is not charged
    clock.t += 61
    assert s.acquire_now([bob, team], 0, "5").allowed
    assert s.acquire_now([bob, team], 0, "6").limit_name == "rpm"
    assert s.acquire_now([alice, team], 0, "7").allowed  # the team's 2nd slot was not taken by bob's refusal


def test_headers_count_down_and_name_the_most_constraining_subject() -> None:
    clock = Clock()
    s = store(clock)
    k = Subject("key:alice", Limits(rpm=3, tpm=100))
    t = Subject("team:research", Limits(rpm=50, tpm=40))
    a = s.acquire_now([k, t], 10, "1")
    assert dict(a.headers()) == {
        b"x-ratelimit-limit-requests": b"3", b"x-ratelimit-remaining-requests": b"2",
        b"x-ratelimit-reset-requests": b"1m0s",
        b"x-ratelimit-limit-tokens": b"40", b"x-ratelimit-remaining-tokens": b"30",
        b"x-ratelimit-reset-tokens": b"1m0s"}
    s.settle_now(a, 4)  # refund 6 tokens
    clock.t += 15
    h = dict(s.acquire_now([k, t], 10, "2").headers())
    assert (h[b"x-ratelimit-remaining-requests"], h[b"x-ratelimit-remaining-tokens"]) == (b"1", b"26")
    s.acquire_now([k, t], 10, "3")
    clock.t += 0.5
    refused = s.acquire_now([k, t], 10, "4")
    h = dict(refused.headers())
    assert (refused.limit_name, refused.subject_id) == ("rpm", "key:alice")
    assert h[b"x-ratelimit-remaining-requests"] == b"0" and h[b"x-ratelimit-reset-requests"] == b"59.5s"
    assert refused.retry_after == pytest.approx(44.5) and h[b"retry-after"] == b"45"
    too_big = s.acquire_now([t], 41, "5")
    assert (too_big.limit_name, too_big.exceeds_limit) == ("tpm", True)


def test_concurrency_lease_release_ttl_and_refresh() -> None:
    clock = Clock()
    s = store(clock, lease_ttl=30)
    subj = key(concurrency=2)
    a, b = s.acquire_now([subj], 0, "a"), s.acquire_now([subj], 0, "b")
    assert a.allowed and b.allowed
    assert s.acquire_now([subj], 0, "c").limit_name == "concurrency"
    s.release_now(a)
    c = s.acquire_now([subj], 0, "c")
    assert c.allowed
    clock.t += 20
    assert s.refresh_now(b)  # b lives on to t+50; c (never refreshed) dies at t+30
    clock.t += 10.001
    d = s.acquire_now([subj], 0, "d")  # c's slot freed by its TTL, as for a replica that died
    assert d.allowed
    assert not s.refresh_now(c)  # an expired lease is not revived
    assert s.acquire_now([subj], 0, "e").limit_name == "concurrency"  # b and d hold the 2 slots
    clock.t += 20
    assert s.acquire_now([subj], 0, "f").allowed  # b expired at t+50


def test_old_entries_are_pruned() -> None:
    clock = Clock()
    s = store(clock, lease_ttl=5)
    subj = key(rpm=1000, tpm=10**9, concurrency=1000)
    for i in range(3000):
        clock.t += 0.125  # exact in binary: no drift at the window's edge
        a = s.acquire_now([subj], 5, str(i))
        assert a.allowed
        if i % 2:
            s.release_now(a)
    state = s._states["key:alice"]
    assert len(state.times) == len(state.amounts) == 480 and state.tokens == 2400  # the last 60 s only
    assert len(state.leases) == 20  # the last 5 s only (released ones leave at once, lost ones at their TTL)


def test_async_protocol_finish_refunds_and_releases() -> None:
    async def run() -> None:
        s = store()
        subj = key(tpm=100, concurrency=1)
        a = await s.acquire([subj], 60, "a")
        assert not (await s.acquire([subj], 10, "b")).allowed
        await s.finish(a, 20)
        await s.finish(a, 20)  # idempotent
        b = await s.acquire([subj], 80, "b")
        assert b.allowed and b.tokens is not None and b.tokens.remaining == 0
        await s.close()

    asyncio.run(run())


def test_a_subject_named_twice_is_charged_once() -> None:
    s = store(Clock())
    k = key(rpm=2)
    assert s.acquire_now([k, k], 0, "1").allowed and s.acquire_now([k, k], 0, "2").allowed
    assert not s.acquire_now([k], 0, "3").allowed


def test_keep_alive_holds_a_long_request_past_the_ttl() -> None:
    async def run() -> None:
        s = store(lease_ttl=0.2)
        subj = key(concurrency=1)
        long = await s.acquire([subj], 0, "long")
        task = asyncio.create_task(keep_alive(s, long, every=0.05))
        await asyncio.sleep(0.5)  # 2.5 TTLs
        assert not (await s.acquire([subj], 0, "other")).allowed
        await s.finish(long, 0)
        await asyncio.wait_for(task, 1)  # stops by itself once the lease is released
        assert (await s.acquire([subj], 0, "other")).allowed

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(0, 80), st.integers(0, 7200)),
                min_size=1, max_size=60))
def test_finish_now_is_settle_then_release(ops: list[tuple[int, int, int, int]]) -> None:
    """The request path's one-pass finish (enforce.py) leaves every counter as settle_now + release_now do,
    across window exits and a day's end."""
    clock = Clock(datetime(2026, 12, 4, 23, 0, tzinfo=UTC).timestamp())
    one, two = store(clock, lease_ttl=600), store(clock, lease_ttl=600)
    subjects = [key(rpm=20, tpm=400, concurrency=3, tokens_per_day=900, tokens_per_month=2000),
                Subject("team:t", Limits(tpm=500, tokens_per_day=1000))]
    held: list[tuple[object, object]] = []
    for op, est, used, gap in ops:
        clock.t += gap / 100
        if op < 3 or not held:
            a, b = one.acquire_now(subjects, est, "r"), two.acquire_now(subjects, est, "r")
            assert (a.allowed, a.limit_name, a.requests, a.tokens) == (b.allowed, b.limit_name, b.requests, b.tokens)
            if a.allowed:
                held.append((a, b))
        else:
            a, b = held.pop(used % len(held))
            one.finish_now(a, used)  # type: ignore[arg-type]
            two.settle_now(b, used)  # type: ignore[arg-type]
            two.release_now(b)  # type: ignore[arg-type]
            one.finish_now(a, used + 1)  # type: ignore[arg-type]  # twice: nothing more
    for sid in ("key:alice", "team:t"):
        x, y = one._states[sid], two._states[sid]
        assert (list(x.times), list(x.amounts), x.tokens, x.leases.keys(), x.quota) == (
            list(y.times), list(y.amounts), y.tokens, y.leases.keys(), y.quota)


def test_the_keeper_extends_held_leases_only() -> None:
    """refresh_held (the gatekeeper's keeper, one process): leases older than the interval are extended,
    fresh ones are left, and one already expired is not revived."""
    clock = Clock()
    s = store(clock, lease_ttl=30)
    subj = key(concurrency=3)
    old = s.acquire_now([subj], 0, "old")
    clock.t += 20
    fresh = s.acquire_now([subj], 0, "fresh")
    clock.t += 5
    s.refresh_held(10)  # at t+25: old (expires t+30) is due, fresh (expires t+50) is not
    leases = s._states["key:alice"].leases
    assert leases[old.token] == clock.t + 30 and leases[fresh.token] == T0 + 50
    clock.t += 40  # t+65: old lived to t+55, fresh to t+50: both gone, as for requests that were lost
    s.refresh_held(10)  # not revived
    assert all(s.acquire_now([subj], 0, str(i)).allowed for i in range(3))


def test_an_estimate_past_int64_is_refused_by_token_limits_and_harmless_to_others() -> None:
    """max_tokens is the client's: 10**30 must give a 429 where tokens are limited, and not break the others."""
    s = store(Clock())
    huge = 10**30
    a = s.acquire_now([key(rpm=5, concurrency=2)], huge, "1")
    assert a.allowed
    s.finish_now(a, huge)
    refused = s.acquire_now([key(rpm=5, tpm=100)], huge, "2")
    assert (refused.allowed, refused.limit_name, refused.exceeds_limit, refused.estimate) == (False, "tpm", True, huge)
    day = s.acquire_now([Subject("key:bob", Limits(tokens_per_day=10))], huge, "3")
    assert (day.allowed, day.limit_name) == (False, "tokens_per_day")
    ok = s.acquire_now([key(rpm=5, tpm=100)], 10, "4")
    assert ok.allowed and ok.requests is not None and ok.requests.remaining == 3
