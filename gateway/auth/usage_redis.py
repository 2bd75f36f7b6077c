"""Usage in Redis (`state.redis`): several gateway replicas add into the same counters, so usage is one number.

Why this shape:
- One hash per key name x model x UTC day, `<prefix>usage:<day>:<key>:<model>`, counted with HINCRBY /
  HINCRBYFLOAT (adds commute: replicas never overwrite each other). The hash also holds day, key, model and team as
  fields, so names containing ':' are read back exactly (in the hash NAME, '%' and ':' are escaped, so "a:b" x "c"
  and "a" x "b:c" stay two rows).
- A batch is one Lua script (atomic, one round trip, the entries as one JSON argument). It first checks the
  writer's last applied sequence number: a batch retried after a lost reply is applied once, not twice (unlike
  INCRBYFLOAT replays, LiteLLM #28247).
- Per-day index sets `<prefix>usage:index:<day>` and a sorted set of days `<prefix>usage:days` let a query read
  exactly the hashes of its date range: no KEYS or SCAN over the whole database.
- Everything expires `ttl_days` (default 400) after its last write; the days set is trimmed by the script.
- Redis down: `write` raises, the recorder (usage.py) keeps the batch in memory and retries; redis-py reconnects
  and reloads the script (EVALSHA falls back to loading it) when the server returns.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.auth.usage import Batch, UsageQuery, UsageRow, UsageStore, day_number

WRITER_TTL_S = 7 * 86400   # how long a writer's last sequence number is remembered after its last batch

# KEYS: [1] the writer's applied-sequence key, [2] the days sorted set. ARGV: [1] seq, [2] ttl seconds, [3] oldest
# day number kept, [4] writer ttl, [5] the entries as one JSON array of [hash, day index set, day number, day, key,
# model, team ("" = none), requests, prompt tokens, completion tokens, errors, latency seconds], numbers as strings.
# One JSON argument instead of ~12 per entry: encoding 12,000 arguments held the client's event loop for ~25 ms.
# (The hash and index names are computed by the client and not declared in KEYS: fine on one Redis, not on a
# Redis Cluster, where one script cannot touch keys of many slots anyway.)
_WRITE = """
local seq = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') >= seq then return 0 end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[4])
local ttl = ARGV[2]
for _, e in ipairs(cjson.decode(ARGV[5])) do
  local h, index = e[1], e[2]
  redis.call('HSET', h, 'day', e[4], 'key', e[5], 'model', e[6], 'team', e[7])
  redis.call('HINCRBY', h, 'requests', e[8])
  redis.call('HINCRBY', h, 'prompt_tokens', e[9])
  redis.call('HINCRBY', h, 'completion_tokens', e[10])
  redis.call('HINCRBY', h, 'errors', e[11])
  redis.call('HINCRBYFLOAT', h, 'latency_s', e[12])
  redis.call('EXPIRE', h, ttl)
  redis.call('SADD', index, h)
  redis.call('EXPIRE', index, ttl)
  redis.call('ZADD', KEYS[2], e[3], e[4])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
return 1
"""


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A")


class RedisUsageStore(UsageStore):
    def __init__(self, url: str | None = None, *, client: Redis | None = None, prefix: str = "llmgw:",
                 ttl_days: int = 400, timeout: float = 2.0) -> None:
        if (url is None) == (client is None):
            raise ValueError("give a Redis url or a client")
        self.url, self.prefix, self.ttl_days, self.timeout = url, prefix, ttl_days, timeout
        self._own = client is None          # close only a client we made
        self._client = client
        self._script: Any = None

    def __repr__(self) -> str:
        return f"redis:{self.url.split('@')[-1] if self.url else 'client'}"   # never the password

    def hash_name(self, day: date, key: str, model: str) -> str:
        return f"{self.prefix}usage:{day.isoformat()}:{_escape(key)}:{_escape(model)}"

    def index_name(self, day: date) -> str:
        return f"{self.prefix}usage:index:{day.isoformat()}"

    @property
    def days_name(self) -> str:
        return f"{self.prefix}usage:days"

    async def open(self) -> None:
        """Makes the client; does not connect (a Redis that is down at start must not stop the gateway)."""
        if self._client is None:
            assert self.url is not None
            # one immediate retry (a pooled connection gone stale across a Redis restart), no backoff: the
            # recorder paces retries, and a flush must not sit in client backoff while close() waits
            self._client = Redis.from_url(self.url, decode_responses=True, socket_timeout=self.timeout,
                                          socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 1))
        self._script = self._client.register_script(_WRITE)

    async def write(self, batch: Batch) -> None:
        if not batch.entries:
            return
        keys = [f"{self.prefix}usage:writer:{batch.writer}", self.days_name]
        newest = max(day_number(a.day) for a in batch.entries)
        entries = [[self.hash_name(a.day, a.key, a.model), self.index_name(a.day), str(day_number(a.day)),
                    a.day.isoformat(), a.key, a.model, a.team or "", str(a.requests), str(a.prompt_tokens),
                    str(a.completion_tokens), str(a.errors), repr(a.latency_s)] for a in batch.entries]
        await self._script(keys=keys, args=[batch.seq, self.ttl_days * 86400, newest - self.ttl_days, WRITER_TTL_S,
                                            orjson.dumps(entries)])

    async def read(self, q: UsageQuery) -> list[UsageRow]:
        r = self._redis()
        lo = day_number(q.start) if q.start else "-inf"
        hi = day_number(q.end) if q.end else "+inf"
        days: list[str] = await r.zrangebyscore(self.days_name, lo, hi)
        async with r.pipeline(transaction=False) as p:
            for d in days:
                p.smembers(self.index_name(date.fromisoformat(d)))
            names = sorted({n for members in await p.execute() for n in members})
        async with r.pipeline(transaction=False) as p:
            for n in names:
                p.hgetall(n)
            found = await p.execute()
        rows = [_row(h) for h in found if h]   # an expired hash can linger in its index for a while
        return [row for row in rows if q.matches_names(row)]

    async def close(self) -> None:
        if self._client is not None and self._own:
            await self._client.aclose()
        self._client = None

    def _redis(self) -> Redis:
        if self._client is None:
            raise RuntimeError("usage store is not open (await open() first)")
        return self._client


def _row(h: dict[str, str]) -> UsageRow:
    return UsageRow(date.fromisoformat(h["day"]), h["key"], h["model"], h.get("team") or None,
                    int(h.get("requests", 0)), int(h.get("prompt_tokens", 0)), int(h.get("completion_tokens", 0)),
                    int(h.get("errors", 0)), float(h.get("latency_s", 0.0)))

