"""Host guard (allowedHostsMiddleware when bound to loopback) and gin's 404/405 answers."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Any

from aiohttp import web

from .scheduler import State


# ---------------------------------------------------------------------------------------------------
# Host guard (allowedHostsMiddleware when bound to loopback), gin's 404/405, test hooks
# ---------------------------------------------------------------------------------------------------

_GO_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


@functools.lru_cache(maxsize=1)
def _local_ips() -> frozenset[str]:
    ips: set[str] = set()
    try:
        for *_rest, addr in socket.getaddrinfo(socket.gethostname(), None):
            ips.add(addr[0])
    except OSError:
        pass
    return frozenset(ips)


def host_allowed(host_header: str) -> bool:
    h = host_header
    m = re.fullmatch(r"\[([^\]]*)\]:(\d*)", h) or re.fullmatch(r"([^:\[\]]*):(\d*)", h)
    host = m.group(1) if m else h
    try:
        ip = ipaddress.ip_address(host)
        if ip.is_loopback or ip.is_unspecified or any(ip in n for n in _GO_PRIVATE if n.version == ip.version) \
                or str(ip) in _local_ips():
            return True
    except ValueError:
        pass
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return any(host.endswith("." + tld) for tld in ("localhost", "local", "internal"))


@web.middleware
async def gin_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    st: State = request.app["state"]
    if not request.path.startswith("/_"):
        if st.host_guard and not host_allowed(request.headers.get("Host", "")):
            return web.Response(status=403)
        if st.host_guard and request.method == "OPTIONS":
            return web.Response(status=204)
    exc = request.match_info.http_exception
    if exc is not None and exc.status == 404:
        return web.Response(status=404, body=b"404 page not found", headers={"Content-Type": "text/plain"})
    if exc is not None and exc.status == 405:
        return web.Response(status=405, body=b"405 method not allowed", headers={"Content-Type": "text/plain"})
    return await handler(request)
