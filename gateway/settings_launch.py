"""Settings of launched backends (README "Configuration": `backends[].launch`, `supervisor`): the recipe's
parameters and how the gateway's supervisor runs them. Part of gateway/settings.py's schema."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway.settings_base import Strict

if TYPE_CHECKING:
    from gateway.recipes.plan import LaunchParams


class SwapGroupSettings(Strict):
    """VRAM-aware placement for a swap group: its GPUs, checked before a member starts (gateway/supervisor)."""

    gpus: list[int] = Field(min_length=1)
    gpu_memory: str | None = None     # each GPU's size (24GiB) when NVML cannot tell what is free


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


class LaunchSettings(Strict):
    """How this backend is launched (README "Configuration", `launch`): its recipe's parameters
    (gateway/recipes, deploy/recipes/<kind>.yaml). The backend's `url` gives the host and port it listens
    on. `llm-gateway compose` renders it as compose services; the supervisor (gateway/supervisor) runs the
    same block on this host."""

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
