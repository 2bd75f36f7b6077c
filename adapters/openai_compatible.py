"""The shared base of every backend that speaks OpenAI's HTTP dialect.

Requests are forwarded as the client sent them, with two patches: `model` becomes the
deployment's upstream name, and for streams the gateway asks for `stream_options.include_usage`
(so it can count tokens) when the backend honours it; the relay strips that chunk again if the
client did not ask for it. Every other field, known to us or not, reaches the backend untouched.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from adapters.base import (
    Adapter,
    client_asked_usage,
    BackendTarget,
    Capabilities,
    Endpoint,
    Fetch,
    Probe,
    ServedModel,
    State,
    UpstreamRequest,
)
from adapters.media_policy import refuse_media_links
from gateway.errors import CapabilityMissing, GatewayError, InvalidRequest, status_error
from gateway.jsonio import dumps

# The error types OpenAI documents; anything else an upstream invents is replaced by the
# status-derived type so clients that switch on `type` keep working.
OPENAI_ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "server_error", "api_error", "insufficient_quota",
})


class OpenAICompatibleAdapter(Adapter):
    kind: ClassVar[str] = "openai"
    capabilities: ClassVar[Capabilities] = Capabilities(responses=True)  # OpenAI's own API has it
    paths: ClassVar[dict[Endpoint, str]] = {
        Endpoint.CHAT: "/v1/chat/completions",
        Endpoint.COMPLETIONS: "/v1/completions",
        Endpoint.EMBEDDINGS: "/v1/embeddings",
        Endpoint.RESPONSES: "/v1/responses",
        Endpoint.MESSAGES: "/v1/messages",
        Endpoint.COUNT_TOKENS: "/v1/messages/count_tokens",
    }
    models_path: ClassVar[str] = "/v1/models"

    def __init__(self, target: BackendTarget) -> None:
        super().__init__(target)
        self.urls = {ep: target.url + path for ep, path in self.paths.items()}
        self.headers = {"Content-Type": "application/json"}
        if target.api_key:
            self.headers["Authorization"] = f"Bearer {target.api_key}"
        self.stream_usage = (self.capabilities.stream_usage if target.stream_usage is None
                             else target.stream_usage)

    # -- requests ---------------------------------------------------------------------------
    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        # `body` is this request's own parsed dict: patching it in place is safe and cheap.
        body["model"] = upstream_model
        if endpoint is Endpoint.RESPONSES or endpoint is Endpoint.MESSAGES or endpoint is Endpoint.COUNT_TOKENS:
            return self.native_request(endpoint, body, stream)
        strip = False
        if stream and self.stream_usage:
            if not client_asked_usage(body):
                opts = body.get("stream_options")
                body["stream_options"] = {**opts, "include_usage": True} if isinstance(opts, dict) \
                    else {"include_usage": True}
                strip = True
        if self.target.media_urls == "data_only":  # backends fetch media links themselves (SSRF)
            refuse_media_links(body)
        return UpstreamRequest("POST", self.urls[endpoint], self.headers, dumps(body), stream, strip)

    def native_request(self, endpoint: Endpoint, body: dict[str, Any], stream: bool) -> UpstreamRequest:
        """POST /v1/responses or /v1/messages as the client sent it, but for `model`. No stream_options
        patch: both protocols report usage in their stream's own events anyway."""
        if not (self.capabilities.responses if endpoint is Endpoint.RESPONSES else self.capabilities.messages):
            what = "the Responses API (POST /v1/responses)" if endpoint is Endpoint.RESPONSES \
                else "Anthropic's Messages API (POST /v1/messages)"
            raise CapabilityMissing(f"backend {self.target.name} ({self.kind}) does not serve {what}",
                                    param="input" if endpoint is Endpoint.RESPONSES else "messages")
        if self.target.media_urls == "data_only":
            if endpoint is not Endpoint.RESPONSES:
                refuse_media_links(body, nested=True)  # image blocks' `source`, also inside tool results
            elif isinstance(body.get("input"), list):
                try:  # input items hold content parts as chat messages do
                    refuse_media_links({"messages": body["input"]})
                except InvalidRequest as err:
                    err.param = err.param and "input" + err.param.removeprefix("messages")
                    err.message = err.message.replace("messages[", "input[")
                    raise
        return UpstreamRequest("POST", self.urls[endpoint], self.headers, dumps(body), stream, False)

    # -- errors -----------------------------------------------------------------------------
    def map_error(self, status: int, body: bytes) -> GatewayError:
        message, etype, code, param = parse_error_body(body)
        if not message:
            message = f"backend {self.target.name} answered HTTP {status}"
        return status_error(status, message, code=code, param=param,
                            type=etype if etype in OPENAI_ERROR_TYPES else None)

    # -- health and discovery ---------------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        res = await fetch("GET", self.target.url + self.models_path, headers=self.probe_headers())
        if res.status == 200:
            return Probe(State.READY, self.parse_models(res.body))
        if res.status == 503:
            return Probe(State.LOADING, detail=parse_error_body(res.body)[0] or "HTTP 503")
        return Probe(State.DOWN, detail=f"{self.models_path} answered HTTP {res.status}")

    def probe_headers(self) -> dict[str, str]:
        return {"Authorization": self.headers["Authorization"]} if "Authorization" in self.headers else {}

    def parse_models(self, body: bytes) -> list[ServedModel]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return []
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):  # Ollama answers "data": null with no models installed
            return []
        out = []
        for card in data:
            if isinstance(card, dict) and isinstance(card.get("id"), str):
                out.append(ServedModel(card["id"], self.context_length(card)))
        return out

    def context_length(self, card: dict[str, Any]) -> int | None:
        """The model's context window, where the backend's model card carries it."""
        return None


def parse_error_body(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from any error body shape the six backends use.

    Shapes: OpenAI `{"error": {message, type, code, param}}` (vLLM >= 0.10.1, llama.cpp, Ollama
    /v1); flat `{"object": "error", message, type, code}` (vLLM < 0.10.1, FastChat); TGI
    `{"error": "...", "error_type": "..."}`; FastAPI `{"detail": ...}` (RWKV-Runner); plain text.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:1000], None, None, None
    if not isinstance(doc, dict):
        return str(doc)[:1000], None, None, None
    err = doc.get("error")
    if isinstance(err, dict):
        src = err
    elif isinstance(err, str):
        return err, _str(doc.get("error_type")), None, None
    elif "detail" in doc:
        detail = doc["detail"]
        if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
            src = detail["error"]  # RWKV-Runner's 404 model card wraps an OpenAI error in detail
        else:
            return (detail if isinstance(detail, str) else orjson.dumps(detail).decode()), None, None, None
    else:
        src = doc
    return _str(src.get("message")) or "", _str(src.get("type")), _str(src.get("code")), _str(src.get("param"))


def _str(v: object) -> str | None:
    # OpenAI's `code` is a string; several backends put the HTTP status (an int) there: drop it.
    return v if isinstance(v, str) and v else None
