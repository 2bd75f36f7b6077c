"""The gateway's configuration: one YAML file validated by these models, plus GATEWAY_* overrides.

Environment variables override the file, nested with `__`: `GATEWAY_SERVER__PORT=9000`,
`GATEWAY_AUTH__API_KEYS='["k1"]'`. Every key is documented in README.md ("Configuration").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from adapters import ADAPTERS
from adapters.fastchat import parse_host_port

if TYPE_CHECKING:
    from gateway.recipes.plan import LaunchParams

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
# Placeholder secrets copied from examples must not reach production.
PLACEHOLDER_KEYS = frozenset({"changeme", "changethis", "change-me", "secret", "sk-xxx", "your-api-key"})
MIN_KEY_CHARS = 16  # a guessable key is no key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    rpm: int | None = Field(None, ge=1)               # requests per minute (sliding 60 s)
    tpm: int | None = Field(None, ge=1)               # prompt + completion tokens per minute (sliding 60 s)
    concurrency: int | None = Field(None, ge=1)       # requests in flight
    tokens_per_day: int | None = Field(None, ge=1)    # UTC calendar day
    tokens_per_month: int | None = Field(None, ge=1)  # UTC calendar month

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


class SwapGroupSettings(Strict):
    """VRAM-aware placement for a swap group: its GPUs, checked before a member starts (gateway/supervisor)."""

    gpus: list[int] = Field(min_length=1)
    gpu_memory: str | None = None     # each GPU's size (24GiB) when NVML cannot tell what is free


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


class SupervisorSettings(Strict):
    """Running the backends that have a `launch:` block as child processes (gateway/supervisor)."""

    enabled: bool = True              # false: launch blocks only describe (compose runs them as containers)
    log_lines: int = Field(2000, ge=10)         # each child's output kept (ring buffer), for /admin/.../logs
    stop_grace: float = Field(10.0, gt=0)       # SIGTERM, then SIGKILL after this many seconds
    stall_timeout: float = Field(120.0, gt=0)   # start-up fails when nothing progressed for this long
    min_turn: float = Field(30.0, ge=0)         # swap groups: a started member keeps the GPUs at least this long
    idle_grace: float = Field(2.0, ge=0)        # ... unless it has had no request for this long
    max_waiting: int = Field(100, ge=1)         # requests waiting for one backend to start; beyond it, 429
    restart_backoff: float = Field(1.0, gt=0)   # first delay before restarting a crashed child; doubles
    restart_backoff_max: float = Field(60.0, gt=0)
    groups: dict[str, SwapGroupSettings] = {}  # optional: a swap group's GPUs, for placement checks


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


class RWKVLoad(Strict):
    """RWKV-Runner /switch-model request: model path (on the backend's machine) and strategy."""

    model: str
    strategy: str = "cuda fp16"
    tokenizer: str | None = None
    customCuda: bool = False  # noqa: N815 (RWKV-Runner's own field name)
    deploy: bool = False


class LaunchSettings(Strict):
    """How this backend is launched (README "Configuration", `launch`): its recipe's parameters
    (gateway/recipes, deploy/recipes/<kind>.yaml). The backend's `url` gives the host and port it listens
    on. `llm-gateway compose` renders it as compose services; the process supervisor (a later issue) will
    run the same block on this host."""

    model: str = Field(min_length=1)                 # path or hub id, as the kind takes it
    binary: str | None = None                        # executable on a host (default: the kind's usual name)
    context: int | None = Field(None, ge=2)
    gpus: list[int] | None = None                    # None: the recipe's default ([0]); []: CPU only
    slots: int | None = Field(None, ge=1)
    served_name: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    gpu_layers: int | None = Field(None, ge=0)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the variable, never the key
    args: list[str] = []                             # passed through after the rendered flags
    profiles: list[str] = []                         # compose profiles of its services ([]: always started)
    # For the process supervisor (gateway/supervisor, README "Running backends"), when `supervisor.enabled`.
    start: Literal["at_boot", "on_demand"] = "at_boot"
    idle_timeout: float | None = Field(None, gt=0)   # seconds without a request before it is stopped; None: never
    group: str | None = Field(None, min_length=1)    # swap group: members share GPUs, one runs at a time

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(g < 0 for g in v) or len(set(v)) != len(v)):
            raise ValueError("GPU indices must be distinct and not negative")
        return v

    def params(self, backend: str, url: str, target: Literal["host", "container"]) -> LaunchParams:
        """The recipe's LaunchParams (gateway.recipes.plan) for `backend` listening at `url`."""
        from gateway.recipes.plan import LaunchParams

        parts = urlsplit(url)
        keys = ("model", "binary", "context", "gpus", "slots", "served_name", "dtype", "quantization",
                "gpu_memory_utilization", "gpu_layers", "api_key_env", "args")
        return LaunchParams(host=parts.hostname if target == "host" else None, port=parts.port,
                            name=service_name(backend), **{k: getattr(self, k) for k in keys})


def service_name(backend: str) -> str:
    """A backend's compose service name: its name with what compose refuses ([^A-Za-z0-9._-]) as '-'."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", backend)


class BackendSettings(Strict):
    name: str
    kind: str
    url: str
    api_key: SecretStr | None = None
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
