"""Per-key and per-team limits on the request path: reserve before, settle after (gateway/auth/limits.py).

Built only when some named key or team has limits; a request whose key has none never reaches it. Before
the request is dispatched its tokens are reserved from an estimate (the body's length / 4 for the prompt,
an upper bound for any tokenizer's ~4 bytes per token on JSON, plus `max_tokens` or
`auth.estimate_completion_tokens`), and the request is refused with 429 and Retry-After when any limit of
its key or its team would be exceeded. After it, the reservation is replaced by the backend's reported
usage (or kept as charged when the backend reported none; refunded when no backend answered).
Every answer to a limited key carries OpenAI's x-ratelimit-* headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.auth.keys import Identity
from gateway.auth.limits import LEASE_TTL, Admission, LimitStore, Limits, Subject
from gateway.auth.limits_memory import MemoryLimitStore
from gateway.auth.limits_native import AVAILABLE as NATIVE
from gateway.auth.limits_native import NativeLimitStore
from gateway.errors import GatewayError
from gateway.settings import GatewaySettings
from gateway.settings import Limits as LimitSettings

log = logging.getLogger("gateway.limits")
MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


def _limits(s: LimitSettings) -> Limits:
    return Limits(s.rpm, s.tpm, s.concurrency, s.tokens_per_day, s.tokens_per_month)


class Gatekeeper:
    def __init__(self, settings: GatewaySettings, metrics: Any) -> None:
        st = settings.state
        self.metrics = metrics
        self.default_completion = settings.auth.estimate_completion_tokens
        self.store: LimitStore
        if st.redis:
            from gateway.auth.limits_redis import RedisLimitStore  # only when configured

            self.store = RedisLimitStore(st.redis, fail_mode=st.redis_failure,
                                         on_failure=lambda exc: metrics.observe_state_failure("limits"))
            metrics.state.sources["limits"] = self.store
        elif st.native_limits and NATIVE:  # the same answers as the Python store, a fraction of its CPU
            self.store = NativeLimitStore(completion=self.default_completion)
            log.info("limits: in this process's memory (C store)")
        else:
            self.store = MemoryLimitStore()
            if st.native_limits:
                log.warning("limits: the C store (gateway/auth/_admission.c) was not built, as `pip install` found "
                            "no C compiler: the same limits run in Python, at ~15 µs more CPU per limited request; "
                            "install gcc and run `pip install -e .` again to build it")
        self.local = not st.redis
        self._leases: dict[int, Admission] = {}   # requests holding a concurrency lease
        self._keeper: asyncio.Task[None] | None = None
        # The C store's own calls, which proxy.py makes straight (a Python frame between costs as much as the
        # call): c_admit(plan, body, body_length, request_id) -> an admission, or a refusal's reading (a tuple)
        # for refused_c(); c_finish(admission, used_tokens, settle, release).
        self.c_admit = self.c_finish = None
        if isinstance(self.store, NativeLimitStore):
            self.c_admit, self.c_finish = self.store.c.admit, self.store.c.finish
        self.leased = False  # some identity's limits include concurrency: start() runs the lease keeper

    def start(self) -> None:
        """At the gateway's start, in its event loop: the keeper that extends held concurrency leases."""
        if self.leased and self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="limits:leases")

    def plan(self, subjects: tuple[Subject, ...]) -> int:
        """An identity's plan number in the C store (-1 for the other stores), made once at start."""
        return self.store.plan(subjects) if isinstance(self.store, NativeLimitStore) else -1

    @staticmethod
    def subjects(ident: Identity) -> tuple[Subject, ...]:
        out = []
        if ident.limits is not None:
            out.append(Subject("key:" + ident.name, _limits(ident.limits)))
        if ident.team_limits is not None and ident.team is not None:
            out.append(Subject("team:" + ident.team, _limits(ident.team_limits)))
        return tuple(out)  # passed on as is to every admission

    def estimate(self, body: dict[str, Any], raw_len: int) -> int:
        completion = self.default_completion
        for f in MAX_TOKEN_FIELDS:
            v = body.get(f)
            if type(v) is int and v > 0:
                completion = v
                break
        n = body.get("n")
        return raw_len // 4 + completion * (n if type(n) is int and n > 1 else 1)

    def admit_now(self, ident: Identity, body: dict[str, Any], raw_len: int, rid: bytes) -> Admission:
        """The in-memory store (`self.local`): answered at once, without a coroutine of its own. Its leases
        need no registry here: every lease it holds belongs to a request still running (`_keep`)."""
        adm = self.store.acquire_now(ident.subjects, self.estimate(body, raw_len), rid.decode())  # type: ignore[attr-defined]
        if not adm.allowed:
            raise self._refused(ident, adm)
        return adm

    async def admit(self, ident: Identity, body: dict[str, Any], raw_len: int, rid: bytes) -> Admission:
        if self.local:
            return self.admit_now(ident, body, raw_len, rid)
        adm = await self.store.acquire(ident.subjects, self.estimate(body, raw_len), rid.decode())
        if not adm.allowed:
            raise self._refused(ident, adm)
        if ident.leased:
            # A stream may outlive its concurrency lease's TTL: the keeper (start()) refreshes the long-lived ones.
            adm.started = time.monotonic()
            self._leases[id(adm)] = adm
        return adm

    def _refused(self, ident: Identity, adm: Admission) -> RateLimited:
        who = (adm.subject_id or "").replace("key:", "key ").replace("team:", "team ")
        if adm.limit_name == "unavailable":
            err = RateLimited("The limits store is unavailable and this gateway refuses requests meanwhile "
                              "(state.redis_failure: closed); try again shortly.", status=503,
                              code="limits_unavailable")
        elif adm.exceeds_limit:
            err = RateLimited(f"This request alone exceeds the {adm.limit_name} limit of {who} "
                              f"(estimated {adm.estimate} tokens): lower max_tokens or the prompt.",
                              code="rate_limit_exceeded")
        else:
            err = RateLimited(f"Rate limit reached: {adm.limit_name} of {who}. Retry after "
                              f"{adm.retry_after:.0f}s.")
        err.headers = {k.decode(): v.decode() for k, v in adm.headers()}
        self.metrics.observe_limited(ident.name, adm.limit_name or "unavailable")
        return err

    def refused_c(self, ident: Identity, got: tuple, body: dict[str, Any], raw_len: int,  # type: ignore[type-arg]
                  rid: bytes) -> RateLimited:
        """The error for a refusal c_admit read (refusals are not the hot path)."""
        return self._refused(ident, NativeLimitStore.refusal(got, ident.subjects, rid.decode(),
                                                             self.estimate(body, raw_len)))

    def done_now(self, adm: Admission, used: int) -> None:
        """The in-memory store's settle (to `used` tokens) and release (`self.local`), at once."""
        try:
            self.store.finish_now(adm, used)  # type: ignore[attr-defined]
        except Exception:  # the stores never raise by contract; a bug here must not fail the request's end
            log.exception("limits: settling request %s failed", adm.request_id)

    async def done(self, adm: Admission, used: int) -> None:
        """Settle to `used` tokens (proxy.py: the backend's usage report, else the estimate if a backend
        answered, else 0) and release."""
        if self.local:
            return self.done_now(adm, used)
        self._leases.pop(id(adm), None)
        try:
            await self.store.finish(adm, used)
        except Exception:  # the stores never raise by contract; a bug here must not fail the request's end
            log.exception("limits: settling request %s failed", adm.request_id)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            if self.local:  # each lease it holds is a request still running: all are kept
                self.store.refresh_held(LEASE_TTL / 3)  # type: ignore[attr-defined]
                continue
            old = time.monotonic() - LEASE_TTL / 3
            for adm in list(self._leases.values()):
                if adm.started < old and id(adm) in self._leases:
                    await self.store.refresh(adm)

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        await self.store.close()
