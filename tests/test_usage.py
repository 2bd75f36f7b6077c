"""Usage accounting (gateway/auth/usage.py, usage_sqlite.py): aggregation, filters, UTC days, and the SQLite file
under real processes (two writers at once, a restart, a SIGKILL).

Run as a module (`python -m tests.test_usage record|read ...`) this file is also the gateway-like worker process
the tests start: it records a deterministic series through a UsageRecorder, like the request path would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from gateway.auth.usage import Aggregate, Batch, UsageRecorder, UsageRow, UsageStore, UsageTotals, usage_store
from gateway.auth.usage_sqlite import DEFAULT_SQLITE, SCHEMA_VERSION, SQLiteUsageStore, UsageSchemaError
from tests.procs import ROOT, Spawner

D1, D2, D3 = date(2026, 12, 3), date(2026, 12, 4), date(2026, 12, 5)


def at(d: date, hh: int = 12, mm: int = 0, ss: float = 0.0) -> float:
    return datetime(d.year, d.month, d.day, hh, mm, tzinfo=timezone.utc).timestamp() + ss


# -- the deterministic series a worker records (record i) -----------------------------------------------------
KEYS, MODELS = ("alice", "bob"), ("m1", "qwen2.5:7b", "m3")


def series(i: int) -> dict:
    key = KEYS[i % 2]
    return dict(key=key, model=MODELS[i % 3], team="research" if key == "alice" else None, prompt_tokens=i % 7 + 1,
                completion_tokens=i % 5, status=500 if i % 11 == 0 else 200, latency=0.25 * (i % 4))


def expected(n: int, copies: int = 1) -> dict[tuple[str, str], list[float]]:
    """(key, model) -> [requests, prompt, completion, errors, latency] for `copies` workers recording n each."""
    out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for i in range(n):
        s = series(i)
        e = out[(s["key"], s["model"])]
        for j, v in enumerate((1, s["prompt_tokens"], s["completion_tokens"], int(s["status"] >= 400),
                               s["latency"])):
            e[j] += v * copies
    return dict(out)


def as_table(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    return {(r["key"], r["model"]): [r["requests"], r["prompt_tokens"], r["completion_tokens"], r["errors"],
                                     r["latency_s"]] for r in rows}


def open_store(spec: str, prefix: str = "") -> UsageStore:
    if spec.startswith("redis://"):
        from gateway.auth.usage_redis import RedisUsageStore
        return RedisUsageStore(spec, prefix=prefix)
    return SQLiteUsageStore(spec)


async def _worker(a: argparse.Namespace) -> None:
    rec = UsageRecorder(open_store(a.store, a.prefix), flush_interval=a.interval, batch_size=a.batch)
    await rec.start()
    if a.command == "read":
        _say(json.dumps([_row_json(r) for r in await rec.store.query()]))
        await rec.close()
        return
    for i in range(a.n):
        rec.record(**series(i))
        if i % 10 == 9:
            await asyncio.sleep(0.0005)   # like requests arriving: the flusher runs in between
    if a.hang:
        assert await rec.flush()
        _say("flushed")
        for i in range(a.n):               # recorded, never flushed: the interval is an hour
            rec.record(**series(i))
        _say("recorded-more")
        await asyncio.sleep(3600)
    await rec.close()
    _say(json.dumps({"flushes": rec.stats.flushes, "failures": rec.stats.failures, "pending": rec.pending}))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _row_json(r: UsageRow) -> dict:
    return {f: (getattr(r, f).isoformat() if f == "day" else getattr(r, f)) for f in r.__slots__}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["record", "read"])
    p.add_argument("--store", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.002)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hang", action="store_true")
    asyncio.run(_worker(p.parse_args()))


def run_worker(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tests.test_usage", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def read_table(store: str, prefix: str = "") -> dict[tuple[str, str], list[float]]:
    return as_table(json.loads(run_worker("read", "--store", store, "--prefix", prefix)))


def concurrent_writers(spawn: Spawner, store: str, prefix: str = "", n: int = 3000) -> None:
    """Two worker processes record at once into one store: every count arrives, none twice."""
    procs = [spawn.proc([sys.executable, "-m", "tests.test_usage", "record", "--store", store, "--prefix", prefix,
                         "--n", str(n)], f"writer-{i}") for i in range(2)]
    for p in procs:
        assert p.popen.wait(120) == 0, p.output()
    stats = [json.loads(p.output().strip().splitlines()[-1]) for p in procs]
    # many interleaved transactions; a writer waits for the other (busy_timeout) instead of failing and retrying
    assert all(s["flushes"] >= 20 and s["failures"] == 0 and s["pending"] == 0 for s in stats), stats
    assert read_table(store, prefix) == expected(n, copies=2)


# -- the query semantics, shared with tests/test_usage_redis.py --------------------------------------------------
async def check_queries(store: UsageStore) -> None:
    now = [at(D1)]
    rec = UsageRecorder(store, flush_interval=3600, clock=lambda: now[0])
    await rec.start()
    calls = [(D1, "alice", "research", "m1", 10, 5, 200, 0.5), (D1, "alice", "research", "m1", 20, 7, 503, 1.0),
             (D1, "bob", "research", "m2", 1, 2, 200, 0.25), (D2, "carol", None, "m1", 100, 50, 200, 2.0),
             (D2, "alice", "research", "m2", 3, 4, 400, 0.125), (D3, "bob", "research", "m1", 8, 9, 200, 4.0),
             (D3, "carol", None, "m1", 1, 1, 200, 0.5)]
    for day, key, team, model, p, c, status, lat in calls:
        now[0] = at(day, 9)
        rec.record(key, model, team=team, prompt_tokens=p, completion_tokens=c, status=status, latency=lat)
    rec.record("bob", "m2", team="research", failed=True)    # a failed stream (status 200 sent) on D3
    calls.append((D3, "bob", "research", "m2", 0, 0, 599, 0.0))

    def want(pred) -> list[UsageRow]:
        acc: dict[tuple, list] = {}
        for day, key, team, model, p, c, status, lat in calls:
            if pred(day, key, team, model):
                e = acc.setdefault((day, key, model, team), [0, 0, 0, 0, 0.0])
                for j, v in enumerate((1, p, c, int(status >= 400), lat)):
                    e[j] += v
        return [UsageRow(d, k, m, t, *v) for (d, k, m, t), v in sorted(acc.items(), key=lambda kv: kv[0][:3])]

    assert await rec.query() == want(lambda *_: True)
    assert len(await rec.query()) == 7
    assert await rec.query(key="alice") == want(lambda d, k, t, m: k == "alice")
    assert await rec.query(team="research") == want(lambda d, k, t, m: t == "research")
    assert await rec.query(model="m1") == want(lambda d, k, t, m: m == "m1")
    assert await rec.query(start=D2) == want(lambda d, k, t, m: d >= D2)
    assert await rec.query(end=D2) == want(lambda d, k, t, m: d <= D2)
    assert await rec.query(start=D2, end=D2, model="m1") == want(lambda d, k, t, m: d == D2 and m == "m1")
    assert await rec.query(key="bob", team="research", start=D1, end=D3, model="m2") == \
        want(lambda d, k, t, m: k == "bob" and m == "m2")
    assert await rec.query(key="nobody") == []
    assert await rec.totals(key="alice") == UsageTotals(3, 33, 16, 2, 1.625)
    assert await rec.totals(team="research", end=D1) == UsageTotals(3, 31, 14, 1, 1.75)
    assert (await rec.totals()).total_tokens == sum(p + c for _, _, _, _, p, c, _, _ in calls)
    # the store alone (another replica, the CLI) answers the same once flushed
    assert await rec.store.query(team="research") == want(lambda d, k, t, m: t == "research")
    await rec.close()


def test_query_filters_and_totals(tmp_path: Path) -> None:
    asyncio.run(check_queries(SQLiteUsageStore(tmp_path / "u.db")))


async def check_rollover(store: UsageStore) -> None:
    """A request just before UTC midnight and one just after land on two days, whatever the local time zone."""
    now = [at(D1, 23, 59, 59.999)]
    rec = UsageRecorder(store, flush_interval=3600, clock=lambda: now[0])
    await rec.start()
    rec.record("alice", "m1", prompt_tokens=1)
    now[0] = at(D2, 0, 0)
    rec.record("alice", "m1", prompt_tokens=2)
    rec.record("alice", "m1", prompt_tokens=4)
    assert [(r.day, r.requests, r.prompt_tokens) for r in await rec.query()] == [(D1, 1, 1), (D2, 2, 6)]
    await rec.close()


def test_utc_midnight_rollover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")          # UTC+14: local midnight is not UTC midnight
    time.tzset()
    try:
        asyncio.run(check_rollover(SQLiteUsageStore(tmp_path / "u.db")))
    finally:
        monkeypatch.undo()
        time.tzset()


def test_store_from_state_settings(tmp_path: Path) -> None:
    from gateway.settings import StateSettings
    state = StateSettings(sqlite=str(tmp_path / "x.db"))
    s = usage_store(state.sqlite, state.redis)
    assert isinstance(s, SQLiteUsageStore) and s.path == tmp_path / "x.db"
    assert StateSettings().sqlite == DEFAULT_SQLITE
    from gateway.auth.usage_redis import RedisUsageStore
    r = usage_store(state.sqlite, "redis://:secret@127.0.0.1:1/0")
    assert isinstance(r, RedisUsageStore) and "secret" not in repr(r)


async def check_batch_applied_once(s: UsageStore) -> None:
    """A write whose reply was lost is retried as the same batch: counted once. A new batch counts again."""
    await s.open()
    batch = Batch("writer1", 1, [Aggregate(D1, "alice", "m1", None, 1, 10, 20, 0, 0.5)])
    await s.write(batch)
    await s.write(batch)
    assert await s.totals() == UsageTotals(1, 10, 20, 0, 0.5)
    await s.write(Batch("writer1", 2, batch.entries))
    await s.write(Batch("writer2", 1, batch.entries))      # another process's first batch
    await s.write(Batch("writer1", 1, batch.entries))      # older than writer1's last: already applied
    assert await s.totals() == UsageTotals(3, 30, 60, 0, 1.5)
    await s.close()


def test_a_retried_batch_is_applied_once(tmp_path: Path) -> None:
    asyncio.run(check_batch_applied_once(SQLiteUsageStore(tmp_path / "u.db")))


def test_flushes_add_to_the_stored_row(tmp_path: Path) -> None:
    async def go() -> None:
        rec = UsageRecorder(SQLiteUsageStore(tmp_path / "u.db"), flush_interval=3600, clock=lambda: at(D2))
        await rec.start()
        for tokens in (5, 7, 11):
            rec.record("alice", "m1", team="a", prompt_tokens=tokens, completion_tokens=1, latency=0.5)
            assert await rec.flush()
        rec.record("alice", "m1", team="c", prompt_tokens=50)
        rec.record("alice", "m1", team="b", prompt_tokens=50)    # the latest team wins
        await rec.close()
        again = SQLiteUsageStore(tmp_path / "u.db")
        await again.open()
        assert await again.query() == [UsageRow(D2, "alice", "m1", "b", 5, 123, 3, 0, 1.5)]
        await again.close()
    asyncio.run(go())


def test_background_flush_by_interval_and_by_count(tmp_path: Path) -> None:
    async def visible(path: Path) -> int:
        other = SQLiteUsageStore(path)    # a second connection: sees only what was committed
        await other.open()
        try:
            return (await other.totals()).requests
        finally:
            await other.close()

    async def go() -> None:
        by_time = UsageRecorder(SQLiteUsageStore(tmp_path / "t.db"), flush_interval=0.05)
        await by_time.start()
        by_time.record("alice", "m1")
        assert await visible(tmp_path / "t.db") == 0
        await asyncio.sleep(0.3)
        assert await visible(tmp_path / "t.db") == 1
        await by_time.close()

        by_count = UsageRecorder(SQLiteUsageStore(tmp_path / "c.db"), flush_interval=3600, batch_size=10)
        await by_count.start()
        for i in range(9):
            by_count.record(f"user{i}", "m1")
        await asyncio.sleep(0.3)
        assert await visible(tmp_path / "c.db") == 0       # 9 distinct aggregates: not yet
        by_count.record("user9", "m1")
        await asyncio.sleep(0.3)
        assert await visible(tmp_path / "c.db") == 10      # the 10th wakes the flusher
        await by_count.close()
    asyncio.run(go())


def test_locked_file_keeps_usage_bounded_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "u.db"

    async def go() -> None:
        rec = UsageRecorder(SQLiteUsageStore(path, busy_timeout=0.1), flush_interval=3600, max_pending=5)
        await rec.start()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")                  # another writer holds the file
        for name in ("a0", "a1", "a2"):
            rec.record(name, "m1", prompt_tokens=1)
        assert not await rec.flush() and not await rec.flush()
        assert rec.stats.outage and rec.stats.failures == 2 and rec.pending == 3
        for i in range(5):
            rec.record(f"b{i}", "m1", prompt_tokens=10)     # b0, b1 kept (5 in memory); b2..b4 dropped
        rec.record("b0", "m1", prompt_tokens=10)            # an existing aggregate still counts
        assert rec.pending == 5 and rec.stats.dropped == 3
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await rec.flush() and not rec.stats.outage
        assert {r.key: (r.requests, r.prompt_tokens) for r in await rec.query()} == \
            {"a0": (1, 1), "a1": (1, 1), "a2": (1, 1), "b0": (2, 20), "b1": (1, 10)}
        await rec.close()

    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        asyncio.run(go())
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1, caplog.text                  # logged once for the outage, not per attempt
    assert any("is back" in r.getMessage() for r in caplog.records)


def test_waiting_on_a_locked_file_does_not_block_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "u.db"

    async def go() -> None:
        rec = UsageRecorder(SQLiteUsageStore(path, busy_timeout=1.0), flush_interval=3600)
        await rec.start()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        rec.record("alice", "m1")
        flush = asyncio.create_task(rec.flush())            # waits ~1 s on the lock, in a thread
        ticks, t0 = 0, time.monotonic()
        while not flush.done():
            rec.record("alice", "m2")
            ticks += 1
            await asyncio.sleep(0.01)
        assert time.monotonic() - t0 >= 0.9 and ticks >= 50  # the loop kept running while the flush waited
        assert flush.result() is False
        blocker.execute("ROLLBACK")
        blocker.close()
        assert (await rec.totals()).requests == 1 + ticks
        await rec.close()
    asyncio.run(go())


def test_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "u.db"

    async def go() -> None:
        s = SQLiteUsageStore(path)
        await s.open()
        await s.close()
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        again = SQLiteUsageStore(path)
        await again.open()                                   # a second open does not add a version row
        await again.close()
        assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
        con.execute("UPDATE schema_version SET version = 99")
        con.commit()
        con.close()
        with pytest.raises(UsageSchemaError, match="version 99"):
            await SQLiteUsageStore(path).open()             # refused, and its connection closed
    asyncio.run(go())


def test_names_only_never_a_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-" + secrets.token_urlsafe(32)                  # what `llm-gateway keys new` prints

    async def go() -> None:
        rec = UsageRecorder(SQLiteUsageStore(tmp_path / "u.db"), flush_interval=3600)
        await rec.start()
        rec.record(key, "m1", prompt_tokens=5)               # a wiring mistake: the key instead of its name
        rec.record("alice", "m1", prompt_tokens=5)
        rec.record(key, "m2", prompt_tokens=5)
        assert rec.stats.dropped == 2
        await rec.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"alice" in stored and key.encode() not in stored and key[3:20].encode() not in stored
    assert key not in caplog.text and caplog.text.count("looks like a key") == 1


# -- real processes on one file --------------------------------------------------------------------------------
def test_two_processes_write_one_file_without_losing_updates(tmp_path: Path, spawn: Spawner) -> None:
    concurrent_writers(spawn, str(tmp_path / "shared.db"))


def test_usage_survives_restart_and_sigkill_after_flush(tmp_path: Path, spawn: Spawner) -> None:
    db = str(tmp_path / "u.db")
    run_worker("record", "--store", db, "--n", "500")        # records, closes (flushes), exits
    assert read_table(db) == expected(500)                   # a second process reads the same totals

    killed = spawn.proc([sys.executable, "-m", "tests.test_usage", "record", "--store", db, "--n", "300", "--hang",
                         "--interval", "3600", "--batch", "100000"], "killed")
    deadline = time.monotonic() + 60
    while "recorded-more" not in killed.output():
        assert killed.popen.poll() is None and time.monotonic() < deadline, killed.output()
        time.sleep(0.05)
    killed.popen.send_signal(signal.SIGKILL)
    killed.popen.wait(10)
    after = read_table(db)
    want = expected(500)
    for k, v in expected(300).items():                       # the flushed 300 are kept, the unflushed 300 lost
        want[k] = [a + b for a, b in zip(want[k], v)]
    assert after == want


if __name__ == "__main__":
    main()
