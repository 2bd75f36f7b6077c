"""Anthropic's Messages API <-> OpenAI chat completions (gateway/fronts/anthropic.py serves it).

- Request: `system` (a string or text blocks), `messages` with content blocks (text; images as base64 or
  URL; assistant `tool_use` -> `tool_calls`; user `tool_result` -> `tool` messages, sent before the rest
  of that user turn), `max_tokens` (required, as Anthropic requires it), `stop_sequences`, `temperature`,
  `top_p`, `top_k`, `tools` (custom tools: `input_schema` -> `parameters`; server tools refused by name),
  `tool_choice` (auto / any -> required / tool -> that function / none; `disable_parallel_tool_use`),
  `metadata.user_id` -> `user`, `output_config` (`format` -> structured output, `effort` ->
  `reasoning_effort`), `stream`; `temperature`/`top_p`/`top_k` when sent (newer SDKs no longer offer them).
  Anthropic's platform settings (caching, region, tier, workspace, diagnostics) are dropped; `thinking` is
  left to the backend; `mcp_servers` and server tools are refused by name.
- Answer: a `message` with `text`, `thinking` (from the backend's reasoning) and `tool_use` blocks,
  `stop_reason` (stop -> end_turn, or stop_sequence when the backend says which one matched; length ->
  max_tokens; tool_calls -> tool_use), `usage` {input_tokens, output_tokens}; streamed as Anthropic's typed
  events (message_start, content_block_start / _delta / _stop, message_delta, message_stop).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.fronts.bridge import reasoning, streamed

SAMPLING = ("temperature", "top_p", "top_k")
# Anthropic's platform settings (prompt caching, regions, tiers, workspaces, diagnostics): nothing a
# backend behind the gateway can act on, so they are dropped (README "Clients").
PLATFORM = ("cache_control", "container", "diagnostics", "inference_geo", "service_tier", "speed",
            "user_profile_id", "workspace_id")
ANTHROPIC_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences", "stream", "tools",
                              "tool_choice", "metadata", "thinking", "output_config", "mcp_servers", *PLATFORM,
                              *SAMPLING})
EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}


def tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def error_doc(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error" if status >= 500 else
                                                               "invalid_request_error"), "message": message}}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for b in content:
            if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
                raise InvalidRequest(f"{where}: only text blocks are accepted here", param="messages")
            parts.append(b["text"])
        return "".join(parts)
    raise InvalidRequest(f"{where}: content must be a string or a list of blocks", param="messages")


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source") or {}
    if src.get("type") == "base64" and isinstance(src.get("data"), str):
        url = f"data:{src.get('media_type') or 'image/png'};base64,{src['data']}"
    elif src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise InvalidRequest(f"{where}: an image source must be base64 data or a URL", param="messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _turn(i: int, m: Any) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages (a user turn with tool results becomes several)."""
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise InvalidRequest(f"{where}.role must be user or assistant", param="messages")
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of blocks", param="messages")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": b.get("text") or ""})
        elif kind == "image" and role == "user":
            parts.append(_image(b, f"{where}.content[{j}]"))
        elif kind == "tool_use" and role == "assistant":
            args = orjson.dumps(b.get("input") or {}).decode()
            calls.append({"id": b.get("id") or tool_id(), "type": "function",
                          "function": {"name": b.get("name"), "arguments": args}})
        elif kind == "tool_result" and role == "user":
            text = _text(b.get("content") or "", f"{where}.content[{j}].content")
            results.append({"role": "tool", "tool_call_id": b.get("tool_use_id"),
                            "content": ("Error: " + text) if b.get("is_error") else text})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier reasoning is not sent back to an OpenAI-style backend
        else:
            raise InvalidRequest(f"{where}.content[{j}]: block type {kind!r} is not supported in a {role} turn",
                                 param="messages")
    out = list(results)
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(p["text"] for p in parts) or None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    elif parts:
        plain = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if plain else parts})
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(t, dict) or t.get("type") not in (None, "custom") or "name" not in t:
            name = t.get("type") if isinstance(t, dict) else t
            raise InvalidRequest(f"tools[{i}]: {name!r} is a server tool, not served through this gateway: only "
                                 "custom tools (name, description, input_schema)", param="tools",
                                 code="unsupported_parameter")
        out.append({"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                     "parameters": t.get("input_schema") or {"type": "object"}}})
    return out


def check_request(body: Any, counting: bool = False) -> dict[str, Any]:
    """What every Messages request must be, translated or passed through: Anthropic's required fields
    (`counting`: of count_tokens, which has no max_tokens), and no server tools or MCP servers (no backend
    behind the gateway runs them)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model: Field required", param="model")
    if not counting and (type(body.get("max_tokens")) is not int or body["max_tokens"] < 1):
        raise InvalidRequest("max_tokens: Field required (an integer of at least 1)", param="max_tokens")
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: Field required", param="messages")
    if body.get("tools"):
        _tools(body["tools"])
    if body.get("mcp_servers"):
        raise InvalidRequest("mcp_servers is not served through this gateway: give the tools to the client and "
                             "send them as custom tools", param="mcp_servers", code="unsupported_parameter")
    return body


def messages_request(body: Any) -> dict[str, Any]:
    """An Anthropic Messages body (checked by check_request) as an OpenAI chat completions body."""
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in ANTHROPIC_FIELDS}  # others go on as sent
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(body["messages"]):
        messages += _turn(i, m)
    out.update(model=body["model"], messages=messages, max_tokens=body["max_tokens"])
    for k in SAMPLING:
        if body.get(k) is not None:
            out[k] = body[k]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or (
            {"type": "function", "function": {"name": choice.get("name")}} if kind == "tool" else "auto")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    config = body.get("output_config") or {}
    if isinstance(config, dict):
        fmt = config.get("format") or {}
        if fmt:
            if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
                raise InvalidRequest("output_config.format must be {type: json_schema, schema: {...}}",
                                     param="output_config")
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output",
                                                                             "schema": fmt["schema"]}}
        if config.get("effort") in EFFORT:
            out["reasoning_effort"] = EFFORT[config["effort"]]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str):
        out["user"] = user
    if body.get("stream"):
        streamed(out)
    return out


def _stop(choice: dict[str, Any], stops: list[str]) -> tuple[str, str | None]:
    finish = choice.get("finish_reason") or "stop"
    matched = choice.get("stop_reason")  # vLLM names the stop string that ended the answer
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish, "end_turn"), None


def _input(arguments: Any) -> Any:
    try:
        return orjson.loads(arguments) if isinstance(arguments, str) and arguments else arguments or {}
    except orjson.JSONDecodeError:
        return {"_raw": arguments}  # the model wrote no JSON: kept, visibly


def message_answer(doc: dict[str, Any], model: str, stops: list[str]) -> dict[str, Any]:
    choice = (doc.get("choices") or [{}])[0]
    m = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    thinking = reasoning(m)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if m.get("content") or not m.get("tool_calls"):
        content.append({"type": "text", "text": m.get("content") or ""})
    for c in m.get("tool_calls") or []:
        fn = c.get("function") or {}
        content.append({"type": "tool_use", "id": c.get("id") or tool_id(),
                        "name": fn.get("name"), "input": _input(fn.get("arguments"))})
    reason, seq = _stop(choice, stops)
    usage = doc.get("usage") or {}
    return {"id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": seq,
            "usage": {"input_tokens": usage.get("prompt_tokens") or 0,
                      "output_tokens": usage.get("completion_tokens") or 0}}


def event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **doc}) + b"\n\n"


class MessageStream:
    """OpenAI chat completion chunks in, Anthropic's typed SSE events out: one content block at a time
    (thinking, text, or one tool_use per call, its input as input_json_delta pieces)."""

    def __init__(self, model: str, stops: list[str]) -> None:
        self.model, self.stops = model, stops
        self.index = -1
        self.open: str | None = None  # "thinking", "text", or "tool:<openai index>"
        self.finish: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.ended = False

    def start(self) -> bytes:
        return event("message_start", {"message": {
            "id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _block(self, name: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = name
        return out + event("content_block_start", {"index": self.index, "content_block": block})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return event("content_block_stop", {"index": self.index})

    def chunk(self, doc: dict[str, Any]) -> bytes:
        if doc.get("usage"):
            self.usage = doc["usage"]
        out = b""
        for choice in doc.get("choices") or []:
            delta = choice.get("delta") or {}
            thinking = reasoning(delta)
            if thinking:
                if self.open != "thinking":
                    out += self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += event("content_block_delta", {"index": self.index,
                                                     "delta": {"type": "thinking_delta", "thinking": thinking}})
            if delta.get("content"):
                if self.open != "text":
                    out += self._block("text", {"type": "text", "text": ""})
                out += event("content_block_delta", {"index": self.index,
                                                     "delta": {"type": "text_delta", "text": delta["content"]}})
            for tc in delta.get("tool_calls") or []:
                name = f"tool:{tc.get('index') or 0}"
                fn = tc.get("function") or {}
                if self.open != name:
                    out += self._block(name, {"type": "tool_use", "id": tc.get("id") or tool_id(),
                                              "name": fn.get("name") or "", "input": {}})
                if fn.get("arguments"):
                    out += event("content_block_delta", {"index": self.index, "delta": {
                        "type": "input_json_delta", "partial_json": fn["arguments"]}})
            if choice.get("finish_reason"):
                self.finish = choice
        return out

    def end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        reason, seq = _stop(self.finish, self.stops) if self.finish else ("end_turn", None)
        return self._close() + event("message_delta", {
            "delta": {"stop_reason": reason, "stop_sequence": seq},
            "usage": {"input_tokens": self.usage.get("prompt_tokens") or 0,
                      "output_tokens": self.usage.get("completion_tokens") or 0}}) + event("message_stop", {})
