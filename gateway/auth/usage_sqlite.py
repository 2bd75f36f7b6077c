"""The default usage store: one SQLite file (`state.sqlite`), so usage survives a restart without a server.

Why this shape:
- WAL mode and a busy timeout: several processes (gateway workers, `llm-gateway usage`) share the file; readers
  never block the writer, and writers wait for each other instead of failing.
- A batch is ONE `BEGIN IMMEDIATE` transaction of UPSERTs that ADD to the row (`requests = requests +
  excluded.requests`): concurrent writers never overwrite each other's counts, and a crash keeps whole batches.
  The same transaction records the writer's batch number, so a batch retried after all (a COMMIT that raised but
  landed, a flush cancelled while its thread finished) is applied once.
- sqlite3 is blocking, so every call runs in a thread (asyncio.to_thread); the event loop never waits on the disk.
- `schema_version` says which layout the file holds; a file from a newer gateway is refused, not misread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from gateway.auth.usage import Batch, UsageQuery, UsageRow, UsageStore

log = logging.getLogger("gateway.usage")

DEFAULT_SQLITE = "./llm-gateway-usage.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,                  -- UTC, YYYY-MM-DD
    key TEXT NOT NULL,                  -- the key's config name, never the key
    model TEXT NOT NULL,                -- public model name
    team TEXT,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_team ON usage (team, day);
CREATE TABLE IF NOT EXISTS usage_writers (      -- each recorder's last applied batch: a retry is applied once
    writer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL                       -- epoch seconds (writers gone for a week are deleted)
) WITHOUT ROWID;
"""

_WRITER = """
INSERT INTO usage_writers (writer, seq, updated) VALUES (?, ?, ?)
ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, updated = excluded.updated
"""
WRITER_TTL_S = 7 * 86400

_UPSERT = """
INSERT INTO usage (day, key, model, team, requests, prompt_tokens, completion_tokens, errors, latency_s)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, key, model) DO UPDATE SET
    team = excluded.team,
    requests = requests + excluded.requests,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    errors = errors + excluded.errors,
    latency_s = latency_s + excluded.latency_s
"""


class UsageSchemaError(RuntimeError):
    """The file holds a layout this gateway does not know (written by a newer version)."""


class SQLiteUsageStore(UsageStore):
    def __init__(self, path: str | Path = DEFAULT_SQLITE, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._con: sqlite3.Connection | None = None
        self._mutex = threading.Lock()   # one connection, used from worker threads one at a time

    def __repr__(self) -> str:
        return f"sqlite:{self.path}"

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    async def write(self, batch: Batch) -> None:
        rows = [(a.day.isoformat(), a.key, a.model, a.team, a.requests, a.prompt_tokens, a.completion_tokens,
                 a.errors, a.latency_s) for a in batch.entries]
        await asyncio.to_thread(self._write, batch.writer, batch.seq, rows)

    async def read(self, q: UsageQuery) -> list[UsageRow]:
        return await asyncio.to_thread(self._read, q)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # -- in a worker thread ------------------------------------------------------------------------------
    def _journal_wal(self, con: sqlite3.Connection) -> str:
        """Switch the file to WAL. Two processes opening a new file at once can get "database is locked" here
        at once, without SQLite's busy handler waiting (a journal mode change needs the file to itself): tried
        again until the busy timeout has passed (seen in CI: two gateways sharing one file)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return str(con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            if self._journal_wal(con) != "wal":   # e.g. a network file system
                log.warning("usage: %s cannot use WAL; readers may wait for writers", self.path)
            con.execute("PRAGMA synchronous=NORMAL")   # WAL: a process crash loses nothing committed
            with _transaction(con):
                for statement in _SCHEMA.split(";"):     # (no ';' in the schema's comments)
                    if statement.strip():
                        con.execute(statement)
                found = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
                if found is None:
                    con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif found > SCHEMA_VERSION:
                    raise UsageSchemaError(f"{self.path} holds usage schema version {found}; this gateway knows "
                                           f"up to {SCHEMA_VERSION} (written by a newer version?)")
        except BaseException:
            con.close()
            raise
        self._con = con

    def _write(self, writer: str, seq: int, rows: list[tuple[object, ...]]) -> None:
        with self._mutex, _transaction(self._connection()) as con:
            done = con.execute("SELECT seq FROM usage_writers WHERE writer = ?", (writer,)).fetchone()
            if done is not None and done[0] >= seq:
                return
            con.executemany(_UPSERT, rows)
            now = time.time()
            con.execute(_WRITER, (writer, seq, now))
            con.execute("DELETE FROM usage_writers WHERE updated < ?", (now - WRITER_TTL_S,))

    def _read(self, q: UsageQuery) -> list[UsageRow]:
        where, args = [], []
        for column, value in (("key", q.key), ("team", q.team), ("model", q.model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if q.start is not None:
            where.append("day >= ?")
            args.append(q.start.isoformat())
        if q.end is not None:
            where.append("day <= ?")
            args.append(q.end.isoformat())
        sql = ("SELECT day, key, model, team, requests, prompt_tokens, completion_tokens, errors, latency_s "
               "FROM usage" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY day, key, model")
        with self._mutex:
            found = self._connection().execute(sql, args).fetchall()
        return [UsageRow(date.fromisoformat(r[0]), *r[1:]) for r in found]

    def _close(self) -> None:
        with self._mutex:
            if self._con is not None:
                self._con.close()
                self._con = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            raise RuntimeError("usage store is not open (await open() first)")
        return self._con


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so a busy file makes us wait (busy_timeout) at the start
    rather than fail half-way when a read would have to be upgraded to a write."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:   # a failed COMMIT (disk full) leaves it open: the next batch must start clean
            con.execute("ROLLBACK")
        raise
