"""Run in the framework clients' own virtualenv (tests/backends/frameworks_env.py) by
tests/test_framework_clients.py: talks to the gateway at BASE_URL as each framework would, and prints what it
got as one JSON object.

    python tests/framework_clients_run.py BASE_URL MODEL [TOOLS_EXTRA_BODY_JSON]
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> None:
    import langchain_openai
    import litellm
    from langchain_core.messages import HumanMessage, SystemMessage
    from llama_index.core.llms import ChatMessage
    from llama_index.llms import openai_like

    base, model = sys.argv[1], sys.argv[2]
    out: dict[str, Any] = {}
    llm = langchain_openai.ChatOpenAI(model=model, base_url=base, api_key="x", max_tokens=8, temperature=0,
                                      max_retries=0, timeout=60)
    ask = [SystemMessage("Be brief."), HumanMessage("Say hello")]
    answer = llm.invoke(ask)
    chunks = list(llm.stream(ask))
    out["langchain"] = {"text": answer.content, "usage": answer.usage_metadata,
                        "streamed": "".join(str(c.content) for c in chunks), "chunks": len(chunks)}
    if len(sys.argv) > 3:
        tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string"}}, "required": ["city"]}}}
        bound = langchain_openai.ChatOpenAI(model=model, base_url=base, api_key="x", max_retries=0, timeout=60,
                                            extra_body=json.loads(sys.argv[3])).bind_tools([tool],
                                                                                          tool_choice="required")
        msg = bound.invoke("Weather in Paris?")
        pieces = list(bound.stream("Weather in Paris?"))
        merged = pieces[0]
        for p in pieces[1:]:
            merged = merged + p
        out["langchain_tools"] = {"invoke": [(t["name"], t["args"]) for t in msg.tool_calls],
                                  "stream": [(t["name"], t["args"]) for t in merged.tool_calls]}
    li = openai_like.OpenAILike(model=model, api_base=base, api_key="x", is_chat_model=True, max_tokens=8,
                                temperature=0, max_retries=0, timeout=60)
    msgs = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Say hello")]
    last = None
    for piece in li.stream_chat(msgs):  # each carries the message so far
        last = piece
    out["llamaindex"] = {"text": li.chat(msgs).message.content, "streamed": last.message.content if last else None,
                         "complete": li.complete("Say hello").text}
    args: dict[str, Any] = {"model": "openai/" + model, "api_base": base, "api_key": "x", "max_tokens": 8,
                            "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0,
                            "num_retries": 0, "timeout": 60}
    r = litellm.completion(**args)
    streamed = "".join(c.choices[0].delta.content or "" for c in litellm.completion(**args, stream=True)
                       if c.choices)
    out["litellm"] = {"text": r.choices[0].message.content, "completion_tokens": r.usage.completion_tokens,
                      "streamed": streamed}
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
