"""Ollama's native chat API <-> OpenAI chat completions: the request one way, the answer the other
(gateway/fronts/ollama.py serves it; the wire format is ../shared/backends.md §3.2, Ollama's
`api/types.go` and `server/routes.go`).

- Request: `messages` (images as data URLs, assistant `tool_calls` with object arguments, `tool` results
  by `tool_call_id` or `tool_name`), `stream` (absent = true), `format` ("json" or a JSON schema),
  `tools`, `options` (sampling ones mapped to OpenAI fields; load-time and unknown ones refused by name:
  a gateway cannot apply them to one request), `logprobs`/`top_logprobs`. `keep_alive` and `think` are
  accepted and left to the backend's own configuration (documented in README "Clients").
- Answer: one JSON object, or NDJSON lines: deltas with `done: false`, tool calls whole (Ollama sends
  them in one chunk, with arguments as an object), then a final `done: true` line with `done_reason`
  and the token counts; durations in nanoseconds, zero ones omitted as Ollama does.
"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.fronts.bridge import reasoning, streamed

# Ollama option -> OpenAI field (vLLM and llama.cpp take top_k and min_p beside the standard ones).
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                 "seed": "seed", "stop": "stop", "presence_penalty": "presence_penalty",
                 "frequency_penalty": "frequency_penalty", "num_predict": "max_tokens"}
OLLAMA_FIELDS = frozenset({"model", "messages", "stream", "format", "options", "keep_alive", "tools", "think",
                           "truncate", "shift", "logprobs", "top_logprobs"})
IMAGE_MAGIC = (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklGR", "image/webp"))


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _image_url(data: Any) -> dict[str, Any]:
    if not isinstance(data, str) or not data:
        raise InvalidRequest("messages[].images must be base64 strings", param="messages")
    mime = next((m for prefix, m in IMAGE_MAGIC if data.startswith(prefix)), None)
    if mime is None:
        try:
            base64.b64decode(data[:64] + "=" * (-len(data[:64]) % 4), validate=True)
        except ValueError:
            raise InvalidRequest("messages[].images must be base64 image data", param="messages") from None
        mime = "image/png"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidRequest("messages must be a list", param="messages")
    out: list[dict[str, Any]] = []
    calls_by_name: dict[str, str] = {}  # tool name -> the id of its latest call (results may name the tool only)
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise InvalidRequest(f"messages[{i}].role must be system, user, assistant or tool", param="messages")
        role, content = m["role"], m.get("content") or ""
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string", param="messages")
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.get("images"):
            if not isinstance(m["images"], list):
                raise InvalidRequest(f"messages[{i}].images must be a list", param="messages")
            msg["content"] = [*([{"type": "text", "text": content}] if content else []),
                              *(_image_url(img) for img in m["images"])]
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = (call or {}).get("function") or {}
                cid = call.get("id") or f"call_{uuid.uuid4().hex[:8]}"
                args = fn.get("arguments")
                calls.append({"id": cid, "type": "function", "function": {
                    "name": fn.get("name"), "arguments": args if isinstance(args, str) else orjson.dumps(
                        args if args is not None else {}).decode()}})
                calls_by_name[str(fn.get("name"))] = cid
            msg["tool_calls"] = calls
        if role == "tool":
            cid = m.get("tool_call_id") or calls_by_name.get(str(m.get("tool_name")))
            if not cid:
                raise InvalidRequest(f"messages[{i}]: a tool result needs tool_call_id, or tool_name naming an "
                                     "earlier assistant tool call", param="messages")
            msg["tool_call_id"] = cid
        out.append(msg)
    return out


def chat_request(body: Any) -> tuple[dict[str, Any], bool]:
    """An Ollama /api/chat body as an OpenAI chat completions body, and whether it streams."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required", param="model")
    stream = body.get("stream", True) is not False
    # Fields Ollama does not define go on as sent, as on the chat path (a backend may know them).
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in OLLAMA_FIELDS}
    out.update(model=model, messages=_messages(body.get("messages") or []))
    if stream:
        streamed(out)  # the final line's counts
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise InvalidRequest('format must be "json" or a JSON schema object', param="format")
    if body.get("tools"):
        out["tools"] = body["tools"]
    if body.get("logprobs"):
        out["logprobs"] = True
        if body.get("top_logprobs"):
            out["top_logprobs"] = body["top_logprobs"]
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("options must be an object", param="options")
    unsupported = sorted(k for k in options if k not in OPTION_FIELDS)
    if unsupported:
        raise InvalidRequest(f"options not supported through this gateway: {', '.join(unsupported)} (per-request "
                             f"options it maps: {', '.join(OPTION_FIELDS)}; load-time ones such as num_ctx are "
                             "set where the backend is launched)", param="options", code="unsupported_parameter")
    for k, v in options.items():
        if k == "num_predict" and isinstance(v, int) and v < 0:
            continue  # -1: until the context is full, which is the OpenAI default too
        out[OPTION_FIELDS[k]] = v
    return out, stream


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") or {}
        args: Any = fn.get("arguments") or "{}"
        try:
            args = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError:
            pass  # not JSON: passed on as the model wrote it
        out.append({"id": c.get("id") or f"call_{uuid.uuid4().hex[:8]}",
                    "function": {"index": i, "name": fn.get("name"), "arguments": args}})
    return out


def _done_fields(finish: str | None, usage: dict[str, Any] | None, started: float) -> dict[str, Any]:
    out: dict[str, Any] = {"done": True, "done_reason": "length" if finish == "length" else "stop",
                           "total_duration": int((time.perf_counter() - started) * 1e9)}
    if usage:
        if usage.get("prompt_tokens"):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        if usage.get("completion_tokens"):
            out["eval_count"] = usage["completion_tokens"]
    return out


def chat_answer(doc: dict[str, Any], model: str, started: float, generate: bool = False) -> dict[str, Any]:
    """A chat completion (or, for /api/generate, a completion) as Ollama's non-stream answer."""
    choice = (doc.get("choices") or [{}])[0]
    m = choice.get("message") or {}
    text = m.get("content") or choice.get("text") or ""
    thinking = reasoning(m)
    if generate:
        out: dict[str, Any] = {"model": model, "created_at": now_rfc3339(), "response": text}
        if thinking:
            out["thinking"] = thinking
        return {**out, **_done_fields(choice.get("finish_reason"), doc.get("usage"), started)}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if m.get("tool_calls"):
        message["tool_calls"] = _tool_calls(m["tool_calls"])
    return {"model": model, "created_at": now_rfc3339(), "message": message,
            **_done_fields(choice.get("finish_reason"), doc.get("usage"), started)}


class ChatStream:
    """OpenAI chat completion (or completion) chunks in, Ollama NDJSON lines out: `message` lines for
    /api/chat, `response` lines for /api/generate. Tool call pieces are gathered and sent whole, as Ollama
    does, once the answer says they are complete."""

    def __init__(self, model: str, started: float, generate: bool = False) -> None:
        self.model, self.started, self.generate = model, started, generate
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.ended = False

    def _line(self, message: dict[str, Any], **more: Any) -> bytes:
        if self.generate:  # /api/generate: the text as `response` (and `thinking`) at the top level
            body = {"response": message.get("content", ""), **({"thinking": message["thinking"]}
                                                               if message.get("thinking") else {})}
        else:
            body = {"message": message}
        return orjson.dumps({"model": self.model, "created_at": now_rfc3339(), **body,
                             **({"done": False} if not more else more)}) + b"\n"

    def chunk(self, doc: dict[str, Any]) -> bytes:
        if doc.get("usage"):
            self.usage = doc["usage"]
        out = b""
        for choice in doc.get("choices") or []:
            delta = choice.get("delta") or {}
            piece: dict[str, Any] = {}
            text = delta.get("content") or choice.get("text")  # chat chunks, or completion chunks (raw)
            if text:
                piece["content"] = text
            thinking = reasoning(delta)
            if thinking:
                piece["thinking"] = thinking
            if piece:
                out += self._line({"role": "assistant", "content": piece.get("content", ""),
                                   **({"thinking": thinking} if thinking else {})})
            for tc in delta.get("tool_calls") or []:
                call = self.calls.setdefault(int(tc.get("index") or 0), {"function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    call["id"] = tc["id"]
                fn = tc.get("function") or {}
                call["function"]["name"] += fn.get("name") or ""
                call["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        """The tool calls, whole, then the final line (once)."""
        if self.ended:
            return b""
        self.ended = True
        out = b""
        if self.calls:
            out += self._line({"role": "assistant", "content": "",
                               "tool_calls": _tool_calls([self.calls[i] for i in sorted(self.calls)])})
        return out + self._line({"role": "assistant", "content": ""},
                                **_done_fields(self.finish, self.usage, self.started))


GENERATE_REFUSED = ("suffix", "template", "context")


def generate_request(body: Any) -> tuple[str, dict[str, Any] | None, bool]:
    """An Ollama /api/generate body as (path, OpenAI body, stream): a chat completion with the prompt as
    the user's message (the backend applies the model's template, as Ollama does), or with `raw` a
    completion of the prompt as is. None for an empty prompt: Ollama only loads the model then."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    refused = [k for k in GENERATE_REFUSED if body.get(k)]
    if refused:
        raise InvalidRequest(f"{', '.join(refused)} not supported through this gateway (the backend applies its "
                             "own template; send messages to /api/chat for a conversation)", param=refused[0],
                             code="unsupported_parameter")
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string", param="prompt")
    chat = {**body, "messages": [*([{"role": "system", "content": body["system"]}] if body.get("system") else []),
                                 {"role": "user", "content": prompt,
                                  **({"images": body["images"]} if body.get("images") else {})}]}
    for k in ("prompt", "system", "images", "raw", "suffix", "template", "context"):
        chat.pop(k, None)
    out, stream = chat_request(chat)
    if not prompt:
        return "", None, stream
    if body.get("raw"):
        if body.get("system") or body.get("images"):
            raise InvalidRequest("raw takes the prompt as is: no system or images", param="raw")
        del out["messages"]
        out["prompt"] = prompt
        return "/v1/completions", out, stream
    return "/v1/chat/completions", out, stream


def embed_request(body: Any) -> dict[str, Any] | None:
    """An Ollama /api/embed body as an OpenAI embeddings body (None for an empty input: Ollama answers
    `embeddings: []` then)."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model is required", param="model")
    inp = body.get("input")
    if inp in (None, "", []):
        return None
    if not (isinstance(inp, str) or (isinstance(inp, list) and all(isinstance(x, str) for x in inp))):
        raise InvalidRequest("input must be a string or a list of strings", param="input")
    if body.get("options"):
        raise InvalidRequest(f"options not supported for embeddings through this gateway: "
                             f"{', '.join(sorted(body['options']))}", param="options", code="unsupported_parameter")
    out: dict[str, Any] = {"model": body["model"], "input": inp}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    return out


def embed_answer(doc: dict[str, Any], model: str, started: float) -> dict[str, Any]:
    data = sorted(doc.get("data") or [], key=lambda d: d.get("index", 0))
    out: dict[str, Any] = {"model": model, "embeddings": [d.get("embedding") for d in data],
                           "total_duration": int((time.perf_counter() - started) * 1e9)}
    prompt = (doc.get("usage") or {}).get("prompt_tokens")
    if prompt:
        out["prompt_eval_count"] = prompt
    return out
