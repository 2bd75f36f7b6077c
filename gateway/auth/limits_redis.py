"""The limits of gateway/auth/limits.py shared by every replica through Redis, with the same exact semantics.

One Lua script per acquire (check every subject, then charge every subject, or nothing) and one per
finish (settle + release), each atomic. They travel in pipelines (gateway/auth/redis_batch.py): an acquire
goes at once with whatever else is queued, a finish does not hold up its request and rides with the next
acquire (or goes alone after 10 ms when none follows): a request waits for one round trip, a steady
stream costs one per request, and under load far fewer (`round_trips`, `calls`). Times come from the
Redis server's TIME inside the script, so replicas with skewed clocks agree. Every key has a TTL: window
keys one window past their last write, lease sets one TTL past theirs, day/month counters two days past
the end of their period (a late settle still lands), so nothing grows forever.

Keys per subject S (prefix P): P S:w zset member->admission time (us), P S:a hash member->tpm charge,
P S:t running sum of S:a, P S:c zset lease member->expiry (us), P S:q:d:<day> / P S:q:m:<month> quotas.

Redis unavailable: acquire admits unchecked (fail_mode "open", `Admission.degraded`) or refuses with
limit_name "unavailable" ("closed"); it never raises. Each failure counts in `.failures` and calls
`on_failure(exc)`; one warning per outage (no URL, no key material), one info line on recovery; the client
reconnects by itself on the next call. An acquire that timed out may still run when a stalled Redis resumes:
its lease is released on the first call that succeeds afterwards (not left to the TTL).
Single Redis (or a primary with replicas), not Redis Cluster: a script computes its day/month key names.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.auth.limits import LEASE_TTL, WINDOW, Admission, RateInfo, Subject, distinct, tightest
from gateway.auth.redis_batch import ScriptBatcher

log = logging.getLogger("gateway.auth.limits")

# Days <-> civil dates (H. Hinnant's algorithms), so the script finds the UTC month from server time.
CALENDAR = """
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
local function n(x) return string.format('%.0f', x) end  -- exact integer text (tostring rounds to 14 digits)
local DAYUS = 86400000000
"""

# KEYS: 4 per subject (w, a, t, c) then the quota prefix.  ARGV: member, estimate, window us, ttl us,
# subject count, then per subject rpm, tpm, concurrency, per-day, per-month (-1 = none).
# Returns {allowed, subject index, limit name, retry us, exceeds, now us, day, month,
#          then per subject: window count, token sum, newest admission us (before any charge)}.
ACQUIRE = CALENDAR + """
local member, est, win, ttl, ns = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
local day = math.floor(now / DAYUS)
local y, m = civil(day)
local month = y * 12 + m - 1
local ny, nm = y, m + 1
if nm == 13 then ny, nm = y + 1, 1 end
local day_end, month_end = (day + 1) * DAYUS, days_from_civil(ny, nm, 1) * DAYUS
local bad_i, bad_name, bad_retry, bad_ex = 0, '', -1, 0
local function refuse(i, name, retry, ex)
  retry = math.max(0, retry)  -- any refusal counts, whatever its retry time
  if bad_i == 0 or ex > bad_ex or (ex == bad_ex and retry > bad_retry) then
    bad_i, bad_name, bad_retry, bad_ex = i, name, retry, ex
  end
end
local info = {}
for i = 1, ns do
  local kw, ka, kt, kc, kq = KEYS[5*i-4], KEYS[5*i-3], KEYS[5*i-2], KEYS[5*i-1], KEYS[5*i]
  local o = 5 + 5 * (i - 1)
  local rpm, tpm, conc = tonumber(ARGV[o+1]), tonumber(ARGV[o+2]), tonumber(ARGV[o+3])
  local qd, qm = tonumber(ARGV[o+4]), tonumber(ARGV[o+5])
  local count, sum, newest = 0, 0, 0
  if rpm >= 0 or tpm >= 0 then
    while true do  -- prune what left the window, in batches (unpack has a stack limit)
      local old = redis.call('ZRANGEBYSCORE', kw, '-inf', n(now - win), 'LIMIT', 0, 500)
      if #old == 0 then break end
      local freed = 0
      for _, a in ipairs(redis.call('HMGET', ka, unpack(old))) do if a then freed = freed + tonumber(a) end end
      if freed ~= 0 then redis.call('DECRBY', kt, n(freed)) end
      redis.call('ZREM', kw, unpack(old))
      redis.call('HDEL', ka, unpack(old))
      if #old < 500 then break end
    end
    count = redis.call('ZCARD', kw)
    sum = tonumber(redis.call('GET', kt) or '0')
    if count > 0 then newest = tonumber(redis.call('ZRANGE', kw, -1, -1, 'WITHSCORES')[2]) end
    if rpm >= 0 and count >= rpm then
      if rpm == 0 then refuse(i, 'rpm', win, 1) else
        refuse(i, 'rpm', tonumber(redis.call('ZRANGE', kw, count - rpm, count - rpm, 'WITHSCORES')[2]) + win - now, 0)
      end
    end
    if tpm >= 0 and sum + est > tpm then
      local retry, freed = win, 0
      if est <= tpm then  -- the oldest entries leave first; walk at most 1000 of them
        local es = redis.call('ZRANGE', kw, 0, 999, 'WITHSCORES')
        for j = 1, #es, 2 do
          freed = freed + tonumber(redis.call('HGET', ka, es[j]) or '0')
          if sum - freed + est <= tpm then retry = tonumber(es[j+1]) + win - now; break end
        end
      end
      refuse(i, 'tpm', retry, est > tpm and 1 or 0)
    end
  end
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', kc, '-inf', n(now))
    if redis.call('ZCARD', kc) >= conc then
      local first = redis.call('ZRANGE', kc, 0, 0, 'WITHSCORES')
      local soonest = first[2] and tonumber(first[2]) - now or 1000000
      refuse(i, 'concurrency', math.min(1000000, soonest), conc == 0 and 1 or 0)
    end
  end
  if qd >= 0 and tonumber(redis.call('GET', kq .. ':d:' .. day) or '0') + est > qd then
    refuse(i, 'tokens_per_day', day_end - now, est > qd and 1 or 0)
  end
  if qm >= 0 and tonumber(redis.call('GET', kq .. ':m:' .. month) or '0') + est > qm then
    refuse(i, 'tokens_per_month', month_end - now, est > qm and 1 or 0)
  end
  info[#info+1], info[#info+2], info[#info+3] = count, sum, newest
end
local out = {bad_i == 0 and 1 or 0, bad_i, bad_name, math.max(0, bad_retry), bad_ex, now, day, month}
for _, v in ipairs(info) do out[#out+1] = v end
if bad_i ~= 0 then return out end
local wms, cms = math.floor(win / 1000) + 1000, math.floor(ttl / 1000) + 1000
for i = 1, ns do
  local kw, ka, kt, kc, kq = KEYS[5*i-4], KEYS[5*i-3], KEYS[5*i-2], KEYS[5*i-1], KEYS[5*i]
  local o = 5 + 5 * (i - 1)
  local rpm, tpm, conc = tonumber(ARGV[o+1]), tonumber(ARGV[o+2]), tonumber(ARGV[o+3])
  local qd, qm = tonumber(ARGV[o+4]), tonumber(ARGV[o+5])
  if rpm >= 0 or tpm >= 0 then
    redis.call('ZADD', kw, n(now), member)
    if tpm >= 0 then  -- even for 0: settle charges usage only to members it finds here
      redis.call('HSET', ka, member, n(est))
      redis.call('INCRBY', kt, n(est))
    end
    for _, k in ipairs({kw, ka, kt}) do redis.call('PEXPIRE', k, wms) end
  end
  if conc >= 0 then
    redis.call('ZADD', kc, n(now + ttl), member)
    redis.call('PEXPIRE', kc, cms)
  end
  for _, q in ipairs({{qd, ':d:' .. day, day_end}, {qm, ':m:' .. month, month_end}}) do
    if q[1] >= 0 then
      redis.call('INCRBY', kq .. q[2], n(est))
      redis.call('PEXPIREAT', kq .. q[2], n(math.floor(q[3] / 1000) + 2 * 86400000))
    end
  end
end
return out
"""

# KEYS as ACQUIRE.  ARGV: member, estimate, used (-1: no settle), release (0/1), window us, day, month,
# subject count, then per subject tpm flag, concurrency flag, day flag, month flag.
FINISH = """
local member, est, used, rel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local wms, day, month, ns = math.floor(tonumber(ARGV[5]) / 1000) + 1000, ARGV[6], ARGV[7], tonumber(ARGV[8])
local delta = used >= 0 and used - est or 0
for i = 1, ns do
  local kw, ka, kt, kc, kq = KEYS[5*i-4], KEYS[5*i-3], KEYS[5*i-2], KEYS[5*i-1], KEYS[5*i]
  local o = 8 + 4 * (i - 1)
  if delta ~= 0 and ARGV[o+1] == '1' and redis.call('HEXISTS', ka, member) == 1 then
    redis.call('HINCRBY', ka, member, delta)
    redis.call('INCRBY', kt, delta)
    for _, k in ipairs({kw, ka, kt}) do redis.call('PEXPIRE', k, wms) end
  end
  if delta ~= 0 and ARGV[o+3] == '1' and redis.call('EXISTS', kq .. ':d:' .. day) == 1 then
    redis.call('INCRBY', kq .. ':d:' .. day, delta)
  end
  if delta ~= 0 and ARGV[o+4] == '1' and redis.call('EXISTS', kq .. ':m:' .. month) == 1 then
    redis.call('INCRBY', kq .. ':m:' .. month, delta)
  end
  if rel and ARGV[o+2] == '1' then redis.call('ZREM', kc, member) end
end
return 1
"""

# KEYS: the lease sets.  ARGV: member, ttl us.  Returns 1 if every lease was alive (and is extended).
REFRESH = """
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
local ttl, ok = tonumber(ARGV[2]), 1
for _, kc in ipairs(KEYS) do
  local s = redis.call('ZSCORE', kc, ARGV[1])
  if s and tonumber(s) > now then
    redis.call('ZADD', kc, string.format('%.0f', now + ttl), ARGV[1])
    redis.call('PEXPIRE', kc, math.floor(ttl / 1000) + 1000)
  else
    redis.call('ZREM', kc, ARGV[1])
    ok = 0
  end
end
return ok
"""

FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def _lim(v: int | None) -> int:
    return -1 if v is None else v


class RedisLimitStore:
    def __init__(self, url: str, *, fail_mode: Literal["open", "closed"] = "open", prefix: str = "llmgw:",
                 window: float = WINDOW, lease_ttl: float = LEASE_TTL, timeout: float = 0.5,
                 on_failure: Callable[[BaseException], None] | None = None, linger: float = 0.01) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError("fail_mode must be 'open' or 'closed'")
        self.fail_mode, self.prefix, self.on_failure = fail_mode, prefix, on_failure
        self.window_us, self.ttl_us = round(window * 1e6), round(lease_ttl * 1e6)
        # One retry, only for a connection that broke before the command (a stale pooled socket after a Redis
        # restart); never after a timeout, when the script may have run and a retry would charge twice.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        self._batch = ScriptBatcher(self._redis, {"acquire": ACQUIRE, "finish": FINISH, "refresh": REFRESH},
                                    linger=linger)
        self.failures = 0
        self._down = False
        # Acquires that timed out may still run when a stalled Redis resumes; their leases are released
        # (release only: whether tokens were reserved is unknown, so none are refunded) once it answers again.
        self._orphans: list[Admission] = []

    def _keys(self, subjects: tuple[Subject, ...] | list[Subject]) -> list[str]:
        keys = []
        for s in subjects:
            base = f"{self.prefix}{s.id}:"
            keys += [base + "w", base + "a", base + "t", base + "c", base + "q"]
        return keys

    def _failed(self, exc: BaseException, what: str) -> None:
        self.failures += 1
        if not self._down:
            self._down = True
            action = {"open": "admitting unchecked", "closed": "refusing"}[self.fail_mode]
            log.warning("limits: Redis unavailable during %s (%s: %s); %s until it returns",
                        what, type(exc).__name__, exc, action)
        if self.on_failure is not None:
            self.on_failure(exc)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.info("limits: Redis is back; limits enforced again")
        orphans, self._orphans = self._orphans, []
        for adm in orphans:  # queued, they go in the next round trip
            self._end(adm, None, True)

    async def acquire(self, subjects: list[Subject], estimate_tokens: int, request_id: str) -> Admission:
        est, subs = max(0, estimate_tokens), tuple(distinct(subjects))
        member = f"{request_id}#{secrets.token_hex(6)}"
        args: list[int | str] = [member, est, self.window_us, self.ttl_us, len(subs)]
        for s in subs:
            lim = s.limits
            args += [_lim(lim.rpm), _lim(lim.tpm), _lim(lim.concurrency),
                     _lim(lim.tokens_per_day), _lim(lim.tokens_per_month)]
        keys = self._keys(subs)
        pending = self._batch.submit("acquire", keys, args)
        try:
            r = await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The client left while the script was on its way: if it admitted, give back the lease and the
            # reservation at once (otherwise the slot would stay taken for a lease TTL).
            pending.add_done_callback(lambda f: self._undo(f, subs, member, est))
            raise
        except FAILURES as exc:
            self._failed(exc, "acquire")
            if isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError)) and len(self._orphans) < 10_000:
                self._orphans.append(Admission(allowed=True, subjects=subs, token=member))
            if self.fail_mode == "open":
                return Admission(allowed=True, degraded=True, request_id=request_id, estimate=est, subjects=subs)
            return Admission(allowed=False, limit_name="unavailable", retry_after=1.0, request_id=request_id,
                             estimate=est, subjects=subs)
        self._ok()
        allowed, idx, name, retry_us, exceeds, now, day, month = r[:8]
        adm = Admission(allowed=bool(allowed), request_id=request_id, estimate=est, subjects=subs, token=member,
                        day=int(day), month=int(month))
        if not allowed:
            adm.limit_name, adm.subject_id = name.decode(), subs[idx - 1].id
            adm.retry_after, adm.exceeds_limit = retry_us / 1e6, bool(exceeds)
        reqs, toks = [], []
        for i, s in enumerate(subs):
            count, total, newest = r[8 + 3 * i: 11 + 3 * i]
            if allowed:
                count, total, newest = count + 1, total + (est if s.limits.tpm is not None else 0), now
            reset = (newest + self.window_us - now) / 1e6 if count else 0.0
            if s.limits.rpm is not None:
                reqs.append(RateInfo(s.limits.rpm, s.limits.rpm - count, reset))
            if s.limits.tpm is not None:
                toks.append(RateInfo(s.limits.tpm, s.limits.tpm - total, reset))
        adm.requests, adm.tokens = tightest(reqs), tightest(toks)
        return adm

    def _end(self, adm: Admission, used: int | None, release: bool) -> None:
        if not adm.allowed or adm.degraded:
            return
        settle = used is not None and not adm.settled
        release = release and not adm.released
        if not settle and not release:
            return
        args: list[int | str] = [adm.token, adm.estimate, max(0, used) if settle and used is not None else -1,
                                 int(release), self.window_us, adm.day, adm.month, len(adm.subjects)]
        for s in adm.subjects:
            lim = s.limits
            args += [int(lim.tpm is not None), int(lim.concurrency is not None),
                     int(lim.tokens_per_day is not None), int(lim.tokens_per_month is not None)]
        adm.settled = adm.settled or settle
        adm.released = adm.released or release
        self._batch.defer("finish", self._keys(adm.subjects), args).add_done_callback(self._finished)

    def _finished(self, fut: asyncio.Future[object]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self._ok()
        elif isinstance(exc, FAILURES):
            # Not retried: a lost release frees itself at the lease TTL; a lost settle leaves the estimate charged.
            self._failed(exc, "finish")
        else:
            log.error("limits: a finish failed", exc_info=exc)

    def _undo(self, fut: asyncio.Future[list[object]], subs: tuple[Subject, ...], member: str, est: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        r = fut.result()
        if r[0]:
            adm = Admission(allowed=True, estimate=est, subjects=subs, token=member, day=int(r[6]),  # type: ignore[call-overload]
                            month=int(r[7]))  # type: ignore[call-overload]
            self._end(adm, 0, True)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        self._end(admission, used_tokens, False)

    async def release(self, admission: Admission) -> None:
        self._end(admission, None, True)

    async def finish(self, admission: Admission, used_tokens: int) -> None:
        self._end(admission, used_tokens, True)

    async def refresh(self, admission: Admission) -> bool:
        """Extend the admission's leases by a TTL; False if one had expired (not revived) or Redis failed."""
        if not admission.allowed or admission.degraded or admission.released:
            return False
        keys = [f"{self.prefix}{s.id}:c" for s in admission.subjects if s.limits.concurrency is not None]
        if not keys:
            return True
        try:
            ok = await self._batch.call("refresh", keys, [admission.token, self.ttl_us])
        except FAILURES as exc:
            self._failed(exc, "refresh")
            return False
        self._ok()
        return bool(ok)

    @property
    def round_trips(self) -> int:
        return self._batch.round_trips

    @property
    def calls(self) -> int:
        return self._batch.calls

    async def flush(self) -> None:
        """Wait until the finishes queued so far reached Redis (or failed): they are sent lazily."""
        await self._batch.flush()

    async def close(self) -> None:
        await self._batch.close()
        await self._redis.aclose()

