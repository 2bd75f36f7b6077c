"""OpenAI layer conversions (middleware/openai.go + openai/openai.go): OpenAI requests to native
ones, native responses to OpenAI objects and SSE chunks, OpenAI-shaped errors."""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from .gojson import go_json
from .binding import _jkind, Reply
from .handling import gin_json


# ---------------------------------------------------------------------------------------------------
# OpenAI layer (middleware/openai.go + openai/openai.go)
# ---------------------------------------------------------------------------------------------------

def oai_error(status: int, message: str) -> web.Response:
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return gin_json(status, {"error": {"message": message, "type": etype, "param": None, "code": None}},
                    ctype="application/json", newline=True)


def decode_image_url(url: str) -> bytes:
    if url.startswith("http://") or url.startswith("https://"):
        raise Reply(400, "image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        url = url[len("data:;base64,"):]
    else:
        for t in ("jpeg", "jpg", "png", "webp"):
            p = f"data:image/{t};base64,"
            if url.startswith(p):
                url = url[len(p):]
                break
        else:
            raise Reply(400, "invalid image input")
    try:
        return base64.b64decode(url, validate=True)
    except (binascii.Error, ValueError):
        raise Reply(400, "invalid image input") from None


def from_chat_request(r: dict) -> dict:
    """openai.FromChatRequest -> an api.ChatRequest body."""
    messages = []
    for msg in r.get("messages") or []:
        if not isinstance(msg, dict):
            raise Reply(400, "json: cannot unmarshal " + _jkind(msg) + " into Go struct field "
                        "ChatCompletionRequest.messages of type openai.Message")
        role = msg.get("role") or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = msg.get("name") or ""
            if not tool_name and msg.get("tool_call_id"):
                for prev in reversed(r["messages"]):
                    for tc in (prev.get("tool_calls") or []) if isinstance(prev, dict) else []:
                        if tc.get("id") == msg["tool_call_id"]:
                            tool_name = (tc.get("function") or {}).get("name", "")
        calls = []
        for tc in msg.get("tool_calls") or []:
            try:
                args = json.loads((tc.get("function") or {}).get("arguments") or "")
            except ValueError:
                raise Reply(400, "invalid tool call arguments") from None
            c = {"function": {"index": 0, "name": (tc.get("function") or {}).get("name", ""), "arguments": args}}
            if tc.get("id"):
                c = {"id": tc["id"], **c}
            calls.append(c)
        content = msg.get("content")
        base = {"role": role}
        if isinstance(content, str):
            m = {**base, "content": content}
            if msg.get("reasoning"):
                m["thinking"] = msg["reasoning"]
            if calls:
                m["tool_calls"] = calls
            if tool_name:
                m["tool_name"] = tool_name
            if msg.get("tool_call_id"):
                m["tool_call_id"] = msg["tool_call_id"]
            messages.append(m)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise Reply(400, "invalid message format")
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        raise Reply(400, "invalid message format")
                    messages.append({**base, "content": part["text"]})
                elif part.get("type") == "image_url":
                    iu = part.get("image_url")
                    url = iu.get("url") if isinstance(iu, dict) else iu
                    if not isinstance(url, str):
                        raise Reply(400, "invalid message format")
                    img = decode_image_url(url)
                    messages.append({**base, "content": "", "images": [base64.b64encode(img).decode()]})
                elif part.get("type") == "input_audio":
                    au = part.get("input_audio")
                    if not isinstance(au, dict):
                        raise Reply(400, "invalid input_audio format")
                    if not isinstance(au.get("data"), str):
                        raise Reply(400, "invalid input_audio format: missing data")
                    messages.append({**base, "content": "", "images": [au["data"]]})
                else:
                    raise Reply(400, "invalid message format")
            if messages and calls:
                messages[-1]["tool_calls"] = calls
        else:
            if msg.get("tool_calls") is None:
                raise Reply(400, "invalid message content type: " + ("<nil>" if content is None else
                                                                      {bool: "bool", dict: "map[string]interface {}"}
                                                                      .get(type(content), "float64")))
            messages.append({**base, "content": "", "tool_calls": calls})
    options: dict[str, Any] = {}
    stop = r.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if r.get("max_tokens") is not None:
        options["num_predict"] = r["max_tokens"]
    options["temperature"] = r["temperature"] if r.get("temperature") is not None else 1.0
    if r.get("seed") is not None:
        options["seed"] = r["seed"]
    for k in ("frequency_penalty", "presence_penalty"):
        if r.get(k) is not None:
            options[k] = r[k]
    options["top_p"] = r["top_p"] if r.get("top_p") is not None else 1.0
    out: dict[str, Any] = {"model": r.get("model") or "", "messages": messages}
    fmt = r.get("response_format")
    if isinstance(fmt, dict):
        t = str(fmt.get("type", "")).strip().lower()
        if t == "json_object":
            out["format"] = "json"
        elif t == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            out["format"] = fmt["json_schema"].get("schema")
    out["options"] = options
    out["stream"] = bool(r.get("stream"))
    if r.get("tools"):
        out["tools"] = r["tools"]
    effort = ((r.get("reasoning") or {}).get("effort") if isinstance(r.get("reasoning"), dict)
              else r.get("reasoning_effort"))
    if effort:
        m = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
             "xhigh": "max", "ultra": "max"}
        if effort not in m:
            raise Reply(400, f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", '
                             '"high", "xhigh", "ultra", "max", or "none")')
        out["think"] = m[effort]
    if r.get("logprobs"):
        out["logprobs"] = True
    if r.get("top_logprobs"):
        out["top_logprobs"] = r["top_logprobs"]
    return out


def from_complete_request(r: dict) -> dict:
    options: dict[str, Any] = {}
    stop = r.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        for s in stop:
            if not isinstance(s, str):
                gt = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}.get(type(s), "float64")
                raise Reply(400, f"invalid type for 'stop' field: {gt if s is not None else '<nil>'}")
        options["stop"] = list(stop)
    if r.get("max_tokens") is not None:
        options["num_predict"] = r["max_tokens"]
    options["temperature"] = r["temperature"] if r.get("temperature") is not None else 1.0
    if r.get("seed") is not None:
        options["seed"] = r["seed"]
    options["frequency_penalty"] = r.get("frequency_penalty") or 0
    options["presence_penalty"] = r.get("presence_penalty") or 0
    options["top_p"] = r["top_p"] if r.get("top_p") else 1.0
    out: dict[str, Any] = {"model": r.get("model") or "", "prompt": r.get("prompt") or "", "options": options,
                           "stream": bool(r.get("stream"))}
    if r.get("suffix"):
        out["suffix"] = r["suffix"]
    if isinstance(r.get("logprobs"), int) and r["logprobs"] > 0:
        out["logprobs"], out["top_logprobs"] = True, r["logprobs"]
    return out


def _unix(created_at: str) -> int:
    return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")[:19] + "+00:00").timestamp())


def oai_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": c.get("id", ""), "index": c["function"].get("index", 0), "type": "function",
             "function": {"name": c["function"]["name"], "arguments": go_json(c["function"]["arguments"])}}
            for c in calls]


def usage_of(r: dict) -> dict:
    p, c = r.get("prompt_eval_count", 0), r.get("eval_count", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def to_chat_completion(cid: str, r: dict) -> dict:
    msg = r.get("message") or {}
    calls = oai_tool_calls(msg.get("tool_calls") or [])
    reason = r.get("done_reason", "")
    if reason == "stop" and calls:
        reason = "tool_calls"
    m: dict[str, Any] = {"role": msg.get("role", ""), "content": msg.get("content", "")}
    if msg.get("thinking"):
        m["reasoning"] = msg["thinking"]
    if calls:
        m["tool_calls"] = calls
    choice: dict[str, Any] = {"index": 0, "message": m, "finish_reason": reason or None}
    if r.get("logprobs"):  # openai.go:272-275 ChoiceLogprobs{Content: r.Logprobs}, omitempty
        choice["logprobs"] = {"content": r["logprobs"]}
    return {"id": cid, "object": "chat.completion", "created": _unix(r["created_at"]) if r.get("created_at") else 0,
            "model": r.get("model", ""), "system_fingerprint": "fp_ollama", "choices": [choice], "usage": usage_of(r)}


class ChatWriter:
    """middleware.ChatWriter for stream=true: native objects in, SSE events out."""

    def __init__(self, cid: str, include_usage: bool) -> None:
        self.cid, self.include_usage = cid, include_usage
        self.created: int | None = None
        self.first_sent = False
        self.tool_call_sent = False

    def _chunk(self, model: str, delta: dict, finish: str | None = None, logprobs: list | None = None) -> dict:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:  # openai.go:304-307, omitempty
            choice["logprobs"] = {"content": logprobs}
        return {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": model,
                "system_fingerprint": "fp_ollama", "choices": [choice]}

    def write(self, r: dict) -> bytes:
        """One native object (or an {"error"} line, which Go decodes as an empty ChatResponse)."""
        if "error" in r:
            r = {}
        if self.created is None:
            self.created = _unix(r["created_at"]) if r.get("created_at") else int(time.time())
        msg = r.get("message") or {}
        done = bool(r.get("done"))
        content, thinking, calls = msg.get("content", ""), msg.get("thinking", ""), msg.get("tool_calls") or []
        model = r.get("model", "")
        out = b""
        trailer = done and self.first_sent and not content and not thinking and not calls
        if not trailer:
            role = {} if self.first_sent else {"role": "assistant"}
            deltas = []
            if thinking and (content or calls):
                deltas.append({**role, "reasoning": thinking})
                d: dict[str, Any] = {"content": content}
                if calls:
                    d["tool_calls"] = oai_tool_calls(calls)
                deltas.append(d)
            else:
                d = {**role, "content": content}
                if calls:
                    d["tool_calls"] = oai_tool_calls(calls)
                if thinking:
                    d["reasoning"] = thinking
                deltas.append(d)
            for i, d in enumerate(deltas):
                if d.get("tool_calls"):
                    self.tool_call_sent = True
                # a split (mixed) response carries the logprobs on its first chunk only (openai.go:359)
                lps = r.get("logprobs") if i == 0 else None
                out += b"data: " + go_json(self._chunk(model, d, logprobs=lps)).encode() + b"\n\n"
            self.first_sent = True
        if done:
            reason = r.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            out += b"data: " + go_json(self._chunk(model, {}, reason)).encode() + b"\n\n"
            if self.include_usage:
                u = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": model,
                     "system_fingerprint": "fp_ollama", "choices": [], "usage": usage_of(r)}
                out += b"data: " + go_json(u).encode() + b"\n\n"
            out += b"data: [DONE]\n\n"
        return out


def complete_chunk(cid: str, r: dict, include_usage: bool) -> dict:
    reason = r.get("done_reason") or None
    c: dict[str, Any] = {"id": cid, "object": "text_completion", "created": int(time.time()),
                         "choices": [{"text": r.get("response", ""), "index": 0, "finish_reason": reason}],
                         "model": r.get("model", ""), "system_fingerprint": "fp_ollama"}
    if include_usage:
        c["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return c


def complete_write(cid: str, r: dict, include_usage: bool) -> bytes:
    if "error" in r:
        r = {}
    c = complete_chunk(cid, r, include_usage)
    out = b"data: " + go_json(c).encode() + b"\n\n"
    if r.get("done"):
        if include_usage:
            c["usage"] = usage_of(r)
            c["choices"] = []
            out += b"data: " + go_json(c).encode() + b"\n\n"
        out += b"data: [DONE]\n\n"
    return out


def to_completion(cid: str, r: dict) -> dict:
    return {"id": cid, "object": "text_completion", "created": _unix(r["created_at"]) if r.get("created_at") else 0,
            "model": r.get("model", ""), "system_fingerprint": "fp_ollama",
            "choices": [{"text": r.get("response", ""), "index": 0, "finish_reason": r.get("done_reason") or None}],
            "usage": usage_of(r)}
