"""The gateway's configuration: one YAML file validated by these models, plus GATEWAY_* overrides.

Environment variables override the file, nested with `__`: `GATEWAY_SERVER__PORT=9000`,
`GATEWAY_AUTH__API_KEYS='["k1"]'`. Every key is documented in README.md ("Configuration").
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from adapters import ADAPTERS
from adapters.fastchat_hosts import parse_host_port
from gateway.settings_base import Strict
# The parts of the schema kept in their own modules, importable from here as before.
from gateway.settings_launch import LaunchSettings, SupervisorSettings, SwapGroupSettings, service_name
from gateway.settings_team import (MIN_KEY_CHARS, PLACEHOLDER_KEYS, AuthSettings, CorsSettings, KeySettings, Limits,
                                   StateSettings, TeamSettings)

__all__ = ["MIN_KEY_CHARS", "PLACEHOLDER_KEYS", "AuthSettings", "CorsSettings", "KeySettings", "LaunchSettings",
           "Limits", "StateSettings", "Strict", "SupervisorSettings", "SwapGroupSettings", "TeamSettings",
           "service_name"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")




class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=1, le=65535)
    # Parsing costs far more than the bytes: 8 MiB of `[],[],...` raised the gateway's peak memory
    # by ~250 MiB and held the event loop ~1 s (16 MiB: ~500 MiB). 8 MiB still fits a
    # million-token conversation or several base64 images.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Bodies over 1 MiB take one of these slots while they are read and parsed (0 = no cap), so
    # slow uploads cannot pile up max_body_bytes each; one that waits longer than
    # large_body_wait seconds for a slot gets 503.
    max_large_bodies: int = Field(4, ge=0)
    large_body_wait: float = Field(10.0, gt=0)
    # Client-side limits uvicorn lacks (gateway/server_protocol.py): a request head larger than this
    # is a 431; a head not complete in header_timeout seconds a 408; a body silent for body_timeout
    # seconds closes the connection.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    log_level: str = "info"
    # On SIGTERM: stop accepting, let in-flight requests (streams too) finish for up to this long.
    drain_timeout: float = Field(30.0, ge=0)


class UpstreamSettings(Strict):
    connect_timeout: float = Field(5.0, gt=0)
    # Until an answer's first byte: generous, long prompts prefill and cold models load for minutes.
    first_byte_timeout: float = Field(600.0, gt=0)
    # Longest silence between two chunks once an answer has started.
    read_timeout: float = Field(120.0, gt=0)
    total_timeout: float | None = Field(None, gt=0)
    max_connections: int = Field(1000, ge=1)
    # A request that finds every connection busy waits this long for one, then gets a 503.
    pool_timeout: float = Field(10.0, gt=0)
    # Largest non-stream answer (or error body) the gateway buffers from a backend; more is a 502.
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # An answer's status line + headers; more is a 502 (a broken or hostile server).
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    # One stream event (SSE, or a native NDJSON / NUL-delimited record); more is a 502 or an error event.
    max_event_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    # Attempts per request on other deployments when one fails before any byte reached the client.
    max_attempts: int = Field(2, ge=1, le=10)
    # No new attempt starts once this many seconds have passed since the request arrived.
    retry_deadline: float = Field(30.0, gt=0)
    # Streams: an SSE comment this often while waiting for the first token, so proxies and
    # clients do not drop a connection that is merely waiting on a long prefill. 0 = off.
    stream_keepalive: float = Field(15.0, ge=0)


class HealthSettings(Strict):
    interval: float = Field(10.0, gt=0)  # between probes of a ready backend
    not_ready_interval: float = Field(2.0, gt=0)  # while starting/loading, and the first probes when down
    down_max_interval: float = Field(30.0, gt=0)  # a backend that stays down is probed ever less often, up to this
    timeout: float = Field(5.0, gt=0)
    # Connections for probes and discovery, a pool apart from requests' so busy streams cannot starve them.
    max_connections: int = Field(64, ge=1)


class RoutingSettings(Strict):
    # Same session (X-Session-Id header) -> same deployment while it serves, so its prefix/KV cache
    # stays warm (rendezvous hashing: a lost replica moves only its own sessions).
    affinity: bool = True
    # Also treat the request's `user` field as the session (off: an app that sends one constant
    # `user` would otherwise pin all its traffic to one replica).
    affinity_from_user: bool = False
    # Consecutive failures that are the backend's (502/504 answers; 500s and timeouts of distinct
    # requests, so one client's poison request cannot count twice) that take it out of service
    # until a probe succeeds.
    eject_after_errors: int = Field(3, ge=1)


class AutodiscoverSettings(Strict):
    # None: probe only when no backend is configured (the zero-config start).
    enabled: bool | None = None
    host: str = "127.0.0.1"
    # vLLM/RWKV-Runner/FastChat API 8000, llama.cpp/TGI 8080, TGI 3000, Ollama 11434,
    # FastChat controller 21001.
    ports: list[int] = [8000, 8080, 3000, 11434, 21001]


class CapabilityOverrides(Strict):
    """Per-backend corrections of its kind's declared capabilities (None = kind's default)."""

    chat: bool | None = None
    completions: bool | None = None
    embeddings: bool | None = None
    tools: bool | None = None
    logprobs: bool | None = None
    n: bool | None = None
    structured_output: bool | None = None
    json_mode: bool | None = None  # response_format json_object without a schema
    responses: bool | None = None  # false: a server build without POST /v1/responses (cannot turn it on)
    messages: bool | None = None  # false: a server build without POST /v1/messages (cannot turn it on)


class RWKVLoad(Strict):
    """RWKV-Runner /switch-model request: model path (on the backend's machine) and strategy."""

    model: str
    strategy: str = "cuda fp16"
    tokenizer: str | None = None
    customCuda: bool = False  # noqa: N815 (RWKV-Runner's own field name)
    deploy: bool = False


class BackendSettings(Strict):
    name: str
    kind: str
    url: str
    api_key: SecretStr | None = None
    # Or the name of the environment variable holding it (a Kubernetes Secret, a compose env file): read at start.
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    discover: bool = True  # serve the models the backend reports, even if not in `models:`
    weight: float = Field(1.0, gt=0)
    stream_usage: bool | None = None  # override: does it honour stream_options.include_usage?
    # vLLM names reasoning text `reasoning` (>= late 2025) or `reasoning_content` (older), the Ollama
    # adapter `reasoning_content`: rename it to the one your clients read (vllm, ollama, llamacpp).
    reasoning_field: Literal["reasoning", "reasoning_content"] | None = None
    capabilities: CapabilityOverrides = CapabilityOverrides()
    # At most this many requests at once to this backend (default: the kind's, e.g. RWKV-Runner 1;
    # none = unlimited); more wait in a queue of max_queue for queue_timeout seconds, then 429.
    max_concurrency: int | None = Field(None, ge=1)
    max_queue: int = Field(100, ge=0)
    queue_timeout: float = Field(60.0, gt=0)
    # RWKV-Runner: the model the gateway loads with /switch-model when the backend has none.
    load: RWKVLoad | None = None
    # Ollama: how long a model stays resident after a request ("30m", "-1" = forever, 0 = unload)
    # and the context window to load it with (its default is small).
    keep_alive: str | int | None = None
    num_ctx: int | None = Field(None, ge=1)
    # Ollama: may clients set keep_alive and load-time options (num_ctx, num_gpu...)? Only where
    # the two above are unset: the operator's values always win.
    client_overrides: bool = False
    # FastChat: hosts (`host` or `host:port`) the controller may name as workers; None = its own host.
    worker_hosts: list[str] | None = None
    # OpenAI-family kinds: "data_only" refuses media links (image_url etc.) the backend would fetch.
    media_urls: Literal["allow", "data_only"] = "allow"
    # How it is launched (recipe parameters); None: started by someone else.
    launch: LaunchSettings | None = None

    @model_validator(mode="after")
    def _key_from_env(self) -> BackendSettings:
        if self.api_key_env is None:
            return self
        if self.api_key is not None:
            raise ValueError("set api_key or api_key_env, not both")
        value = os.environ.get(self.api_key_env)
        if not value:  # the message names the variable, never a value
            raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is not set or empty")
        self.api_key = type(self)._api_key(SecretStr(value))
        return self

    @model_validator(mode="after")
    def _launch(self) -> BackendSettings:
        if self.launch is None:
            return self
        from gateway.recipes.catalog import RecipeError, kinds
        from gateway.recipes.plan import build

        if self.kind not in kinds():
            raise ValueError(f"launch: kind {self.kind!r} has no launch recipe (recipes: {', '.join(kinds())})")
        if urlsplit(self.url).port is None:
            raise ValueError(f"url: {self.url!r} has no port; a launched backend listens on the url's port")
        try:  # the recipe's own checks: parameters the kind lacks, values it does not take
            build(self.kind, self.launch.params(self.name, self.url, "host"), "host")
        except RecipeError as exc:
            raise ValueError(f"launch: {exc}") from None
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid name (letters, digits and . _ : / @ + -)")
        return v

    @field_validator("worker_hosts")
    @classmethod
    def _worker_hosts(cls, v: list[str] | None) -> list[str] | None:
        for entry in v or []:
            parse_host_port(entry)  # ValueError names the bad entry
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ADAPTERS:
            raise ValueError(f"unknown backend kind {v!r}; expected one of: {', '.join(ADAPTERS)}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if "@" in urlsplit(v).netloc:
            # they would be shown in /admin/backends and never sent; the message must not echo them
            raise ValueError("credentials in a backend URL are not supported: remove `user:password@` and "
                             "set api_key (sent as 'Authorization: Bearer <key>')")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL like http://127.0.0.1:8000")
        return v.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and any(ord(c) < 32 or ord(c) == 127 for c in v.get_secret_value()):
            raise ValueError("api_key may not contain control characters (CR/LF would inject upstream headers)")
        return v


class DeploymentRef(Strict):
    backend: str
    model: str | None = None  # upstream model name; default: discovered (see README)
    weight: float | None = Field(None, gt=0)


class ModelSettings(Strict):
    name: str
    aliases: list[str] = []
    backends: list[DeploymentRef] = Field(min_length=1)
    # Public models tried, in order, when none of this model's deployments can serve a request.
    fallbacks: list[str] = []

    @field_validator("backends", mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        # `backends: [gpu1-vllm]` is shorthand for `[{backend: gpu1-vllm}]`.
        if isinstance(v, list):
            return [{"backend": x} if isinstance(x, str) else x for x in v]
        return v


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    health: HealthSettings = HealthSettings()
    routing: RoutingSettings = RoutingSettings()
    autodiscover: AutodiscoverSettings = AutodiscoverSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    cors: CorsSettings = CorsSettings()
    state: StateSettings = StateSettings()
    backends: list[BackendSettings] = []
    models: list[ModelSettings] = []

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; environment variables take precedence over it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewaySettings:
        names: dict[str, int] = {}
        for i, b in enumerate(self.backends):
            if b.name in names:
                raise ValueError(f"backends[{i}].name: duplicate backend name {b.name!r} "
                                 f"(also backends[{names[b.name]}])")
            names[b.name] = i
        public: dict[str, str] = {}
        for i, m in enumerate(self.models):
            for j, name in enumerate([m.name, *m.aliases]):
                where = f"models[{i}].name" if j == 0 else f"models[{i}].aliases[{j - 1}]"
                if not NAME_RE.match(name):
                    raise ValueError(f"{where}: {name!r} is not a valid model name")
                if name in public:
                    raise ValueError(f"{where}: {name!r} is already used by {public[name]}")
                public[name] = where
            for j, fb in enumerate(m.fallbacks):
                if fb in (m.name, *m.aliases):
                    raise ValueError(f"models[{i}].fallbacks[{j}]: a model cannot fall back to itself")
            for j, ref in enumerate(m.backends):
                if ref.backend not in names:
                    raise ValueError(f"models[{i}].backends[{j}]: unknown backend {ref.backend!r}; "
                                     f"configured backends: {', '.join(names) or '(none)'}")
        used = {b.launch.group for b in self.backends if b.launch and b.launch.group}
        for g, gs in self.supervisor.groups.items():
            if g not in used:
                raise ValueError(f"supervisor.groups.{g}: no backend's launch names this group")
            for i, b in enumerate(self.backends):
                if b.launch and b.launch.group == g and b.launch.gpus and not set(b.launch.gpus) <= set(gs.gpus):
                    raise ValueError(f"backends[{i}].launch.gpus: {b.launch.gpus} are not all GPUs of its "
                                     f"swap group {g!r} ({gs.gpus})")
        return self

    def autodiscover_enabled(self) -> bool:
        enabled = self.autodiscover.enabled
        return not self.backends if enabled is None else enabled
