"""The key ring: who a request's key belongs to (a named key, a flat client key, an admin key).

A request's credential is the `Authorization` header (`Bearer <key>`, or a bare key as some
Azure-style clients send it) or, when there is no `Authorization` header, `X-Api-Key: <key>`. Both
the raw-ASGI inference path and the FastAPI endpoints pass the header's raw bytes, so a non-ASCII
key (UTF-8 on the wire, UTF-8 in the config) matches the same way on both.

Every key is held as HMAC-SHA256(secret, key) and a request's key is found by its own HMAC: one hash
and one dict lookup, whatever the number of keys, and a lookup by a keyed digest tells an attacker
nothing about how close a guess was. Named keys (`auth.keys`) may be stored in the config as that
digest only (`hash: hmac-sha256:<hex>`, printed by `llm-gateway keys new`), with the secret in the
environment (`auth.secret_env`): a leaked config reveals no key. Plaintext keys (`api_keys`,
`admin_keys`, a named key's `key:`) are hashed at start with that secret, or with a random one.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from gateway.errors import GatewayError
from gateway.settings import AuthSettings, Limits


SEEN_MAX = 4096  # verified header values remembered (cleared when full)


class Role(enum.IntEnum):
    NONE = 0
    CLIENT = 1
    ADMIN = 2


class Forbidden(GatewayError):
    """Authenticated (or not needing to be) but not allowed here: 403, never retried by clients."""

    status = 403
    type = "permission_error"


def model_not_allowed(model: str) -> Forbidden:
    return Forbidden(f"This key may not use the model '{model}'.", code="model_not_allowed", param="model")


class KeySecretMissing(ValueError):
    """Hashed keys are configured but their secret is not in the environment."""


def token(header: bytes | None) -> bytes | None:
    """The key in an Authorization / X-Api-Key value: `Bearer ` (any case) stripped if present."""
    if not header:
        return None
    return header[7:].strip() if header[:7].lower() == b"bearer " else header.strip()


def digest(secret: bytes, key: bytes) -> bytes:
    return hmac.new(secret, key, hashlib.sha256).digest()


def hash_text(secret: bytes, key: bytes) -> str:
    """The config form of a key: `hmac-sha256:<hex>`."""
    return "hmac-sha256:" + digest(secret, key).hex()


@dataclass(eq=False, slots=True)
class Identity:
    """Whose key it is: the name is what usage, limits and logs record (never the key)."""
    name: str
    team: str | None = None
    admin: bool = False
    patterns: tuple[str, ...] = ("*",)
    limits: Limits | None = None
    team_limits: Limits | None = None
    subjects: tuple = ()  # type: ignore[type-arg]  # its limits (gateway/auth/enforce.py)
    leased: bool = False                          # some subject has a concurrency limit
    plan: int = -1                                # its subjects' plan in the C limits store (limits_native.py)
    counts: list[int] = field(default_factory=lambda: [0] * 8)  # its llm_gateway_key_* (runtime.py shares them)
    _allowed: dict[str, bool] = field(default_factory=dict)

    def allows(self, model: str) -> bool:
        """May this key use the public model `model`? (Names come from the routing table: the cache is bounded.)"""
        ok = self._allowed.get(model)
        if ok is None:
            ok = self._allowed[model] = any(fnmatchcase(model, p) for p in self.patterns)
        return ok


class KeyRing:
    def __init__(self, auth: AuthSettings, environ: Mapping[str, str] = os.environ) -> None:
        text = environ.get(auth.secret_env)
        if any(k.hash for k in auth.keys) and not text:
            raise KeySecretMissing(f"auth.keys has hashed keys but ${auth.secret_env} is not set: it must hold the "
                                   f"secret `llm-gateway keys new` hashed them with")
        self.secret = text.encode() if text else secrets.token_bytes(32)
        self.by_digest: dict[bytes, Identity] = {}
        # Authorization values already verified -> their identity: a key costs its HMAC once, not per request.
        self._seen: dict[bytes, Identity] = {}
        teams = {t.name: t.limits for t in auth.teams}
        for i, k in enumerate(auth.api_keys):
            self._add(k.get_secret_value().encode(), Identity(f"api_keys[{i}]"), f"api_keys[{i}]")
        for i, k in enumerate(auth.admin_keys):
            self._add(k.get_secret_value().encode(), Identity(f"admin_keys[{i}]", admin=True), f"admin_keys[{i}]")
        for k in auth.keys:
            ident = Identity(k.name, k.team, k.admin, tuple(k.models), k.limits if k.limits.any() else None,
                             teams.get(k.team) if k.team and teams.get(k.team) and teams[k.team].any() else None)
            d = bytes.fromhex(k.hash.split(":", 1)[1]) if k.hash else digest(
                self.secret, k.key.get_secret_value().encode())  # type: ignore[union-attr]
            self._add_digest(d, ident, f"keys {k.name!r}")
        # Inference needs a key once any client key or named key exists; admin keys alone leave it open.
        self.client = bool(auth.api_keys or auth.keys)
        self.admin = bool(auth.admin_keys or any(k.admin for k in auth.keys))

    def _add(self, key: bytes, ident: Identity, where: str) -> None:
        self._add_digest(digest(self.secret, key), ident, where)

    def _add_digest(self, d: bytes, ident: Identity, where: str) -> None:
        if d in self.by_digest:
            raise ValueError(f"auth: {where} is the same key as {self.by_digest[d].name}; each key must be unique")
        self.by_digest[d] = ident

    @property
    def configured(self) -> bool:
        return bool(self.by_digest)

    def identify(self, header: bytes | None) -> Identity | None:
        if header is None:
            return None
        ident = self._seen.get(header)
        if ident is not None:
            return ident
        tok = token(header)
        if not tok:
            return None
        ident = self.by_digest.get(digest(self.secret, tok))
        if ident is not None:  # only verified headers are remembered: a guess never grows the map
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()
            self._seen[header] = ident
        return ident

    def role(self, header: bytes | None) -> Role:
        ident = self.identify(header)
        return Role.NONE if ident is None else Role.ADMIN if ident.admin else Role.CLIENT

    def may_infer(self, header: bytes | None) -> bool:
        """Inference and /v1/models: open when no client key is configured, else any valid key."""
        return not self.client or self.identify(header) is not None
