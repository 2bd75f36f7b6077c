"""OpenAI's Responses API <-> chat completions, for backends that do not serve `POST /v1/responses` themselves
(gateway/fronts/responses.py decides; TGI, FastChat, RWKV-Runner, Ollama).

- Request: `instructions` -> a system message first; `input` as a string or items: messages (roles user,
  assistant, system, developer -> system; `input_text` / `output_text` parts, `input_image` -> image_url),
  `function_call` items -> the assistant's `tool_calls` (consecutive ones merged into one message),
  `function_call_output` -> `tool` messages, `reasoning` items dropped (a chat backend cannot take them
  back); `tools` (function tools; others refused by name), `tool_choice`, `parallel_tool_calls`,
  `max_output_tokens` -> `max_tokens`, `temperature`, `top_p`, `text.format` (json_object / json_schema ->
  `response_format`), `reasoning.effort` -> `reasoning_effort`, `user` / `safety_identifier` -> `user`,
  `stream`. `previous_response_id` and `store` are the front's (a bounded store of past conversations).
  Fields the translation cannot honour (`background`, `conversation`, `prompt`, `input_file` parts, item
  references, non-function tools) are refused with a 400 that names them, never dropped in silence; the
  platform's settings in DROPPED are dropped; any other field goes on to the backend as sent.
- Answer: a `response` object whose `output` holds a `reasoning` item (from the backend's reasoning text),
  a `message` item with one `output_text` part, and one `function_call` item per tool call; `status`
  completed, or incomplete (`max_output_tokens`) when the backend stopped at the length limit; `usage` as
  input/output/total tokens.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.errors import InvalidRequest
from gateway.fronts.bridge import reasoning, streamed

# Sent by SDKs and agent tools, meaningless to a chat backend: dropped (README "Clients").
DROPPED = ("metadata", "include", "service_tier", "truncation", "prompt_cache_key", "prompt_cache_retention",
           "top_logprobs", "stream_options", "max_tool_calls")
REFUSED = ("background", "conversation", "prompt")
KNOWN = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                   "max_output_tokens", "temperature", "top_p", "text", "reasoning", "user", "safety_identifier",
                   "stream", "store", "previous_response_id", *DROPPED, *REFUSED})


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: the text when it is all text, else OpenAI parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param="input")
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(p.get("text"), str):
            out.append({"type": "text", "text": p["text"]})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            image: dict[str, Any] = {"url": p["image_url"]}
            if p.get("detail") in ("low", "high", "auto"):
                image["detail"] = p["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "refusal" and isinstance(p.get("refusal"), str):
            out.append({"type": "text", "text": p["refusal"]})
        else:
            raise InvalidRequest(f"{where}.content[{j}]: a part of type {kind!r} cannot be sent to this model's "
                                 "backend (text and image URLs can)", param="input")
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p.get("text", "") for p in output if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise InvalidRequest("a function_call_output's output must be a string or a list of parts", param="input")


def input_messages(items: Any) -> list[dict[str, Any]]:
    """`input` (a string or a list of items) as chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise InvalidRequest("input must be a string or a list of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"{where}.role must be user, assistant, system or developer", param="input")
            out.append({"role": "system" if role == "developer" else role,
                        "content": _parts(item.get("content"), where)})
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("call_id"), str):
                raise InvalidRequest(f"{where}: a function_call needs name and call_id", param="input")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest(f"{where}: a function_call_output needs call_id", param="input")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_text(item.get("output"))})
        elif kind == "reasoning":
            continue  # the backend's own earlier reasoning: chat backends take no such input
        else:
            raise InvalidRequest(f"{where}: input items of type {kind!r} cannot be sent to this model's backend "
                                 "(messages, function_call and function_call_output can)", param="input")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    out = []
    for i, t in enumerate(tools):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind != "function" or not isinstance(t.get("name"), str):
            raise InvalidRequest(f"tools[{i}]: {kind!r} tools are OpenAI's own and cannot run behind this "
                                 "gateway; only function tools can", param="tools")
        fn: dict[str, Any] = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object",
                                                                                         "properties": {}}}
        if t.get("description"):
            fn["description"] = t["description"]
        if t.get("strict") is not None:
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("tool_choice must be auto, none, required or {type: function, name}", param="tool_choice")


def _format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        schema.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("text.format must be text, json_object or json_schema (with a schema)", param="text")


def chat_request(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions request for a Responses request (`history`: the stored conversation that
    `previous_response_id` continues, already as chat messages)."""
    for k in REFUSED:
        if body.get(k):
            raise InvalidRequest(f"{k!r} is not supported for this model: its backend has no Responses API of its "
                                 "own, and the gateway translates one request at a time", param=k,
                                 code="unsupported_parameter")
    if not isinstance(body.get("model"), str):
        raise InvalidRequest("model is required", param="model", code="missing_required_parameter")
    if "input" not in body and not history:
        raise InvalidRequest("input is required", param="input", code="missing_required_parameter")
    if not isinstance(body.get("input", []), (str, list)):
        raise InvalidRequest("input must be a string or a list of items", param="input", code="invalid_type")
    if not isinstance(body.get("stream", False), bool):
        raise InvalidRequest("stream must be a boolean", param="stream", code="invalid_type")
    messages = []
    if body.get("instructions") is not None:  # per request: a continued conversation does not inherit them
        if not isinstance(body["instructions"], str):
            raise InvalidRequest("instructions must be a string", param="instructions")
        messages.append({"role": "system", "content": body["instructions"]})
    messages += history
    messages += input_messages(body.get("input", []))
    chat: dict[str, Any] = {k: v for k, v in body.items() if k not in KNOWN}  # others go on as sent
    chat.update(model=body["model"], messages=messages)
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if isinstance(body.get("parallel_tool_calls"), bool) and body.get("tools"):
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            chat[k] = body[k]
    fmt = _format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    effort = body.get("reasoning", {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort in ("low", "medium", "high"):
        chat["reasoning_effort"] = effort
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str):
        chat["user"] = user
    if body.get("stream"):
        streamed(chat)
    return chat


def usage_doc(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    p, c = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    thought = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": thought}, "total_tokens": p + c}


def response_doc(body: dict[str, Any], rid: str, created: int, status: str, output: list[dict[str, Any]],
                 usage: dict[str, Any] | None) -> dict[str, Any]:
    """A `response` object: the request's settings echoed, as OpenAI's API does."""
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model"), "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "store": body.get("store", True), "temperature": body.get("temperature"),
            "text": {"format": fmt or {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": body.get("top_p"), "truncation": "disabled",
            "usage": usage, "user": body.get("user"), "metadata": body.get("metadata") or {}}


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat answer's message as Responses output items."""
    items: list[dict[str, Any]] = []
    thought = reasoning(message)
    if isinstance(thought, str) and thought:
        items.append({"type": "reasoning", "id": new_id("rs"), "summary": [],
                      "content": [{"type": "reasoning_text", "text": thought}]})
    text = message.get("content")
    if isinstance(text, str) and text:
        items.append({"type": "message", "id": new_id("msg"), "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        items.append({"type": "function_call", "id": new_id("fc"), "call_id": call.get("id") or new_id("call"),
                      "name": fn.get("name", ""), "arguments": fn.get("arguments") or "{}", "status": "completed"})
    return items


def response_answer(body: dict[str, Any], answer: dict[str, Any], rid: str) -> dict[str, Any]:
    """The `response` for a whole chat answer."""
    choice = (answer.get("choices") or [{}])[0]
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return response_doc(body, rid, int(answer.get("created") or time.time()), status,
                        output_items(choice.get("message") or {}), usage_doc(answer.get("usage")))


def history_of(body: dict[str, Any], chat: dict[str, Any], output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation a later `previous_response_id` continues: this request's messages (without its
    instructions, which are not inherited) and its answer."""
    msgs = chat["messages"][1:] if body.get("instructions") is not None else list(chat["messages"])
    text = "".join(p["text"] for it in output if it["type"] == "message" for p in it["content"])
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it["type"] == "function_call"]
    if text or calls:
        answer: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            answer["tool_calls"] = calls
        msgs.append(answer)
    return msgs
