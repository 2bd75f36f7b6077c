"""Conformance, agent side (issue 12): tool calls and JSON-schema structured output, checked through the
gateway with the official `openai` client against every backend kind of tests/backends_under_test.py.

What each kind can show differs, and each case says which it is (MODES): a double that can be steered
makes real tool calls and gets the full round trip (calls -> results by tool_call_id -> follow-up); a
real server with a tiny random model cannot be made to call a tool, so its tools request must be
accepted and answered well-formed, history with tool results included; a kind whose capabilities
refuse a field gets a 400 `unsupported_parameter` before any backend sees the request.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.backends_under_test import BACKENDS, REAL, BackendUnderTest
from tests.procs import Spawner

PUBLIC = "conf-agent"
ASK: list[dict[str, Any]] = [{"role": "user", "content": "Weather and time in Paris?"}]
TOOLS: Any = [{"type": "function", "function": {"name": n, "description": d, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    for n, d in (("get_weather", "Weather in a city"), ("get_time", "Local time in a city"))]
PLANNED = [{"name": n, "arguments": {"city": "Paris"}} for n in ("get_weather", "get_time")]
RESULTS = {"get_weather": "sunny, 21 C", "get_time": "14:05"}
FINAL = "Sunny, 21 C, and it is 14:05."
# Bounded (enum, maxLength, integer range) so a random-weight model under a grammar ends well inside max_tokens.
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "sunny", "temp"],
           "properties": {"city": {"enum": ["Paris", "Rome"]}, "sunny": {"type": "boolean"},
                          "temp": {"type": "integer", "minimum": 0, "maximum": 40}}}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}

# How each backend shows tool calls:
#   parallel:  the double is steered (x_double) to make both calls in one turn
#   one-per-turn: TGI makes one call per turn (router chat.rs parse_output): two turns, then the answer
#   accepted:  no call can be forced here; the request (and a history with tool results) is answered well-formed.
#              The round trips these kinds can make are proven where their servers are set up for them:
#              tests/test_vllm_tool_choice.py (a vLLM with a tool parser, named and "required" choices),
#              tests/test_llamacpp_tool_choice.py (llama-server with a tool template),
#              tests/test_rwkv_tool_calls.py (the RWKV double replaying the real backend-python's calls).
#   refused:   the kind's capabilities say tools=False: 400 before any backend call
TOOL_MODE = {"vllm-double": "parallel", "openai-double": "parallel", "ollama-double": "parallel",
             "tgi-double": "one-per-turn", "rwkv-double": "accepted", "llamacpp": "accepted", "vllm": "accepted",
             "fastchat": "refused"}
# The knob each steerable double reads: tests/doubles/openai_extras.py, tests/doubles/ollama (x_double.tool_call).
CALL_KNOB = {"vllm-double": "tool_calls", "openai-double": "tool_calls", "ollama-double": "tool_call"}
# Structured output: "valid" = the answer must parse and validate against the schema; "refused" = 400.
SCHEMA_MODE = {b: "valid" for b in BACKENDS} | {"rwkv-double": "refused", "fastchat": "refused"}
DOUBLES = {b for b in BACKENDS if b not in REAL}


class Agent:
    def __init__(self, but: BackendUnderTest, gw_url: str, v1: str) -> None:
        self.but, self.url = but, gw_url
        self.client = openai.OpenAI(base_url=v1, api_key="x", max_retries=0, timeout=120)

    def backend_requests(self) -> list[dict[str, Any]]:
        """What the double received (every double records bodies at GET /_requests)."""
        return httpx.get(self.but.url + "/_requests").json()

    def answered_by_backend(self) -> float:
        """Requests the gateway answered with this backend (llm_gateway_requests_total): refused ones are not."""
        text = httpx.get(self.url + "/metrics").text
        return sum(float(v) for v in re.findall(r'llm_gateway_requests_total\{[^}]*backend="under-test"[^}]*\} (\S+)',
                                                text))


def _params() -> list[Any]:
    return [pytest.param(b, marks=getattr(pytest.mark, b)) if b in REAL else b for b in BACKENDS]


@pytest.fixture(scope="module", params=_params())
def agent(request: pytest.FixtureRequest, module_spawn: Spawner) -> Agent:
    but: BackendUnderTest = request.getfixturevalue(f"backend_{request.param.replace('-', '_')}")
    gw = module_spawn.gateway({
        "backends": [{"name": "under-test", "kind": but.kind, "url": but.url}],
        "models": [{"name": PUBLIC, "backends": [{"backend": "under-test", "model": but.model}]}],
    })
    return Agent(but, gw.url, gw.v1)


def turn(a: Agent, messages: list[dict[str, Any]], stream: bool, **kw: Any) -> tuple[str | None, list[dict], str]:
    """One chat turn: (content, tool calls as OpenAI message dicts, finish_reason). Streamed, the deltas are
    merged by `index` as the SDK's accumulator and LangChain do, and each chunk is checked on the way."""
    if not stream:
        r = a.client.chat.completions.create(model=PUBLIC, messages=messages, **kw)  # type: ignore[arg-type]
        c = r.choices[0]
        calls = [{"id": t.id, "type": "function", "function": {"name": t.function.name,
                                                                "arguments": t.function.arguments}}
                 for t in c.message.tool_calls or []]
        return c.message.content, calls, str(c.finish_reason)
    slots: dict[int, dict] = {}
    text, finish, ids = "", None, set()
    for ch in a.client.chat.completions.create(model=PUBLIC, messages=messages, stream=True, **kw):  # type: ignore
        assert ch.object == "chat.completion.chunk"
        ids.add(ch.id)
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        text += d.content or ""
        for t in d.tool_calls or []:
            assert isinstance(t.index, int), t
            slot = slots.setdefault(t.index, {"id": None, "type": "function",
                                              "function": {"name": "", "arguments": ""}})
            slot["id"] = slot["id"] or t.id
            if t.function:
                slot["function"]["name"] += t.function.name or ""
                slot["function"]["arguments"] += t.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert len(ids) == 1 and all(ids), ids  # one stream, one id
    return text or None, [slots[i] for i in sorted(slots)], str(finish)


def well_formed(content: str | None, calls: list[dict], finish: str) -> None:
    assert finish in ("stop", "length", "tool_calls"), finish
    assert content is not None or calls
    for c in calls:  # a call a client can execute: id, name, JSON-object arguments
        assert c["id"] and c["function"]["name"] in RESULTS, c
        assert isinstance(json.loads(c["function"]["arguments"]), dict), c
    assert (finish == "tool_calls") == bool(calls) or finish == "length"


def assert_refused(a: Agent, field: str, stream: bool, **kw: Any) -> None:
    before_gw, before_up = a.answered_by_backend(), _double_count(a)
    with pytest.raises(openai.BadRequestError) as exc:
        a.client.chat.completions.create(model=PUBLIC, messages=ASK, stream=stream, max_tokens=8, **kw)
    body = exc.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert body["code"] == "unsupported_parameter" and field in body["message"], body
    assert "x-llm-gateway-backend" not in exc.value.response.headers  # decided before choosing a backend
    assert a.answered_by_backend() == before_gw and _double_count(a) == before_up


def _double_count(a: Agent) -> int | None:
    return len(a.backend_requests()) if a.but.name in DOUBLES else None


# -- tool calls ----------------------------------------------------------------------------------------------
def _tool_history(calls: list[dict]) -> list[dict[str, Any]]:
    """The conversation after the calls: one assistant message with them, the results by id (reversed:
    attribution must follow tool_call_id, not position)."""
    out: list[dict[str, Any]] = [*ASK, {"role": "assistant", "content": None, "tool_calls": calls}]
    out += [{"role": "tool", "tool_call_id": c["id"], "content": RESULTS[c["function"]["name"]]}
            for c in reversed(calls)]
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_calls(agent: Agent, stream: bool) -> None:
    mode, name = TOOL_MODE[agent.but.name], agent.but.name
    if mode == "refused":
        assert_refused(agent, "tools", stream, tools=TOOLS)
        return
    if mode == "parallel":
        content, calls, finish = turn(agent, ASK, stream, tools=TOOLS,
                                      extra_body={"x_double": {CALL_KNOB[name]: PLANNED}})
        well_formed(content, calls, finish)
        assert finish == "tool_calls" and not content
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
            [(p["name"], p["arguments"]) for p in PLANNED]
        assert len({c["id"] for c in calls}) == 2
        history = _tool_history(calls)
        content, more, finish = turn(agent, history, stream, tools=TOOLS, extra_body={"x_double": {"text": FINAL}})
        assert (content, more, finish) == (FINAL, [], "stop")
    elif mode == "one-per-turn":
        calls = []
        for planned in PLANNED:
            content, got, finish = turn(agent, ASK, stream, tools=TOOLS,
                                        extra_body={"x_double": {"tool": planned["name"]}})
            well_formed(content, got, finish)
            assert finish == "tool_calls" and content is None and len(got) == 1
            assert (got[0]["function"]["name"], json.loads(got[0]["function"]["arguments"])) == \
                (planned["name"], planned["arguments"])
            calls += got
        # TGI numbers non-stream ids "0" each turn (chat.rs:49): make them unique as a client's history would be
        calls = [{**c, "id": f"{c['id']}-{i}"} for i, c in enumerate(calls)]
        history = _tool_history(calls)
        content, more, finish = turn(agent, history, stream, tools=TOOLS, extra_body={"x_double": {"tool": "no_tool"}})
        assert content and not more and finish == "stop"
    else:  # accepted: no call can be forced (tiny random model, or a double without a call path)
        content, calls, finish = turn(agent, ASK, stream, tools=TOOLS, max_tokens=16, **_accepted_extra(name))
        well_formed(content, calls, finish)
        # what a client sends back after the calls another model made: both calls, both results
        calls = [{"id": f"call_{i}", "type": "function",
                  "function": {"name": p["name"], "arguments": json.dumps(p["arguments"])}}
                 for i, p in enumerate(PLANNED)]
        history = _tool_history(calls)
        content, _, finish = turn(agent, history, stream, tools=TOOLS, max_tokens=16, **_accepted_extra(name))
        assert finish in ("stop", "length") and isinstance(content, str)
    assert agent.answered_by_backend() > 0  # the counter assert_refused relies on does count this backend
    if name in DOUBLES:  # the history reached the backend with its ids and results intact
        got = agent.backend_requests()[-1]["body"]["messages"]
        assert [tc["id"] for tc in got[1]["tool_calls"]] == [c["id"] for c in calls]
        assert [(m.get("tool_call_id"), m["content"]) for m in got[2:]] == \
            [(c["id"], RESULTS[c["function"]["name"]]) for c in reversed(calls)]


def _accepted_extra(name: str) -> dict[str, Any]:
    # The session's vLLM runs without --enable-auto-tool-choice/--tool-call-parser: it answers 400 to the
    # default tool_choice "auto" (and to "required"/named, checked below), so tools go with "none" there.
    return {"tool_choice": "none"} if name == "vllm" else {}


@pytest.mark.vllm
def test_real_vllm_without_a_tool_parser_relays_its_400(backend_vllm: BackendUnderTest, module_spawn: Spawner) -> None:
    gw = module_spawn.gateway({"backends": [{"name": "under-test", "kind": "vllm", "url": backend_vllm.url}],
                               "models": [{"name": PUBLIC, "backends": [{"backend": "under-test",
                                                                        "model": backend_vllm.model}]}]})
    a = Agent(backend_vllm, gw.url, gw.v1)
    with pytest.raises(openai.BadRequestError) as exc:  # vLLM's own refusal, as an OpenAI envelope, not a 502
        a.client.chat.completions.create(model=PUBLIC, messages=ASK, tools=TOOLS, max_tokens=8)  # type: ignore
    assert "tool" in str(exc.value.body)


# -- structured output ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llamacpp_no_jinja(llama_binary: Any, tiny_gguf: Any, module_spawn: Spawner) -> BackendUnderTest:
    """llama-server's JSON-schema grammar on the Jinja path is prefilled with the generation prompt, which the
    tiny test vocabulary tokenises in a way the grammar rejects ("Failed to initialize samplers", a 400; real
    vocabularies do not, see test_llamacpp_fidelity.schema_gw): structured output runs on a --no-jinja twin."""
    from tests.backends.llamacpp import server_args, wait_ready
    from tests.procs import free_port
    port = free_port()
    p = module_spawn.proc(server_args(llama_binary, tiny_gguf, port, alias="tiny-llama", ctx=256, parallel=1,
                                      extra=["--no-jinja"]), "llama-server-schema")
    url = f"http://127.0.0.1:{port}"
    wait_ready(p, url, timeout=60)
    return BackendUnderTest("llamacpp", "llamacpp", url, "tiny-llama")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_structured_output(agent: Agent, stream: bool, request: pytest.FixtureRequest,
                                       module_spawn: Spawner) -> None:
    a = agent
    if SCHEMA_MODE[a.but.name] == "refused":
        assert_refused(a, "response_format", stream, response_format=FORMAT)
        assert_refused(a, "response_format", stream, response_format={"type": "json_object"})
        return
    if a.but.name == "llamacpp":
        but = request.getfixturevalue("llamacpp_no_jinja")
        gw = module_spawn.gateway({"backends": [{"name": "under-test", "kind": but.kind, "url": but.url}],
                                   "models": [{"name": PUBLIC, "backends": [{"backend": "under-test",
                                                                            "model": but.model}]}]})
        a = Agent(but, gw.url, gw.v1)
    # a fixed seed: the real random-weight models then answer the same every run
    content, calls, finish = turn(a, [{"role": "user", "content": "Weather in Paris as JSON"}], stream,
                                  response_format=FORMAT, max_tokens=150, seed=7)
    assert finish == "stop" and not calls, (finish, content)
    jsonschema.validate(json.loads(content or ""), WEATHER)
    if a.but.name in ("vllm-double", "openai-double"):  # OpenAI's shape goes through untouched
        assert a.backend_requests()[-1]["body"]["response_format"] == FORMAT
