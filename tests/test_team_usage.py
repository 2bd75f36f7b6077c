"""Usage per key name x model x day on the request path (gateway/auth/usage.py): recorded by a real gateway,
read at GET /admin/usage and by `llm-gateway usage`, kept in SQLite across a restart, counted per key in
/metrics, and never holding a key."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Gateway, Spawner

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef00"
OPS = "ops-key-0123456789abcdef00"


def chat(gw: Gateway, key: str, model: str, **body: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


def usage(gw: Gateway, **params: str) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/usage", params=params, headers={"Authorization": f"Bearer {OPS}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_usage_is_recorded_per_key_queried_and_survives_a_restart(spawn: Spawner, tmp_path: Path) -> None:
    dbl = spawn.double("d", "model-a,model-b")
    failing = spawn.double("f", "model-c", "--fail-status", "400")
    db = tmp_path / "usage.db"
    cfg = {"auth": {"keys": [{"name": "alice", "key": ALICE, "team": "research"}, {"name": "bob", "key": BOB},
                             {"name": "ops", "key": OPS, "admin": True}]},
           "state": {"sqlite": str(db)}, "backends": [{"name": "d", "kind": "openai", "url": dbl.url},
                                                       {"name": "f", "kind": "openai", "url": failing.url}]}
    gw = spawn.gateway(cfg)
    assert chat(gw, ALICE, "model-a").status_code == 200
    r = chat(gw, ALICE, "model-a", stream=True)
    assert r.status_code == 200 and "[DONE]" in r.text
    assert chat(gw, ALICE, "model-b").status_code == 200
    assert chat(gw, BOB, "model-b").status_code == 200
    assert chat(gw, ALICE, "model-c").status_code == 400      # an error (the backend's), counted as one
    today = datetime.now(UTC).date().isoformat()
    doc = usage(gw, key="alice")
    rows = {(row["model"], row["day"]): row for row in doc["rows"]}
    assert set(rows) == {("model-a", today), ("model-b", today), ("model-c", today)}
    a = rows[("model-a", today)]
    assert a["requests"] == 2 and a["errors"] == 0 and a["team"] == "research" and a["latency_s"] > 0
    assert a["prompt_tokens"] > 0 and a["completion_tokens"] > 0            # the double's usage, stream too
    assert rows[("model-b", today)]["requests"] == 1 and rows[("model-b", today)]["errors"] == 0
    assert rows[("model-c", today)]["requests"] == 1 and rows[("model-c", today)]["errors"] == 1
    assert doc["totals"]["requests"] == 4 and doc["totals"]["errors"] == 1
    assert usage(gw, team="research")["totals"]["requests"] == 4
    assert usage(gw, model="model-b")["totals"]["requests"] == 2
    assert usage(gw, start="2000-01-01", end="2000-12-31")["rows"] == []
    bad = httpx.get(gw.url + "/admin/usage", params={"start": "yesterday"}, headers={"Authorization": f"Bearer {OPS}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start"
    assert httpx.get(gw.url + "/admin/usage", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 403
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'llm_gateway_key_requests_total{key="alice",status="2xx"} 3.0' in metrics
    assert 'llm_gateway_key_requests_total{key="alice",status="4xx"} 1.0' in metrics
    prompt = float(sum(row["prompt_tokens"] for row in doc["rows"]))
    assert f'llm_gateway_key_tokens_total{{key="alice",kind="prompt"}} {prompt}' in metrics

    out = subprocess.run([sys.executable, "-m", "gateway", "usage", "--url", gw.url, "--key", "alice"],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "GATEWAY_ADMIN_KEY": OPS})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["DAY", "KEY", "TEAM", "MODEL"]
    assert lines[-1].split()[:2] == ["TOTAL", "4"]
    assert any(line.split()[:4] == [today, "alice", "research", "model-a"] for line in lines)

    before = usage(gw)["totals"]
    assert chat(gw, BOB, "model-a").status_code == 200  # recorded in memory, then at once:
    gw.proc.popen.send_signal(signal.SIGTERM)           # a clean stop writes what is pending
    assert gw.proc.popen.wait(30) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal after its shutdown
    gw2 = spawn.gateway(cfg)
    after = usage(gw2)["totals"]
    assert after["requests"] == before["requests"] + 1 and after["errors"] == before["errors"]
    assert after["prompt_tokens"] > before["prompt_tokens"]
    for secret in (ALICE, BOB, OPS):                    # names only, in the file and everywhere else
        assert secret.encode() not in db.read_bytes()
        assert secret not in gw.proc.output() + gw2.proc.output() + metrics


def test_a_gateway_without_keys_records_no_usage(spawn: Spawner, tmp_path: Path) -> None:
    dbl = spawn.double("d", "model-a")
    gw = spawn.gateway({"backends": [{"name": "d", "kind": "openai", "url": dbl.url}],
                        "state": {"sqlite": str(tmp_path / "never.db")}})
    assert chat(gw, "whatever", "model-a").status_code == 200
    r = httpx.get(gw.url + "/admin/usage")
    assert r.status_code == 409 and r.json()["error"]["code"] == "usage_not_recorded"
    assert not (tmp_path / "never.db").exists()


def _requests_in(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT COALESCE(SUM(requests), 0) FROM usage").fetchone()[0])
        except sqlite3.OperationalError:   # the table is not made yet
            return 0


def test_usage_flush_interval_sets_how_soon_usage_reaches_the_file(spawn: Spawner, tmp_path: Path) -> None:
    """`state.usage_flush_interval`: 0.2 s writes a request within a second; an hour writes nothing until the
    clean stop (which writes what is pending). Read from the SQLite files, not /admin/usage (which flushes)."""
    dbl = spawn.double("d", "model-a")
    gws = {}
    for interval in (0.2, 3600):
        db = tmp_path / f"usage-{interval}.db"
        gws[interval] = (db, spawn.gateway({"auth": {"keys": [{"name": "alice", "key": ALICE}]},
                                            "state": {"sqlite": str(db), "usage_flush_interval": interval},
                                            "backends": [{"name": "d", "kind": "openai", "url": dbl.url}]}))
    for _, gw in gws.values():
        assert chat(gw, ALICE, "model-a").status_code == 200
    fast, slow = gws[0.2][0], gws[3600][0]
    deadline = time.monotonic() + 5
    while _requests_in(fast) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _requests_in(fast) == 1
    time.sleep(1.5)  # past the default interval: the hourly one still holds its request in memory
    assert _requests_in(slow) == 0
    gws[3600][1].proc.popen.send_signal(signal.SIGTERM)
    gws[3600][1].proc.popen.wait(30)
    assert _requests_in(slow) == 1
