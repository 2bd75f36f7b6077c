"""Settings of a team endpoint (README "Configuration": `auth`, `cors`, `state`): named keys, their limits,
browser origins, and where limits and usage live. Part of gateway/settings.py's schema."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.settings_base import Strict

# Placeholder secrets copied from examples must not reach production.
PLACEHOLDER_KEYS = frozenset({"changeme", "changethis", "change-me", "secret", "sk-xxx", "your-api-key"})
MIN_KEY_CHARS = 16  # a guessable key is no key
MAX_LIMIT = 2**53


def _real_secret(k: SecretStr) -> None:
    v = k.get_secret_value()  # messages never echo the key: they end up in logs and terminals
    if not v.strip():
        raise ValueError("an API key may not be empty")
    if v.lower() in PLACEHOLDER_KEYS:
        raise ValueError("an API key is a placeholder value; set a real secret")
    if len(v) < MIN_KEY_CHARS:
        raise ValueError(f"a key must be at least {MIN_KEY_CHARS} characters (e.g. `openssl rand -hex 24`)")
    if v != v.strip() or any(ord(c) < 32 or ord(c) == 127 for c in v):
        # HTTP strips spaces around a header value and cannot carry control characters
        raise ValueError("a key may not contain control characters or start or end with spaces")


class Limits(Strict):
    """Per key or per team (README "Team keys"); None: no limit of that kind."""

    # At most 2**53 each (9e15): counts stay exact as floats and fit the in-memory window's int64 charges.
    rpm: int | None = Field(None, ge=1, le=MAX_LIMIT)               # requests per minute (sliding 60 s)
    tpm: int | None = Field(None, ge=1, le=MAX_LIMIT)               # prompt + completion tokens per minute
    concurrency: int | None = Field(None, ge=1, le=MAX_LIMIT)       # requests in flight
    tokens_per_day: int | None = Field(None, ge=1, le=MAX_LIMIT)    # UTC calendar day
    tokens_per_month: int | None = Field(None, ge=1, le=MAX_LIMIT)  # UTC calendar month

    def any(self) -> bool:
        return any(v is not None for v in self.model_dump().values())


HASH_RE = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")


class KeySettings(Strict):
    """One person's or service's key: stored as an HMAC (`llm-gateway keys new` prints it), or plaintext."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")   # in usage, metrics and logs
    hash: str | None = Field(None, pattern=HASH_RE.pattern)
    key: SecretStr | None = None
    team: str | None = None
    models: list[str] = ["*"]          # public model names or patterns (fnmatch: `qwen*`, `*`)
    admin: bool = False                # may use /admin/* too
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _one_secret(self) -> KeySettings:
        if (self.hash is None) == (self.key is None):
            raise ValueError(f"key {self.name!r}: give exactly one of `hash` (from `llm-gateway keys new`) or `key`")
        if self.key is not None:
            _real_secret(self.key)
        return self


class TeamSettings(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    limits: Limits = Limits()


class AuthSettings(Strict):
    # Client keys: inference and /v1/models. Admin keys: /admin/* (and whatever a client key may do).
    api_keys: list[SecretStr] = []
    admin_keys: list[SecretStr] = []
    # Named keys (README "Team keys"): hashed with the secret in this environment variable.
    secret_env: str = Field("GATEWAY_KEY_SECRET", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    keys: list[KeySettings] = []
    teams: list[TeamSettings] = []
    # Limits reserve a request's tokens before it runs: the prompt (body bytes / 4) plus its max_tokens,
    # or this many completion tokens when it sets none.
    estimate_completion_tokens: int = Field(1024, ge=1)

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _real_secrets(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for k in keys:
            _real_secret(k)
        return keys

    @model_validator(mode="after")
    def _named_keys(self) -> AuthSettings:
        names: set[str] = set()
        for i, k in enumerate(self.keys):
            if k.name in names:
                raise ValueError(f"keys[{i}].name: duplicate key name {k.name!r}")
            names.add(k.name)
        if len({t.name for t in self.teams}) != len(self.teams):   # a key's team needs no entry (no limits)
            raise ValueError("teams: duplicate team name")
        return self

    @model_validator(mode="after")
    def _admin_keys_are_not_client_keys(self) -> AuthSettings:
        client = {k.get_secret_value() for k in self.api_keys}
        if any(k.get_secret_value() in client for k in self.admin_keys):
            raise ValueError("admin_keys: a key is also in api_keys; an admin key must not be a client key")
        return self


class CorsSettings(Strict):
    """Browser clients calling /v1/* directly (web chat UIs): the origins allowed; none: no CORS headers."""

    allow_origins: list[str] = []      # exact origins (`https://chat.example.org`), or ["*"]
    max_age: int = Field(600, ge=0)    # seconds a browser may cache a preflight answer

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if o != "*" and not re.match(r"^https?://[^/\s]+$", o):
                raise ValueError(f"{o!r} is not an origin (scheme://host[:port], no path), or '*'")
        return v


class StateSettings(Strict):
    """Where limits and usage live (README "Team keys"): this process and a SQLite file, or Redis."""

    sqlite: str = "./llm-gateway-usage.db"
    redis: str | None = Field(None, pattern=r"^rediss?://")
    redis_failure: Literal["open", "closed"] = "open"   # Redis unreachable: admit (open) or refuse (closed)
    native_limits: bool = True   # one process: limits in C when the extension was built (limits_native.py)
    usage_flush_interval: float = Field(1.0, gt=0, le=3600)  # seconds between usage writes (auth/usage.py)
