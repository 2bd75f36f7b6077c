"""`llm-gateway status`: a running gateway's backends as a table (from GET /admin/backends)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def _get(url: str, path: str, key: str | None) -> dict | None:  # type: ignore[type-arg]
    req = urllib.request.Request(url.rstrip("/") + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        print(f"llm-gateway status: {url} answered HTTP {exc.code}: {_message(exc)}"
              + (" (set GATEWAY_ADMIN_KEY to an admin key)" if exc.code in (401, 403) else ""))
    except (urllib.error.URLError, OSError) as exc:
        print(f"llm-gateway status: cannot reach {url}: {getattr(exc, 'reason', exc)}")
    return None


def _key() -> str | None:
    return os.environ.get("GATEWAY_ADMIN_KEY") or os.environ.get("GATEWAY_API_KEY")


def show_logs(url: str, backend: str, lines: int) -> int:
    """A launched backend's last output lines (GET /admin/backends/{name}/logs)."""
    doc = _get(url, f"/admin/backends/{urllib.parse.quote(backend, safe='')}/logs?lines={max(lines, 1)}", _key())
    if doc is None:
        return 1
    print(f"# {backend} ({doc.get('state')}): its last {len(doc.get('lines', []))} line(s)")
    for line in doc.get("lines", []):
        print(line)
    return 0


def show_usage(url: str, filters: dict[str, str | None]) -> int:
    """`llm-gateway usage`: GET /admin/usage as a table (per key x model x day) and its totals."""
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v})
    doc = _get(url, "/admin/usage" + (f"?{query}" if query else ""), _key())
    if doc is None:
        return 1
    rows = [("DAY", "KEY", "TEAM", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "ERRORS", "MEAN S")]
    for r in doc["rows"]:
        rows.append((r["day"], r["key"], r["team"] or "-", r["model"], str(r["requests"]), str(r["prompt_tokens"]),
                     str(r["completion_tokens"]), str(r["errors"]),
                     f"{r['latency_s'] / r['requests']:.2f}" if r["requests"] else "-"))
    t = doc["totals"]
    rows.append(("TOTAL", "", "", "", str(t["requests"]), str(t["prompt_tokens"]), str(t["completion_tokens"]),
                 str(t["errors"]), f"{t['latency_s'] / t['requests']:.2f}" if t["requests"] else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def show(url: str, api_key: str | None) -> int:
    if api_key:
        print("llm-gateway status: --api-key is deprecated (visible in the process list); set GATEWAY_ADMIN_KEY",
              file=sys.stderr)
    doc = _get(url, "/admin/backends", api_key or _key())
    if doc is None:
        return 1
    rows = [("BACKEND", "KIND", "STATE", "SINCE", "IN FLIGHT", "LOAD", "MODELS", "DETAIL")]
    now = time.time()
    for b in doc.get("backends", []):
        sup = b.get("supervisor") or {}
        detail = b.get("detail") or ""
        if sup:
            pids = ",".join(map(str, sup.get("pids") or [])) or "-"
            detail = f"[launched: pid {pids}, restarts {sup.get('restarts', 0)}] {detail}"
        rows.append((b["name"], b["kind"], b["state"], _age(now - b["since"]), str(b["in_flight"]),
                     "-" if b.get("reported_load") is None else f"{b['reported_load']:g}",
                     ", ".join(b.get("models") or []) or "-", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc)["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason or ""
