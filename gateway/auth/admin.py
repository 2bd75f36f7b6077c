"""The admin endpoints' policy (/admin/*: read the topology, drain and undrain backends).

- Cross-site requests are refused first, whatever key they carry: a browser sends `Sec-Fetch-Site`
  (refused unless `same-origin` or `none`) and, on POSTs, `Origin` (refused unless its host:port is
  the request's `Host`). A web page therefore cannot drain a gateway; curl and the CLI send neither.
- `auth.admin_keys` set: only an admin key passes; a client key gets 403, no or a wrong key 401.
- Only client keys set: admin is disabled over the network (a client key 403, others 401), so that
  no inference key is ever an admin key by omission.
- No keys at all (an open local gateway): admin answers loopback clients that address it by a
  loopback name; anything else 403 (this also defeats DNS rebinding, which needs a foreign Host).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from gateway.auth.keys import Forbidden, KeyRing, Role
from gateway.errors import Unauthorized

SAME_SITE = (b"same-origin", b"none")


def check_admin(ring: KeyRing, headers: dict[bytes, bytes], credential: bytes | None, client_ip: str | None) -> None:
    """Raise the error this admin request deserves, or return when it may proceed."""
    if cross_site(headers):
        raise Forbidden("Cross-site requests may not use admin endpoints.", code="cross_site_request")
    if not ring.configured:
        if not (loopback_ip(client_ip) and loopback_host(headers.get(b"host", b""))):
            raise Forbidden("Admin endpoints of a gateway without keys answer only on loopback "
                            "(http://127.0.0.1:<port>); set auth.admin_keys to use them remotely.",
                            code="admin_loopback_only")
        return
    role = ring.role(credential)
    if role is Role.ADMIN:
        return
    if role is Role.NONE:
        raise Unauthorized("Incorrect or missing admin key. Send it as 'Authorization: Bearer <admin key>'.")
    if ring.admin:
        raise Forbidden("This key may not use admin endpoints; they need a key from auth.admin_keys.",
                        code="admin_key_required")
    raise Forbidden("Admin endpoints are disabled: this gateway has client keys but no auth.admin_keys.",
                    code="admin_disabled")


def cross_site(headers: dict[bytes, bytes]) -> bool:
    site = headers.get(b"sec-fetch-site")
    if site is not None and site.strip().lower() not in SAME_SITE:
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False
    # "null" (sandboxed frames, file:) has no host and never matches
    netloc = urlsplit(origin.decode("latin-1").strip()).netloc.lower()
    return not netloc or netloc != headers.get(b"host", b"").decode("latin-1").strip().lower()


def loopback_ip(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def loopback_host(host: bytes) -> bool:
    """Is a Host header (name[:port], [v6][:port]) a loopback name?"""
    h = host.decode("latin-1").strip().lower()
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else ""
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h in ("localhost", "localhost.") or h.endswith(".localhost"):
        return True
    return loopback_ip(h)
