"""One assistant turn through the official openai client, for the agent-style tool-call tests."""

from __future__ import annotations

from typing import Any

import openai


def assistant_turn(client: openai.OpenAI, model: str, tools: list[dict], messages: list[dict], stream: bool,
                   **kw: Any) -> tuple[str | None, list[dict], str | None]:
    """(content, tool calls as OpenAI message dicts, finish_reason) of one turn, streamed or not.
    Streamed, the tool-call deltas are merged by `index`, as the SDK's accumulator and LangChain do."""
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, tools=tools, **kw)  # type: ignore
        m = r.choices[0].message
        return m.content, [tc.model_dump(include={"id", "type", "function"}) for tc in m.tool_calls or []], \
            r.choices[0].finish_reason
    calls: dict[int, dict] = {}
    text, finish = "", None
    for c in client.chat.completions.create(model=model, messages=messages, tools=tools, stream=True,  # type: ignore
                                            **kw):
        if not c.choices:
            continue
        d = c.choices[0].delta
        text += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "type": "function",
                                               "function": {"name": "", "arguments": ""}})
            slot["id"] = slot["id"] or tc.id
            if tc.function:
                slot["function"]["name"] += tc.function.name or ""
                slot["function"]["arguments"] += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    return text or None, [calls[i] for i in sorted(calls)], finish
