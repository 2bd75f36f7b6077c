"""The in-memory limits store in C (gateway/auth/_admission.c), which the gateway runs when it was built.

`MemoryLimitStore` (limits_memory.py) is the reference and the fallback: the same calls, the same answers
(tests/test_limits.py runs on both, tests/test_limits_native.py compares them operation by operation).
The gateway takes this one when `pip install` could build the extension (a C compiler was there; setuptools
builds it as optional, so an install without one still succeeds and runs the Python store).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from gateway.auth.limits import LEASE_TTL, WINDOW, Admission, RateInfo, Subject, distinct
from gateway.auth.limits_memory import InProcess

try:
    from gateway.auth import _admission
except ImportError:  # not built: no compiler at install time
    _admission = None  # type: ignore[assignment]

AVAILABLE = _admission is not None


class NativeLimitStore(InProcess):
    """One process, like MemoryLimitStore; its counters live in C arrays (see _admission.c)."""

    def __init__(self, *, window: float = WINDOW, lease_ttl: float = LEASE_TTL,
                 clock: Callable[[], float] | None = None, completion: int = 0) -> None:
        """`completion`: the completion tokens `c.admit` estimates a request at when it names no max_tokens."""
        if _admission is None:
            raise RuntimeError("gateway.auth._admission is not built")
        self.window, self.lease_ttl = window, lease_ttl
        # time.time reads CLOCK_REALTIME; the C store reads it itself unless a test gives its own clock
        self.c = _admission.Store(window, lease_ttl, None if clock in (None, time.time) else clock, RateInfo,
                                  completion)
        self._plans: dict[int, tuple[Any, int]] = {}  # id(subjects) -> (subjects, plan number)

    def plan(self, subjects: Any) -> int:
        """The plan of these subjects (an identity's, made once at start: runtime.py keeps it on the identity;
        the calls below find it again by the subjects sequence's identity)."""
        got = self._plans.get(id(subjects))
        if got is not None and got[0] is subjects:
            return got[1]
        plan = self.c.plan([(s.id, s.limits.rpm, s.limits.tpm, s.limits.concurrency, s.limits.tokens_per_day,
                              s.limits.tokens_per_month) for s in distinct(list(subjects))])
        if len(self._plans) >= 4096:  # lists made per call (tests, the async protocol) must not grow it forever
            self._plans.clear()
        self._plans[id(subjects)] = (subjects, plan)
        return plan

    def acquire_now(self, subjects: list[Subject] | tuple[Subject, ...], estimate_tokens: int,
                    request_id: str) -> Any:
        adm = self.c.acquire(self.plan(subjects), estimate_tokens, request_id)
        return self.refusal(adm, subjects, request_id, estimate_tokens) if type(adm) is tuple else adm

    @staticmethod
    def refusal(got: tuple, subjects: Any, request_id: str, estimate: int) -> Admission:  # type: ignore[type-arg]
        """A refusal's reading from C as the Admission limits.py describes (refusals are not the hot path)."""
        name, sid, retry, exceeds, token, day, month, reqs, toks = got
        return Admission(False, name, sid, retry, exceeds, False, request_id, max(estimate, 0), tuple(subjects),
                         reqs, toks, token, day, month)

    def finish_now(self, adm: Any, used_tokens: int, settle: bool = True, release: bool = True) -> None:
        if adm.allowed:
            self.c.finish(adm, used_tokens, settle, release)

    def refresh_now(self, adm: Any) -> bool:
        return bool(adm.allowed) and self.c.refresh(adm)

    def refresh_held(self, older_than: float) -> None:
        self.c.refresh_held(older_than)

    @property
    def _states(self) -> dict[str, SimpleNamespace]:
        """Each subject's counters as MemoryLimitStore's _states shows them (a copy: for tests)."""
        return {sid: SimpleNamespace(**self.c.inspect(sid)) for sid in self.c.subject_ids()}

    async def close(self) -> None:
        self.c.clear()
        self._plans.clear()
