"""Hugging Face TGI (backends.md part A §3; router/src in huggingface/text-generation-inference).

Only its quirks on top of the OpenAI-compatible base:
- health: nothing listens while shards load (connection refused = starting); `/health` 200 empty,
  503 `{"error":"unhealthy"}` after a failed generation's health check;
- discovery and limits from `/info` (`model_id`, `max_total_tokens`, `max_input_tokens`,
  `max_concurrent_requests`); load from `/metrics` (`tgi_queue_size` + `tgi_batch_current_size`);
- the request `model` is a LoRA adapter id unless it is "tgi": the base model is sent as "tgi";
- TGI's typed parser answers 422 to some valid OpenAI bodies: a string `stop` (sent as a list),
  a `logit_bias` object (unused by TGI: dropped), `stream_options: null` and
  `response_format: {"type": "text"}` (dropped: text is the default); OpenAI's `json_schema`
  `response_format` becomes TGI's grammar `{"type": "json", "value": <schema>}`, and JSON mode
  without a schema (which TGI cannot express) is a 400;
- `top_p` must be < 1.0 (1.0 is a 422): dropped, which means the same; `presence_penalty` p is
  turned into `repetition_penalty = p + 2` by TGI (so OpenAI's neutral 0 would become a strong
  2.0): the gateway sends the value that yields repetition_penalty 1 + p/2 (0 -> none);
- answers carry `"id":""` (filled with a fresh id) and finish reasons `eos_token` /
  `stop_sequence` (-> `stop`); a tool call says `stop` or, streamed, nothing (-> `tool_calls`);
- failures after HTTP 200 arrive in-band (`data:{"error":{"message","http_status_code"}}`), always
  with status 422: rewritten to OpenAI's envelope, typed by their message; the first event is
  peeked so an overload reported there is retried elsewhere like a 429;
- `/v1/completions` is served by the native `/generate(_stream)` on servers that lack it
  (adapters/tgi_generate.py), detected from the server's OpenAPI document.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson

from adapters import tgi_generate
from adapters.base import Capabilities, EngineStats, Endpoint, Fetch, Probe, ServedModel, State, UpstreamRequest
from adapters.openai_compatible import OpenAICompatibleAdapter, parse_error_body
from adapters.prometheus_text import gauges
from gateway.jsonio import loads_or_none
from gateway.errors import CapabilityMissing, GatewayError, InvalidRequest, Overloaded, status_error

LOAD_METRICS = ("tgi_queue_size", "tgi_batch_current_size")
FINISH_FIXES = ((b'"finish_reason":"eos_token"', b'"finish_reason":"stop"'),
                (b'"finish_reason":"stop_sequence"', b'"finish_reason":"stop"'),
                # streamed /v1/completions says "" (not null) on every chunk before the last
                (b'"finish_reason":""', b'"finish_reason":null'))
# In-band errors all say http_status_code 422 (infer/mod.rs:445-454 into_openai_event); their
# message, InferError's Display (infer/mod.rs:408-425), tells a client's fault from a server's.
CLIENT_FAULTS = ("Input validation error", "Template error", "Missing template", "Tool error")
FINISH_TOOL = (b'"finish_reason":"stop"', b'"finish_reason":"tool_calls"')


class TGIAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "tgi"
    default_ports: ClassVar[tuple[int, ...]] = (3000, 8080)
    capabilities: ClassVar[Capabilities] = Capabilities(embeddings=False, n=False, json_mode=False)
    peek_first_event: ClassVar[bool] = True

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.model_id: str | None = None
        self.max_concurrent_requests: int | None = None
        self.version: str | None = None
        self.native_completions: bool | None = None  # None: not known yet

    # -- requests ------------------------------------------------------------------------------
    def build_request(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str,
                      stream: bool) -> UpstreamRequest:
        # Valid OpenAI requests TGI's typed parser rejects with 422 (serde): repaired or dropped.
        if isinstance(body.get("stop"), str):
            body["stop"] = [body["stop"]]
        if "logit_bias" in body:  # unused by TGI, and a dict is not the list it parses
            del body["logit_bias"]
        if "stream_options" in body and body["stream_options"] is None:
            del body["stream_options"]
        rf = body.get("response_format")
        if isinstance(rf, dict):
            grammar = _grammar(rf)
            if grammar is None:
                del body["response_format"]
            else:
                body["response_format"] = grammar  # a new dict: the client's body may be retried elsewhere
        top_p = body.get("top_p")
        if isinstance(top_p, (int, float)) and top_p >= 1.0:
            del body["top_p"]
        p = body.get("presence_penalty")
        if isinstance(p, (int, float)):
            if p == 0:
                del body["presence_penalty"]
            else:
                body["presence_penalty"] = max(1.0 + p / 2.0, 0.05) - 2.0
        if endpoint is Endpoint.COMPLETIONS and self.native_completions:
            return tgi_generate.build(self, body, upstream_model, stream)
        # TGI reads `model` as a LoRA adapter id; "tgi" means the base model.
        req = super().build_request(endpoint, body, "tgi" if upstream_model == self.model_id else upstream_model,
                                    stream)
        return req

    def translate_body(self, endpoint: Endpoint, body: bytes, headers: Any = None, request: Any = None) -> bytes:
        if request is not None and not request.passthrough:
            return tgi_generate.translate_body(body, headers or [], request)
        body = _repair(body, _new_id(endpoint))
        if b'"tool_calls":[' in body:  # TGI says "stop" for a call (lib.rs:748 finish_reason.format(true))
            body = body.replace(*FINISH_TOOL)
        return body

    def translate_stream(self, endpoint: Endpoint, chunks: AsyncIterator[bytes],
                         request: UpstreamRequest) -> AsyncIterator[bytes]:
        return tgi_generate.translate_stream(chunks, request)

    def stream_rewriter(self, request: UpstreamRequest) -> Callable[[bytes], bytes] | None:
        if not request.passthrough:
            return None  # already OpenAI-shaped by translate_stream
        id_field = b'"id":"' + _new_id(Endpoint.CHAT if "chat" in request.url else Endpoint.COMPLETIONS) + b'"'
        return _StreamRepair(id_field)

    def first_event_error(self, event: bytes) -> GatewayError | None:
        if b'{"error"' not in event:
            return None
        for line in event.splitlines():
            if line.startswith(b"data:") and b'{"error"' in line:
                return self._in_band_error(line[5:].strip())
        return None

    def _in_band_error(self, payload: bytes) -> GatewayError:
        message, etype, _, _ = parse_error_body(payload)
        if "overloaded" in message.lower() or etype == "overloaded":
            return Overloaded(f"backend {self.target.name} is overloaded", headers={"Retry-After": "1"})
        if message.startswith(CLIENT_FAULTS) or etype == "validation":
            return _validation(message)
        return status_error(502, message or "generation failed")

    # -- errors ----------------------------------------------------------------------------------
    def map_error(self, status: int, body: bytes) -> GatewayError:
        message, etype, _, _ = parse_error_body(body)
        if etype == "overloaded" or status == 429:
            return Overloaded(message or f"backend {self.target.name} is overloaded", headers={"Retry-After": "1"})
        if etype == "validation" or (status == 422 and etype in (None, "template_error", "tool_error",
                                                                   "missing_template_variable")):
            return _validation(message or "invalid request")
        if etype == "generation" or status == 424:
            return status_error(502, message or "generation failed")
        return super().map_error(status, body)

    # -- health, discovery, load -------------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        health = await fetch("GET", self.target.url + "/health")
        if health.status != 200:
            return Probe(State.DOWN, detail=parse_error_body(health.body)[0] or f"/health answered {health.status}")
        info = await fetch("GET", self.target.url + "/info")
        doc = loads_or_none(info.body) if info.status == 200 else None
        if not isinstance(doc, dict) or not isinstance(doc.get("model_id"), str):
            return Probe(State.DOWN, detail=f"/info answered HTTP {info.status}")
        self.model_id = doc["model_id"]
        ctx = doc.get("max_total_tokens")
        mcr = doc.get("max_concurrent_requests")
        self.max_concurrent_requests = mcr if isinstance(mcr, int) else None
        self.version = doc.get("version") if isinstance(doc.get("version"), str) else None
        probe = Probe(State.READY, [ServedModel(self.model_id, ctx if isinstance(ctx, int) else None)],
                      version=self.version)
        metrics = await fetch("GET", self.target.url + "/metrics")
        if metrics.status == 200:
            g = gauges(metrics.body.decode("utf-8", "replace"), LOAD_METRICS)
            probe.load = sum(g.values()) if g else None
            # the running batch's requests run, the queue's wait; TGI has no KV-usage figure
            probe.engine = EngineStats(running=g.get("tgi_batch_current_size"), waiting=g.get("tgi_queue_size"),
                                       models_loaded=1)
        else:  # TGI serves one model, loaded before it listens
            probe.engine = EngineStats(models_loaded=1)
        if self.native_completions is None:
            spec = await fetch("GET", self.target.url + "/api-doc/openapi.json")
            paths = (loads_or_none(spec.body) or {}).get("paths") if spec.status == 200 else None
            if isinstance(paths, dict):
                self.native_completions = "/v1/completions" not in paths
        return probe


def _grammar(rf: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's `response_format` as TGI's adjacently tagged GrammarType, None for plain text.

    TGI (lib.rs:236-258) reads `{"type": "json" | "json_object" (alias) | "regex" | "json_schema",
    "value": ...}`; `json`'s value is the schema itself (accepted by every TGI since grammars came,
    `json_schema` only by 3.x). validation.rs:348-405 needs a schema with top-level `properties`:
    a schema without them is TGI's own clear 422 (a 400 here)."""
    kind = rf.get("type")
    if kind == "text":  # plain text is TGI's default
        return None
    if "value" in rf:  # already TGI's dialect
        return rf
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema is required: TGI constrains output "
                                 "to a JSON schema", param="response_format")
        return {"type": "json", "value": schema}
    if kind == "json_object":
        schema = rf.get("schema")  # the json_object + schema extension (llama.cpp, vLLM)
        if isinstance(schema, dict):
            return {"type": "json", "value": schema}
        # The Properties branch of TGI's schema compiler (outlines-core) ignores additionalProperties,
        # so no schema TGI accepts means "any JSON object": refuse instead of answering free text.
        raise CapabilityMissing("JSON mode without a schema is not supported by TGI backends: send "
                                "response_format {\"type\": \"json_schema\", \"json_schema\": {\"name\", "
                                "\"schema\"}} with an object schema that has properties", param="response_format")
    return rf


def _new_id(endpoint: Endpoint) -> bytes:
    return (b"chatcmpl-" if endpoint is Endpoint.CHAT else b"cmpl-") + uuid.uuid4().hex.encode()


def _repair(data: bytes, id_value: bytes, fill: bool = False) -> bytes:
    """Fill TGI's empty ids, translate its finish reasons and in-band errors (bytes only)."""
    if b'"id":""' in data:
        data = data.replace(b'"id":""', id_value if fill else b'"id":"' + id_value + b'"')
    if b'"finish_reason":"' in data:
        for old, new in FINISH_FIXES:
            if old in data:
                data = data.replace(old, new)
    if b'{"error"' in data and b'"http_status_code"' in data:
        data = _fix_error_events(data)
    return data


class _StreamRepair:
    """One chat stream's fix-ups. TGI never says "tool_calls" (chat.rs:96-100), and after a call's
    closing brace its ChatState (chat.rs:186-236) drops the final EOS token's event, the one that
    carries finish_reason: a tool-call stream has no finish chunk at all. Once a tool-call delta went
    by, "stop" becomes "tool_calls", or a finish chunk is added ahead of the usage chunk / [DONE]."""

    __slots__ = ("id_field", "head", "finished")

    def __init__(self, id_field: bytes) -> None:
        self.id_field = id_field
        self.head: dict[str, Any] | None = None  # id, model, ... of the stream's first tool-call chunk
        self.finished = False

    def __call__(self, chunk: bytes) -> bytes:
        chunk = _repair(chunk, self.id_field, fill=True)
        if self.head is None:
            if b'"tool_calls":[' not in chunk:
                return chunk
            self.head = _chunk_head(chunk)
        if self.finished:
            return chunk
        if b'"finish_reason":"' in chunk:  # "length" (a cut call) stays
            self.finished = True
            return chunk.replace(*FINISH_TOOL)
        if b'"choices":[]' in chunk or b"[DONE]" in chunk:
            self.finished = True
            return _add_finish(chunk, self.head)
        return chunk


def _chunk_head(chunk: bytes) -> dict[str, Any]:
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and b'"tool_calls":[' in line:
            doc = loads_or_none(line[5:].strip())
            if isinstance(doc, dict):
                return {k: doc.get(k) for k in ("id", "object", "created", "model", "system_fingerprint")}
    return {"object": "chat.completion.chunk"}


def _add_finish(chunk: bytes, head: dict[str, Any]) -> bytes:
    finish = b"data: " + orjson.dumps({**head, "choices": [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}], "usage": None}) + b"\n\n"
    events = chunk.split(b"\n\n")
    for i, event in enumerate(events):
        if b'"choices":[]' in event or b"[DONE]" in event:
            events[i] = finish + event
            break
    return b"\n\n".join(events)


def _fix_error_events(chunk: bytes) -> bytes:
    out = []
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and b'"http_status_code"' in line:
            doc = loads_or_none(line[5:].strip())
            err = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(err, dict):
                message = str(err.get("message") or "generation failed")
                overloaded = "overloaded" in message.lower()
                etype = "rate_limit_error" if overloaded else \
                    "invalid_request_error" if message.startswith(CLIENT_FAULTS) else "server_error"
                envelope = {"error": {"message": message, "type": etype, "param": None,
                                      "code": "overloaded" if overloaded else None}}
                line = b"data: " + orjson.dumps(envelope)
        out.append(line)
    return b"\n".join(out)


def _validation(message: str) -> GatewayError:
    if ("max_new_tokens" in message and "must be <=" in message) or "must have less than" in message:
        return InvalidRequest(message, code="context_length_exceeded", param="messages")
    return InvalidRequest(message)

