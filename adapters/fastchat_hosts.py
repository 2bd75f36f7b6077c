"""Which worker addresses a FastChat controller may send the gateway to (adapters/fastchat.py).

A controller's word is not trusted blindly (it could point the gateway, and clients' prompts, at
any URL): a worker address must be a bare http(s) base URL on an allowed host (`worker_hosts`,
default the controller's own host), else it is skipped and logged once.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("gateway.fastchat")
# A base URL and nothing else: no user info, path, query or fragment (a `?x=` suffix would turn
# the gateway's `addr + "/worker_get_status"` into any path on that host).
BASE_URL_RE = re.compile(r"((?-i:https?))://(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?/?", re.I | re.A)
HOST_PORT_RE = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?", re.I | re.A)
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})  # one machine: a controller on one, workers on another
MAX_LOGGED = 256  # distinct rejected addresses remembered (each is logged once)


def parse_host_port(entry: str) -> tuple[str, int | None]:
    """A `worker_hosts` entry (`host`, `host:port`, `[v6]:port`) as (lowercase host, port or None)."""
    m = HOST_PORT_RE.fullmatch(entry.strip())
    if m is None or (m[2] is not None and not 0 < int(m[2]) < 65536):
        raise ValueError(f"{entry!r} is not a host or host:port")
    return m[1].strip("[]").lower(), int(m[2]) if m[2] else None


def allowed_worker_hosts(controller_url: str, entries: Any) -> frozenset[tuple[str, int | None]]:
    """Configured entries, or by default the controller's own host (any port; the loopback names
    stand for each other: FastChat workers advertise `localhost` by default)."""
    if entries is not None:
        return frozenset(parse_host_port(e) for e in entries)
    host = (urlsplit(controller_url).hostname or "").lower()
    return frozenset((h, None) for h in (LOOPBACK if host in LOOPBACK else {host}))


def _safe(addr: str) -> str:
    """Scheme, host and port of an address, for the log: never its user info, path or query."""
    try:
        u = urlsplit(addr[:1000])
        return f"{u.scheme}://{u.hostname or ''}" + (f":{u.port}" if u.port else "")
    except ValueError:
        return "(unparseable)"


class WorkerHosts:
    """The allowed hosts of one backend, and the refused addresses already logged."""

    def __init__(self, backend: str, controller_url: str, entries: Any) -> None:
        self.backend = backend
        self.hosts = allowed_worker_hosts(controller_url, entries)
        self.rejected: set[str] = set()

    def allowed(self, addr: str) -> bool:
        """Is this controller-reported address a base URL on an allowed host? A refused one is
        never contacted, and logged once, by scheme, host and port only (no user info or query)."""
        m = BASE_URL_RE.fullmatch(addr)
        port = (int(m[3]) if m[3] else 443 if m[1] == "https" else 80) if m is not None else 0
        if m is not None and 0 < port < 65536:
            host = m[2].strip("[]").lower()
            if (host, None) in self.hosts or (host, port) in self.hosts:
                return True
            why = "its host (or port) is not in worker_hosts"
        else:
            why = "it is not a bare http(s) base URL (user info, path, query or fragment)"
        if addr not in self.rejected and len(self.rejected) < MAX_LOGGED:
            self.rejected.add(addr)
            log.warning("backend %s: controller reported worker address %r; skipped: %s", self.backend,
                        _safe(addr), why)
        return False
