"""Forced tool calls on the REAL llama-server through the gateway (issue 12): tool_choice "required" and a
named function, with the official `openai` client, whole and streamed.

What llama.cpp 0c1e57098 does, and what this module needs for it (its source, tools/server and common/):
- Tools need `--jinja` and a chat template that renders tool calls: the differential autoparser
  (common/chat-auto-parser-generator.cpp) derives the call syntax from the template and builds the grammar
  only then. The session's tiny ChatML template has none, so "required" there is plain text. This module
  serves a Hermes/Qwen2.5-style template (HERMES below; the call written `<tool_call>{...}</tool_call>`).
- The grammar is prefilled with the generation prompt (common/sampling.cpp common_sampler_init); the
  tiny SentencePiece vocabulary tokenises "<|im_start|>assistant\\n" with a "▁" before "as", which the
  grammar rejects ("Failed to initialize samplers", a 400): the model is written with add_space_prefix off.
  The tools preamble is ~640 tokens: a 2048-token context.
- "required" does not make the call start at once: the JSON_NATIVE grammar is `content-until("<tool_call>")?
  tool-calls` (build_tool_parser_json_native), so a random-weight model writes text until max_tokens and
  never calls. And `parallel_tool_calls: false` is not honoured there (`one_or_more(single_tool_parser)`).
  So the request steers the random model the way training steers a real one: logit_bias favours the
  `<tool_call>` token (a user-defined token, as in Qwen2.5) and, more, `<|im_end|>`. The grammar masks
  `<|im_end|>` until a call is complete, masks `<tool_call>` inside it, and the call itself (name, argument
  JSON against the schema) is the grammar's and llama-server's parser's work, not the test's.
- A named tool_choice (an object) is read as a string and silently falls back to "auto"
  (server-common.cpp `json_value(body, "tool_choice", std::string("auto"))`, ggml-org/llama.cpp#26535):
  the adapter sends it as "required" with `tools` narrowed to that function (adapters/llamacpp.py).

finish_reason is llama-server's: "tool_calls" for a call, named or not (vLLM says "stop" for a named one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner
from tests.test_conformance_agents import ASK, PUBLIC, Agent, turn

pytestmark = pytest.mark.llamacpp

HERMES = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n\\nYou may call one or more functions to assist with the "
    "user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SCHEMAS = {n: {"type": "object", "additionalProperties": False, "required": ["city"],
               "properties": {"city": {"enum": ["Paris", "Rome"]}}} for n in ("get_weather", "get_time")}
TOOLS: Any = [{"type": "function", "function": {"name": n, "description": f"{n} in a city", "strict": True,
                                                "parameters": s}} for n, s in SCHEMAS.items()]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def llama_tools(llama_binary: Path, tmp_path_factory: pytest.TempPathFactory,
                module_spawn: Spawner) -> Iterator[BackendUnderTest]:
    from tests.backends.llamacpp import server_args, wait_ready, write_tiny_gguf
    from tests.procs import free_port
    d = tmp_path_factory.mktemp("llama-tools")
    model = write_tiny_gguf(d / "tiny-tools.gguf", n_ctx_train=2048, extra_tokens=("<tool_call>", "</tool_call>"),
                            add_space_prefix=False)
    (d / "hermes.jinja").write_text(HERMES)
    port = free_port()
    p = module_spawn.proc(server_args(llama_binary, model, port, alias=PUBLIC, ctx=2048, parallel=1, threads=1,
                                      extra=["--jinja", "--chat-template-file", str(d / "hermes.jinja")]),
                          "llama-server-tools")
    url = f"http://127.0.0.1:{port}"
    wait_ready(p, url, timeout=60)
    yield BackendUnderTest("llamacpp", "llamacpp", url, PUBLIC)


@pytest.fixture(scope="module")
def agents(llama_tools: BackendUnderTest, module_spawn: Spawner) -> tuple[Agent, Agent]:
    """(through the gateway, straight to llama-server): served as PUBLIC, so turn() talks to both."""
    gw = module_spawn.gateway({"backends": [{"name": "under-test", "kind": "llamacpp", "url": llama_tools.url}],
                               "models": [{"name": PUBLIC, "backends": [{"backend": "under-test",
                                                                        "model": llama_tools.model}]}]})
    return Agent(llama_tools, gw.url, gw.v1), Agent(llama_tools, llama_tools.url, llama_tools.url + "/v1")


@pytest.fixture(scope="module")
def steer(llama_tools: BackendUnderTest) -> dict[str, Any]:
    """Greedy, with the call opener favoured and the end of turn favoured more (see the module docstring)."""
    def token(text: str) -> int:
        r = httpx.post(llama_tools.url + "/tokenize", json={"content": text, "parse_special": True}).json()
        assert len(r["tokens"]) == 1, r
        return int(r["tokens"][0])
    return {"temperature": 0, "max_tokens": 120,
            "logit_bias": {str(token("<tool_call>")): 100, str(token("<|im_end|>")): 200}}


def _without_ids(calls: list[dict]) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def _one_valid_call(content: str | None, calls: list[dict], finish: str, name: str | None = None) -> dict:
    assert finish == "tool_calls" and not content and len(calls) == 1, (content, calls, finish)
    call = calls[0]
    assert call["id"] and call["type"] == "function" and call["function"]["name"] in SCHEMAS, call
    assert name is None or call["function"]["name"] == name, call
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
    return call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_required_tool_call_round_trip(agents: tuple[Agent, Agent], steer: dict[str, Any], stream: bool) -> None:
    via_gw, direct = agents
    kw = {"tools": TOOLS, "tool_choice": "required", **steer}
    content, calls, finish = turn(via_gw, ASK, stream, **kw)  # type: ignore[arg-type]
    call = _one_valid_call(content, calls, finish)
    # llama-server's own answer to the same greedy request: the gateway adds, drops and renames nothing
    d_content, d_calls, d_finish = turn(direct, ASK, stream, **kw)  # type: ignore[arg-type]
    assert (d_content, _without_ids(d_calls), d_finish) == (content, _without_ids(calls), finish)
    # the loop goes on: the result by tool_call_id, the model answers (tools offered, not forced)
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "tool_call_id": call["id"], "content": "14:05"}]
    content, more, finish = turn(via_gw, history, stream, tools=TOOLS, max_tokens=16, temperature=0)
    assert isinstance(content, str) and content and not more and finish == "length", (content, more, finish)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_named_tool_choice_is_honoured(agents: tuple[Agent, Agent], steer: dict[str, Any], stream: bool) -> None:
    via_gw, direct = agents
    content, calls, finish = turn(via_gw, ASK, stream, tools=TOOLS, tool_choice=NAMED, **steer)
    _one_valid_call(content, calls, finish, name="get_weather")
    # why the adapter rewrites it: sent as is, llama-server runs the request as "auto" (ggml-org/llama.cpp#26535),
    # nothing forces a call, and this model ends its turn without one: a 200 that ignored the demand
    d_content, d_calls, d_finish = turn(direct, ASK, stream, tools=TOOLS, tool_choice=NAMED, **steer)
    assert (d_content or "", d_calls, d_finish) == ("", [], "stop")


def test_sdk_stream_accumulator_gets_one_parsed_call(agents: tuple[Agent, Agent], steer: dict[str, Any]) -> None:
    via_gw, _ = agents
    with via_gw.client.chat.completions.stream(model=PUBLIC, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                               tool_choice=NAMED, **steer) as s:
        final = s.get_final_completion()
    c = final.choices[0]
    assert c.finish_reason == "tool_calls" and not c.message.content
    assert c.message.tool_calls and len(c.message.tool_calls) == 1
    tc = c.message.tool_calls[0]
    assert tc.id and tc.function.name == "get_weather"
    jsonschema.validate(tc.function.parsed_arguments, SCHEMAS["get_weather"])
    assert tc.function.parsed_arguments == json.loads(tc.function.arguments)


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "nope"}},
                                    {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}],
                         ids=["not-in-tools", "other-type"])
def test_named_tool_choice_it_cannot_honour_is_a_400(agents: tuple[Agent, Agent], choice: dict[str, Any]) -> None:
    """Not a 200 from a request llama-server would have run as "auto": a 400 naming the field, decided
    before any backend is called."""
    via_gw, _ = agents
    before = _predicted(via_gw)
    with pytest.raises(openai.BadRequestError) as exc:
        via_gw.client.chat.completions.create(model=PUBLIC, messages=ASK, tools=TOOLS, tool_choice=choice,  # type: ignore
                                              max_tokens=8)
    body = exc.value.body
    assert isinstance(body, dict) and body["param"] == "tool_choice", body
    assert "x-llm-gateway-backend" not in exc.value.response.headers
    assert _predicted(via_gw) == before  # llama-server generated nothing for it


def _predicted(a: Agent) -> float:
    """llama-server's own count of generated tokens (its /metrics, on with --metrics)."""
    text = httpx.get(a.but.url + "/metrics").text
    return float(re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
