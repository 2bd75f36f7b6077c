"""TGI protocol fidelity (issue 12, audit defects 8-10) and agent-style round trips through the gateway,
with the official openai client against the TGI double (tests/doubles/tgi/: a port of TGI 3.3.x's
router, db931fcf)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.agent_turns import assistant_turn
from tests.procs import Double, Gateway, Spawner

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "Who is in Paris, and how old?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]


@pytest.fixture(scope="module")
def tgi(module_spawn: Spawner) -> tuple[Double, Gateway, openai.OpenAI]:
    t = module_spawn.start_double("tgi_server", "/health", "--model-id", MODEL, "--max-input-tokens", "1000",
                                  "--max-total-tokens", "2048", name="tgi-fidelity")
    gw = module_spawn.gateway({"backends": [{"name": "t", "kind": "tgi", "url": t.url}]})
    return t, gw, openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)


def sent(t: Double) -> dict[str, Any]:
    return t.requests()[-1]["body"]


def streamed_text(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


# -- defect 8: response_format in TGI's adjacently tagged GrammarType -------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_structured_output_is_translated(tgi: tuple[Double, Gateway, openai.OpenAI],
                                                      stream: bool) -> None:
    t, _, client = tgi
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    if stream:
        text = streamed_text(client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=fmt,
                                                            stream=True))
    else:
        text = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=fmt)\
            .choices[0].message.content
    # TGI (lib.rs:236-258) reads {"type": "json", "value": <schema>}; OpenAI's shape is a 422 there
    assert sent(t)["response_format"] == {"type": "json", "value": PERSON}
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_with_a_schema_and_tgi_native_grammars(tgi: tuple[Double, Gateway, openai.OpenAI]) -> None:
    t, _, client = tgi
    # the `schema` extension of json_object (llama.cpp, vLLM) carries a schema TGI can use
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                       response_format={"type": "json_object", "schema": PERSON})  # type: ignore
    assert sent(t)["response_format"] == {"type": "json", "value": PERSON}
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)
    # a client that already speaks TGI's dialect is left alone
    native = {"type": "json_schema", "value": {"name": "person", "schema": PERSON}}
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=native)  # type: ignore
    assert sent(t)["response_format"] == native
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


def test_json_mode_without_a_schema_is_a_400_before_tgi(tgi: tuple[Double, Gateway, openai.OpenAI]) -> None:
    t, _, client = tgi
    before = len(t.requests())
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={"type": "json_object"})
    assert exc.value.body["param"] == "response_format"  # type: ignore[index]
    assert "schema" in exc.value.message
    assert len(t.requests()) == before  # refused by the gateway: TGI was not asked


def test_schema_tgi_cannot_compile_is_a_400_stream_or_not(tgi: tuple[Double, Gateway, openai.OpenAI]) -> None:
    _, _, client = tgi
    fmt = {"type": "json_schema", "json_schema": {"name": "any", "schema": {"type": "object"}}}
    for stream in (False, True):  # the stream's in-band validation error is peeked: still a 400
        with pytest.raises(openai.BadRequestError) as exc:
            r = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=fmt, stream=stream)
            list(r) if stream else None  # type: ignore[call-overload]
        assert "properties" in exc.value.message


# -- defect 9: tool-call answers say finish_reason "tool_calls" --------------------------------------
def test_tool_call_finish_reason_non_stream(tgi: tuple[Double, Gateway, openai.OpenAI]) -> None:
    _, _, client = tgi
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)  # type: ignore[arg-type]
    choice = r.choices[0]
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"
    assert choice.finish_reason == "tool_calls"
    # an answer without a call keeps "stop"
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,  # type: ignore[arg-type]
                                       extra_body={"x_double": {"tool": "no_tool"}})
    assert r.choices[0].message.content and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("usage", [False, True])
def test_tool_call_finish_reason_stream(tgi: tuple[Double, Gateway, openai.OpenAI], usage: bool) -> None:
    _, _, client = tgi
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if usage else {}
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,  # type: ignore
                                                 stream=True, **extra))
    # TGI's ChatState (chat.rs:186-236) sends no chunk at all for the EOS after the call's closing
    # brace: its stream has no finish_reason; the gateway supplies the OpenAI finish chunk.
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert len({c.id for c in chunks}) == 1
    if usage:  # OpenAI's order: the finish chunk, then the usage chunk
        assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
        assert chunks[-2].choices[0].finish_reason == "tool_calls"
    else:
        assert all(c.usage is None for c in chunks)


# -- defect 10: in-band errors always say http_status_code 422 ---------------------------------------
@pytest.mark.parametrize("ctl", [{"fail_after": 2}, {"incomplete": 2}])
def test_mid_stream_failure_is_a_server_error(tgi: tuple[Double, Gateway, openai.OpenAI], ctl: dict) -> None:
    _, gw, _ = tgi
    # infer/mod.rs:445-454 into_openai_event: every in-band error says 422, a CUDA OOM included
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30, json={
            "model": MODEL, "messages": MESSAGES, "stream": True, "x_double": ctl}) as r:
        events = [ln[5:].strip() for ln in r.iter_lines() if ln.startswith("data")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error", err
    assert "Request failed during generation" in err["message"] or "Incomplete generation" in err["message"]


def test_in_band_validation_error_stays_a_client_error(tgi: tuple[Double, Gateway, openai.OpenAI]) -> None:
    _, gw, _ = tgi
    r = httpx.post(gw.v1 + "/chat/completions", timeout=30, json={
        "model": MODEL, "messages": MESSAGES, "stream": True, "response_format": {"type": "json", "value": {}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("Input validation error")


# -- agent loop: tools, results with tool_call_ids, follow-up answer -----------------------------
def run_turn(client: openai.OpenAI, messages: list[dict], stream: bool, **kw: Any) -> tuple[Any, list[dict], Any]:
    """One assistant turn with this module's TOOLS (tests/agent_turns.py)."""
    return assistant_turn(client, MODEL, TOOLS, messages, stream, **kw)


@pytest.mark.parametrize("stream", [False, True])
def test_agent_tool_round_trip(tgi: tuple[Double, Gateway, openai.OpenAI], stream: bool) -> None:
    """TGI makes one call per turn (chat.rs:47-61 parse_output builds a one-element vec), so the two
    calls come in two turns; the conversation sent back then carries both calls and both results."""
    t, _, client = tgi
    messages: list[dict] = [{"role": "user", "content": "Weather and time in Paris?"}]
    results = {"get_weather": "sunny, 21 C", "get_time": "14:05"}
    for name in ("get_weather", "get_time"):
        content, calls, finish = run_turn(client, messages, stream, extra_body={"x_double": {"tool": name}})
        assert finish == "tool_calls" and content is None and len(calls) == 1
        call = calls[0]
        assert call["function"]["name"] == name and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": results[name]})
    # streamed call ids count up over the conversation (lib.rs:1040-1058 next_tool_call_id); a
    # non-stream answer's id is always "0" (chat.rs:49)
    ids = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert ids == (["0", "1"] if stream else ["0", "0"])
    # parallel-call history (as another backend of the pool would produce it): one assistant message
    # with both calls, then both results
    history = [messages[0], {"role": "assistant", "content": None,
                             "tool_calls": [messages[1]["tool_calls"][0], messages[3]["tool_calls"][0]]},
               messages[2], messages[4]]
    content, calls, finish = run_turn(client, history, stream, extra_body={"x_double": {"tool": "no_tool"}})
    assert content and not calls and finish == "stop"
    got = sent(t)["messages"]
    assert [m.get("tool_call_id") for m in got if m["role"] == "tool"] == ids
    assert [tc["function"]["name"] for tc in got[1]["tool_calls"]] == ["get_weather", "get_time"]


def test_json_mode_in_a_mixed_pool_goes_to_the_backend_that_has_it(module_spawn: Spawner) -> None:
    """A pool of TGI and vLLM: JSON mode without a schema is routed to vLLM every time (TGI would
    refuse it), while a schema-carrying request may still go to either."""
    t = module_spawn.start_double("tgi_server", "/health", "--model-id", MODEL, name="tgi-mixed")
    v = module_spawn.double("vllm-mixed", MODEL)
    gw = module_spawn.gateway({"backends": [{"name": "t", "kind": "tgi", "url": t.url},
                                            {"name": "v", "kind": "vllm", "url": v.url}]})
    with openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0) as client:
        served = {client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}).headers["x-llm-gateway-backend"]
            for _ in range(8)}
        assert served == {"v"}
        assert not any("response_format" in r for r in t.requests())  # TGI never saw one
        schema = {"type": "json_object", "schema": PERSON}
        served = {client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, response_format=schema).headers["x-llm-gateway-backend"]  # type: ignore
            for _ in range(8)}
        assert served == {"t", "v"}  # both can: the least busy one, in turn
