"""OpenAI chat requests in Ollama's native terms: messages, tool-call identity, images, reasoning effort.

Mirrors what Ollama's own OpenAI layer does (ollama openai/openai.go FromChatRequest, v0.33), so a
client sees the same behaviour through the gateway as against Ollama's `/v1`:
- assistant `tool_calls` keep their `id` (api.ToolCall.ID) and arguments become objects;
- a tool message keeps `tool_call_id` (api.Message.ToolCallID) and gets `tool_name` from its `name`,
  else from the call with that id (`nameFromToolCallID`, last one wins): renderers such as gemma4,
  command-r and glimmer attribute results by them (model/renderers/gemma4.go:204-219);
- assistant `reasoning` (Ollama's, vLLM's) or `reasoning_content` (DeepSeek's, llama.cpp's) -> `thinking`;
- `image_url` as `{"url": ...}` or a bare string, inline base64 only;
- `reasoning_effort` / `reasoning.effort` -> `think` (`thinkFromReasoningEffort`, openai.go:531-546).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest

# openai.go:531-546: OpenAI's scale clamped onto Ollama's think levels; "none" switches thinking off.
EFFORT_TO_THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                          "high": "high", "max": "max", "xhigh": "max", "ultra": "max"}


def think_from_effort(body: dict[str, Any]) -> bool | str | None:
    """The `think` value for `reasoning.effort` (preferred, as in openai.go:697-703) or `reasoning_effort`."""
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        effort, param = reasoning["effort"], "reasoning.effort"
    else:
        effort, param = body.get("reasoning_effort"), "reasoning_effort"
    if effort is None or effort == "":
        return None
    if not isinstance(effort, str) or effort not in EFFORT_TO_THINK:
        raise InvalidRequest(f"Invalid {param} {effort!r}: expected one of {', '.join(EFFORT_TO_THINK)}.",
                             param=param)
    return EFFORT_TO_THINK[effort]


def native_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be an array.", param="messages")
    # tool_call_id -> function name over the whole conversation; later calls win (nameFromToolCallID)
    names: dict[str, Any] = {}
    for m in messages:
        for c in (m.get("tool_calls") if isinstance(m, dict) else None) or []:
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                names[c["id"]] = (c.get("function") or {}).get("name")
    return [_message(m, i, names) for i, m in enumerate(messages)]


def _message(m: Any, i: int, names: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise InvalidRequest("Each message must be an object.", param=f"messages[{i}]")
    out: dict[str, Any] = {"role": m.get("role")}
    content = m.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                images.append(_image(part.get("image_url"), f"messages[{i}].content[{j}].image_url"))
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    thinking = m.get("reasoning") or m.get("reasoning_content")
    if isinstance(thinking, str) and thinking:
        out["thinking"] = thinking
    if m.get("tool_calls"):
        out["tool_calls"] = [_call(c, k) for k, c in enumerate(m["tool_calls"]) if isinstance(c, dict)]
    if m.get("role") == "tool":
        name = m.get("name") or names.get(m.get("tool_call_id"))  # type: ignore[arg-type]
        if name:
            out["tool_name"] = name
    if isinstance(m.get("tool_call_id"), str) and m["tool_call_id"]:
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _call(c: dict[str, Any], index: int) -> dict[str, Any]:
    f = c.get("function") or {}
    # `index` is the call's place in its turn (api.ToolCallFunction.Index), as Ollama numbered it
    call: dict[str, Any] = {"function": {"index": index, "name": f.get("name"), "arguments": _args(f.get("arguments"))}}
    if isinstance(c.get("id"), str) and c["id"]:
        call = {"id": c["id"], **call}
    return call


def _args(a: Any) -> Any:
    if isinstance(a, str):
        try:
            return orjson.loads(a)
        except orjson.JSONDecodeError:
            return a
    return a


def _image(value: Any, where: str) -> str:
    """The base64 payload of an inline image: `{"url": "data:..."}` or the bare string (openai.go:579-590)."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise InvalidRequest("An image_url must be a data: URL string or an object with one under `url`.",
                             param=where)
    if not url.startswith("data:") or ";base64," not in url:
        raise InvalidRequest("Ollama takes images as base64 data: URLs, not links.", param=where)
    return url.split(";base64,", 1)[1]
