"""The C limits store (gateway/auth/_admission.c) against the Python one (limits_memory.py), operation by operation.

Both are driven by the same random sequence (admissions under several identities sharing a team, settles,
releases, refreshes, the keeper's sweep, time passing across window ends, midnights and a month's end) and
must give the same answer to every call and hold the same counters after it. tests/test_limits.py checks the
semantics themselves on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.enforce import Gatekeeper
from gateway.auth.limits import Limits, Subject
from gateway.auth.limits_memory import MemoryLimitStore
from gateway.auth.limits_native import NativeLimitStore
from tests.native import require_native

BIG = 2**55  # the C store's stand-in for an estimate past int64 (_admission.c)
T0 = datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC).timestamp()  # a minute before a day's, month's and year's end


@pytest.fixture(autouse=True, scope="module")
def _built() -> None:
    require_native()


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


requests = st.one_of(st.none(), st.integers(0, 8), st.integers(9, 60))
tokens = st.one_of(st.none(), st.none(), st.integers(0, 40), st.integers(100, 3000), st.integers(100, 3000))
limits = st.builds(Limits, rpm=requests, tpm=tokens, concurrency=st.one_of(st.none(), st.integers(0, 4)),
                   tokens_per_day=tokens, tokens_per_month=tokens)
op = st.one_of(  # acquisitions and finishes first: sequences long enough to fill windows and hold leases
    st.tuples(st.just("acquire"), st.integers(0, 2), st.integers(0, 60)),
    st.tuples(st.just("acquire"), st.integers(0, 2), st.one_of(st.just(0), st.integers(0, 60))),
    st.tuples(st.just("finish"), st.integers(0, 50), st.integers(-5, 150), st.booleans(), st.booleans()),
    st.tuples(st.just("refresh"), st.integers(0, 50)),
    st.tuples(st.just("keeper"), st.floats(0, 40)),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.001, 0.5, 2.5, 5.0, 7.25, 30.0, 59.999, 60.0, 61.0, 3600.0])),
)


def reading(a: Any) -> tuple[Any, ...]:
    return (a.allowed, a.limit_name, a.subject_id, a.retry_after, a.exceeds_limit, a.estimate, a.requests, a.tokens,
            a.headers(), a.block(), a.day, a.month)


def counters(store: Any) -> dict[str, tuple[Any, ...]]:
    return {sid: (list(s.times), list(s.amounts), s.tokens, dict(s.leases), dict(s.quota))
            for sid, s in store._states.items() if s.times or s.leases or s.quota}


@settings(max_examples=300, deadline=None)
@given(st.tuples(limits, limits, limits), st.lists(op, min_size=20, max_size=150), st.sampled_from([5.0, 30.0, 300.0]))
def test_the_c_store_answers_as_the_python_store(lims: tuple[Limits, Limits, Limits], ops: list[tuple[Any, ...]],
                                                 ttl: float) -> None:
    compare(lims, ops, ttl)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("acquire"), st.integers(0, 2), st.just(0)),
                          st.tuples(st.just("finish"), st.integers(0, 400), st.just(0), st.just(False), st.booleans()),
                          st.tuples(st.just("refresh"), st.integers(0, 400)),
                          st.tuples(st.just("wait"), st.sampled_from([0.25, 1.0, 5.0]))), min_size=200, max_size=600))
def test_many_leases_are_kept_released_and_expired_alike(ops: list[tuple[Any, ...]]) -> None:
    """Hundreds of concurrency leases: the C store's hash table grows, deletes by shifting back, sweeps."""
    compare((Limits(concurrency=300), Limits(concurrency=150), Limits(concurrency=250)), ops, 30.0)


def compare(lims: tuple[Limits, Limits, Limits], ops: list[tuple[Any, ...]], ttl: float) -> None:
    clock = Clock()
    py, c = MemoryLimitStore(clock=clock, lease_ttl=ttl), NativeLimitStore(clock=clock, lease_ttl=ttl)
    team = Subject("team:t", lims[2])
    # alice and bob share the team; carol has no team, and names herself twice (charged once)
    identities = [(Subject("key:alice", lims[0]), team), (Subject("key:bob", lims[1]), team),
                  (Subject("key:carol", lims[1]), Subject("key:carol", lims[0]))]
    held: list[tuple[Any, Any]] = []
    for o in ops:
        if o[0] == "acquire":
            a, b = py.acquire_now(identities[o[1]], o[2], "r"), c.acquire_now(identities[o[1]], o[2], "r")
            assert reading(a) == reading(b)
            if a.allowed:
                held.append((a, b))
        elif o[0] == "finish" and held:
            a, b = held[o[1] % len(held)]
            py.finish_now(a, o[2], o[3], o[4])
            c.finish_now(b, o[2], o[3], o[4])
            assert (a.settled, a.released) == (b.settled, b.released)
        elif o[0] == "refresh" and held:
            a, b = held[o[1] % len(held)]
            assert py.refresh_now(a) == c.refresh_now(b)
        elif o[0] == "keeper":
            py.refresh_held(o[1])
            c.refresh_held(o[1])
        elif o[0] == "wait":
            clock.t += o[1]
        assert counters(py) == counters(c)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["max_tokens", "max_completion_tokens", "max_output_tokens", "n", "model"]),
                       st.one_of(st.integers(-3, 5000), st.integers(2**62, 2**70), st.booleans(), st.none(),
                                 st.floats(-1, 100), st.text(max_size=3))),
       st.integers(0, 10**7), st.integers(0, 4096))
def test_admit_estimates_as_the_gatekeeper_does(body: dict[str, Any], raw_len: int, default: int) -> None:
    """The request path's estimate is made in C (admit); it is enforce.py's, held at 2**55 past that."""
    s = NativeLimitStore(completion=default)
    plan = s.plan((Subject("key:alice", Limits(rpm=10**9)),))
    adm = s.c.admit(plan, body, raw_len, b"rid")
    expected = Gatekeeper.estimate(SimpleNamespace(default_completion=default), body, raw_len)  # type: ignore[arg-type]
    assert adm.allowed and adm.estimate == min(expected, BIG)
    assert adm.block() == b"".join(b"%s: %s\r\n" % h for h in adm.headers()) and b"remaining" in adm.block()


def test_admit_refuses_what_the_python_store_refuses_with_the_same_headers() -> None:
    clock = Clock()
    s, py = NativeLimitStore(clock=clock, completion=100), MemoryLimitStore(clock=clock)
    subjects = (Subject("key:alice", Limits(rpm=2, tpm=1000)),)
    plan = s.plan(subjects)
    body = {"model": "m", "max_tokens": 300}
    for i in range(3):
        a = s.c.admit(plan, body, 400, b"r")
        b = py.acquire_now(subjects, 400 // 4 + 300, "r")
        if i < 2:
            assert a.allowed and a.headers() == b.headers() and a.block() == b.block()
        else:
            assert type(a) is tuple and not b.allowed
            refused = NativeLimitStore.refusal(a, subjects, "r", 400)
            assert reading(refused) == reading(b)
    huge = s.c.admit(s.plan((Subject("key:bob", Limits(tpm=10)),)), {"max_tokens": 10**40}, 0, b"r")
    assert type(huge) is tuple and huge[:4] == ("tpm", "key:bob", 60.0, True)


def test_a_closed_store_forgets_and_old_admissions_touch_nothing() -> None:
    clock = Clock()
    s = NativeLimitStore(clock=clock)
    subjects = (Subject("key:alice", Limits(rpm=1, concurrency=1, tokens_per_day=100)),)
    old = s.acquire_now(subjects, 10, "r")
    assert old.allowed and not s.acquire_now(subjects, 10, "r").allowed
    s.c.clear()
    s._plans.clear()
    new = s.acquire_now(subjects, 10, "r")
    assert new.allowed
    s.finish_now(old, 90)  # admitted before clear(): its plan number now names nothing of it
    assert not s.refresh_now(old) and s.refresh_now(new)
    assert s._states["key:alice"].quota == {("d", new.day): 10} and old.headers() == []
