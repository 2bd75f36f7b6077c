"""The key ring: client keys and admin keys, compared as bytes in constant time.

A request's credential is the `Authorization` header (`Bearer <key>`, or a bare key as some
Azure-style clients send it) or, when there is no `Authorization` header, `X-Api-Key: <key>`. Both
the raw-ASGI inference path and the FastAPI endpoints pass the header's raw bytes, so a non-ASCII
key (UTF-8 on the wire, UTF-8 in the config) matches the same way on both.
"""

from __future__ import annotations

import enum
import hmac

from pydantic import SecretStr

from gateway.errors import GatewayError


class Role(enum.IntEnum):
    NONE = 0
    CLIENT = 1
    ADMIN = 2


class Forbidden(GatewayError):
    """Authenticated (or not needing to be) but not allowed here: 403, never retried by clients."""

    status = 403
    type = "permission_error"


def token(header: bytes | None) -> bytes | None:
    """The key in an Authorization / X-Api-Key value: `Bearer ` (any case) stripped if present."""
    if not header:
        return None
    return header[7:].strip() if header[:7].lower() == b"bearer " else header.strip()


def _matches(tok: bytes, keys: list[bytes]) -> bool:
    ok = False
    for k in keys:  # over every key, whatever matched first: the time says nothing about which
        ok |= hmac.compare_digest(tok, k)
    return ok


class KeyRing:
    def __init__(self, client: list[SecretStr], admin: list[SecretStr]) -> None:
        self.client = [k.get_secret_value().encode() for k in client]
        self.admin = [k.get_secret_value().encode() for k in admin]
        self.any = self.client + self.admin  # an admin key may also do what a client key does

    @property
    def configured(self) -> bool:
        return bool(self.any)

    def role(self, header: bytes | None) -> Role:
        tok = token(header)
        if tok is None:
            return Role.NONE
        admin = _matches(tok, self.admin)
        client = _matches(tok, self.client)
        return Role.ADMIN if admin else Role.CLIENT if client else Role.NONE

    def may_infer(self, header: bytes | None) -> bool:
        """Inference and /v1/models: open when no client key is configured, else any valid key."""
        if not self.client:
            return True
        tok = token(header)
        return tok is not None and _matches(tok, self.any)
