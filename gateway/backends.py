"""Runtime view of each configured backend: its adapter, state, served models and load.

Mutated only from the event loop (health task and request tasks), so no locks are needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.base import SERVING_STATES, Adapter, Endpoint, ServedModel, State


# Request needs, as bits, so a capability check per deployment is one AND.
(NEED_CHAT, NEED_COMPLETIONS, NEED_EMBEDDINGS, NEED_TOOLS, NEED_LOGPROBS, NEED_N, NEED_STRUCTURED, NEED_RESPONSES,
 NEED_JSON_MODE, NEED_MESSAGES) = (1 << i for i in range(10))
ENDPOINT_NEED = {Endpoint.CHAT: NEED_CHAT, Endpoint.COMPLETIONS: NEED_COMPLETIONS,
                 Endpoint.EMBEDDINGS: NEED_EMBEDDINGS, Endpoint.RESPONSES: NEED_RESPONSES,
                 Endpoint.MESSAGES: NEED_MESSAGES, Endpoint.COUNT_TOKENS: NEED_MESSAGES}
NEED_NAMES = {NEED_CHAT: "chat completions", NEED_COMPLETIONS: "text completions",
              NEED_EMBEDDINGS: "embeddings", NEED_TOOLS: "tools", NEED_LOGPROBS: "logprobs",
              NEED_N: "n > 1", NEED_STRUCTURED: "response_format (structured output)",
              NEED_RESPONSES: "the Responses API (POST /v1/responses)",
              NEED_MESSAGES: "Anthropic's Messages API (POST /v1/messages)",
              NEED_JSON_MODE: "JSON mode without a schema (response_format json_object; a json_schema "
                              "response_format with an object schema works)"}
NEED_PARAM = {NEED_TOOLS: "tools", NEED_LOGPROBS: "logprobs", NEED_N: "n", NEED_STRUCTURED: "response_format",
              NEED_JSON_MODE: "response_format"}


@dataclass(eq=False, slots=True)
class BackendRuntime:
    name: str
    kind: str
    url: str
    adapter: Adapter
    weight: float = 1.0
    discover: bool = True
    state: State = State.STARTING
    since: float = field(default_factory=time.time)
    detail: str = "not probed yet"
    served: tuple[ServedModel, ...] = ()
    version: str | None = None
    reported_load: float | None = None
    in_flight: int = 0
    ever_ready: bool = False
    capmask: int = 0
    overrides: dict[str, bool] = field(default_factory=dict)
    limiter: Any = None  # gateway.limiter.Limiter when the backend has a concurrency limit
    errors_in_row: int = 0  # consecutive 5xx answers (passive health)
    # Multi-model backends (Ollama, a llama.cpp router): one model failing must not take the others out.
    # upstream model -> why it is out of service until the backend's next successful probe.
    ejected: dict[str, str] = field(default_factory=dict)
    model_errors: dict[str, int] = field(default_factory=dict)  # consecutive failures per upstream model
    managed: Any = None  # gateway.supervisor.managed.Managed when the gateway runs this backend itself

    def usable(self, upstream_model: str) -> bool:
        """Serving, and this model not ejected on its own."""
        return self.state in SERVING_STATES and not (self.ejected and upstream_model in self.ejected)

    def __post_init__(self) -> None:
        c = replace(self.adapter.capabilities, **self.overrides)
        self.capmask = (
            (NEED_CHAT if c.chat else 0) | (NEED_COMPLETIONS if c.completions else 0)
            | (NEED_EMBEDDINGS if c.embeddings else 0) | (NEED_TOOLS if c.tools else 0)
            | (NEED_LOGPROBS if c.logprobs else 0) | (NEED_N if c.n else 0)
            | (NEED_STRUCTURED if c.structured_output else 0)
            | (NEED_JSON_MODE if c.structured_output and c.json_mode else 0)
            # An override can only turn it off: a kind whose adapter does not forward it cannot serve it.
            | (NEED_RESPONSES if c.responses and self.adapter.capabilities.responses else 0)
            | (NEED_MESSAGES if c.messages and self.adapter.capabilities.messages else 0)
        )

    @property
    def serving(self) -> bool:
        return self.state in SERVING_STATES

    def set_state(self, state: State, detail: str = "") -> bool:
        """Record a probe's verdict; True when the state changed."""
        self.detail = detail
        if state is State.READY:
            self.ever_ready = True
        if state is self.state:
            return False
        self.state = state
        self.since = time.time()
        return True

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name, "kind": self.kind, "url": self.url, "state": self.state.value,
            "since": self.since, "detail": self.detail, "version": self.version,
            "models": [m.id for m in self.served], "in_flight": self.in_flight,
            "residency": {m.id: m.residency for m in self.served if m.residency is not None},
            "reported_load": self.reported_load, "weight": self.weight, "ejected_models": dict(self.ejected),
            "limit": None if self.limiter is None else {"max_concurrency": self.limiter.limit,
                                                        "in_use": self.limiter.in_use,
                                                        "queued": self.limiter.queued},
            "supervisor": None if self.managed is None else self.managed.describe(),
        }
