"""The adapter seam: what every backend kind implements, and the small types it trades in.

An adapter instance is bound to one backend (kind + URL). It is used concurrently by many
request tasks and by the health task, so it holds no per-request state; everything a request
needs to remember travels in the `UpstreamRequest` it builds.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.errors import GatewayError


class Endpoint(enum.StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"  # OpenAI's Responses API, passed through to servers that implement it
    MESSAGES = "messages"  # Anthropic's Messages API, passed through to servers that implement it
    COUNT_TOKENS = "count_tokens"  # its POST /v1/messages/count_tokens, the same way


class State(enum.StrEnum):
    """A backend's state as its native probe reports it (README: "Backend states")."""

    STARTING = "starting"  # not answering yet (connection refused before it was ever ready)
    LOADING = "loading"  # answering, model not ready
    READY = "ready"
    SWAPPED_OUT = "swapped_out"  # known model not resident: serves, slowly at first
    DOWN = "down"  # was reachable, now is not, or answers errors
    DRAINING = "draining"
    # Backends the gateway runs itself (gateway/supervisor): their process is not running.
    STOPPED = "stopped"  # not running; started by its next request (or by an operator)
    STOPPING = "stopping"  # finishing its in-flight requests, then SIGTERM
    CRASHED = "crashed"  # its process died; restarted (with backoff) by its next request


SERVING_STATES = frozenset({State.READY, State.SWAPPED_OUT})


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend kind can serve; checked before any upstream call."""

    chat: bool = True
    completions: bool = True
    embeddings: bool = True
    tools: bool = True
    logprobs: bool = True
    n: bool = True  # n > 1
    structured_output: bool = True  # response_format json_object / json_schema
    json_mode: bool = True  # json_object without a schema: any JSON object (TGI's grammars need a schema)
    stream_usage: bool = True  # honours stream_options.include_usage
    # POST /v1/responses forwarded as sent: off unless the kind's server implements it (and its adapter forwards it)
    responses: bool = False
    # POST /v1/messages (Anthropic's Messages API) forwarded as sent: the same rule
    messages: bool = False
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class BackendTarget:
    """The parts of a backend's config an adapter needs (adapters do not import settings)."""

    name: str
    url: str  # base URL without trailing slash
    api_key: str | None = None
    stream_usage: bool | None = None  # config override of Capabilities.stream_usage
    reasoning_field: str | None = None  # rename reasoning text to this field (vLLM)
    keep_alive: str | int | None = None  # how long Ollama keeps a model resident after a request
    num_ctx: int | None = None  # Ollama context window per request
    load: dict[str, Any] | None = None  # RWKV-Runner /switch-model body
    worker_hosts: tuple[str, ...] | None = None  # FastChat: hosts a controller may name (None: its own)
    client_overrides: bool = False  # Ollama: clients may set keep_alive and load-time options
    media_urls: str = "allow"  # OpenAI family: "data_only" refuses media links (backend-side SSRF)


@dataclass(frozen=True, slots=True)
class ServedModel:
    id: str
    context_length: int | None = None
    # Residency where the backend reports it per model (llama.cpp router, Ollama): "loaded",
    # "loading", "unloaded", "sleeping", "failed"; None = not reported (always resident).
    residency: str | None = None

    @property
    def cold(self) -> bool:
        """Servable, but the first request waits for a load."""
        return self.residency in ("unloaded", "sleeping", "loading")


@dataclass(slots=True)
class EngineStats:
    """The engine's own figures, read while probing and re-exported as llm_gateway_engine_* (README:
    "Engine metrics"). None = the engine does not report it (no series), never a guessed 0."""

    running: float | None = None  # requests being generated now
    waiting: float | None = None  # requests queued inside the engine
    kv_usage: float | None = None  # KV cache (or slot) usage, 0..1
    models_loaded: int | None = None  # models resident in the engine
    # bytes per resident model, keyed by a name the probe lists among the backend's models only
    model_memory: dict[str, int] | None = None


@dataclass(slots=True)
class Probe:
    state: State
    models: list[ServedModel] = field(default_factory=list)
    detail: str = ""
    load: float | None = None  # outstanding work the backend reports (queue + running), if it does
    version: str | None = None
    engine: EngineStats | None = None  # the engine's own load figures, where it reports them


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    # The gateway asked for stream usage the client did not ask for: strip that chunk.
    strip_usage: bool = False
    # True: the upstream answers in OpenAI's dialect and the relay passes its bytes through;
    # False: a native protocol, turned into OpenAI's by translate_stream / translate_body.
    passthrough: bool = True
    upstream_model: str = ""


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: int
    body: bytes
    headers: dict[str, str]


def openai_usage(doc: dict[str, Any]) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI-shaped answer or chunk, if it has usage."""
    usage = doc.get("usage")
    if type(usage) is dict:
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return (p if type(p) is int else 0, c if type(c) is int else 0)
    return None


def responses_usage(doc: dict[str, Any]) -> tuple[int, int] | None:
    """(input_tokens, output_tokens) of a Responses API answer, or of its stream's terminal event
    (`response.completed` and the like carry the whole response, usage included)."""
    resp = doc.get("response") if "response" in doc else doc
    usage = resp.get("usage") if type(resp) is dict else None
    if type(usage) is dict:
        p, c = usage.get("input_tokens"), usage.get("output_tokens")
        return (p if type(p) is int else 0, c if type(c) is int else 0)
    return None


def anthropic_usage(doc: dict[str, Any]) -> tuple[int, int] | None:
    """(input, output tokens) of an Anthropic Messages answer or stream event (`message_start` carries the
    message, `message_delta` its own usage). Anthropic's `input_tokens` leaves out the prompt tokens read
    from or written to its cache: they are added back, so the prompt counts whole (as the chat path's)."""
    usage = doc.get("usage")
    if usage is None and type(doc.get("message")) is dict:
        usage = doc["message"].get("usage")
    if type(usage) is not dict:
        return None
    p = sum(n for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
            if type(n := usage.get(k)) is int)
    c = usage.get("output_tokens")
    return (p, c if type(c) is int else 0)


def single_prompt(body: dict[str, Any]) -> str | None:
    """The completion request's prompt as one string (a one-element list counts), or None: the
    native completion APIs (FastChat, Ollama, TGI /generate) take exactly one prompt."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


def client_asked_usage(body: dict[str, Any]) -> bool:
    """Did the client ask for the usage chunk (`stream_options.include_usage`)?"""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


# How adapters make probe calls: the gateway's shared client provides it (adapters stay free of
# any HTTP library). Raises ConnectionError/TimeoutError subclasses on transport failures.
Fetch = Callable[..., Awaitable[FetchResult]]


class Adapter:
    """Base of every adapter. Subclasses set the class attributes and override what differs."""

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    default_ports: ClassVar[tuple[int, ...]] = ()
    # Byte markers that make the relay's tap parse an event for usage (see extract_usage).
    usage_markers: ClassVar[tuple[bytes, ...]] = (b'"usage"',)
    # Read the first stream event before answering the client: a backend that reports some
    # failures in-band after HTTP 200 (TGI's overload) can then still be retried elsewhere.
    peek_first_event: ClassVar[bool] = False
    # True: requests are built by the async prepare() (it may call the backend first, e.g.
    # FastChat's /count_token); False: by build_request() alone, with no I/O.
    needs_prepare: ClassVar[bool] = False

    def __init__(self, target: BackendTarget) -> None:
        self.target = target

    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        raise NotImplementedError

    async def prepare(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str, stream: bool,
                      fetch: Fetch) -> UpstreamRequest:
        return self.build_request(endpoint, body, upstream_model, stream)

    def translate_body(self, endpoint: Endpoint, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                       request: UpstreamRequest | None = None) -> bytes:
        """Non-stream 2xx answer -> OpenAI JSON bytes. Identity for pass-through backends."""
        return body

    def translate_stream(self, endpoint: Endpoint, chunks: AsyncIterator[bytes],
                         request: UpstreamRequest) -> AsyncIterator[bytes]:
        """Upstream stream bytes -> OpenAI SSE events. Only called when `request.passthrough` is False."""
        raise NotImplementedError

    def stream_rewriter(self, request: UpstreamRequest) -> Callable[[bytes], bytes] | None:
        """Pass-through fix-ups for one stream: a function from a block of complete SSE events to
        the same events in OpenAI's dialect (cheap byte-level repairs), or None (pure pass-through)."""
        return None

    def extract_usage(self, doc: dict[str, Any]) -> tuple[int, int] | None:
        """(prompt_tokens, completion_tokens) from one parsed answer or stream event, if it reports usage."""
        return openai_usage(doc)

    def connect_failed(self, request: UpstreamRequest) -> bool:
        """The backend refused a connection for `request`. True when the adapter can send a retry
        elsewhere within the same backend (e.g. another FastChat worker); False: the backend is
        taken out (passive health)."""
        return False

    def first_event_error(self, event: bytes) -> GatewayError | None:
        """With peek_first_event: the error a first event reports in-band, if it is one."""
        return None

    def map_error(self, status: int, body: bytes) -> GatewayError:
        raise NotImplementedError

    async def probe(self, fetch: Fetch) -> Probe:
        raise NotImplementedError
