"""The Responses API translated onto chat completions (gateway/fronts/responses.py) for backends without a
`POST /v1/responses` of their own, with the official `openai` client: responses.create plain and streamed
(the typed events, and the SDK's own accumulation in responses.stream) against the TGI double, real FastChat
(a controller and two model workers) and a vLLM-format double whose capability is
turned off (it records what it receives); a tool round trip, previous_response_id, structured output,
refusals, and the metrics label. The pass-through to servers that have the route (the real llama-server,
vLLM) is tests/test_responses_passthrough.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Double, Spawner

pytestmark = pytest.mark.fastchat  # a real FastChat controller and workers serve one of the models

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CALL = {"x_double": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}}


@pytest.fixture(scope="module")
def stack(module_spawn: Spawner, backend_tgi_double: BackendUnderTest,
          backend_fastchat: BackendUnderTest) -> Iterator[dict[str, Any]]:
    off = module_spawn.double("resp-chat-only", "chat-only")
    gw = module_spawn.gateway({"backends": [
        {"name": "tgi", "kind": "tgi", "url": backend_tgi_double.url},
        {"name": "fc", "kind": "fastchat", "url": backend_fastchat.url},
        # a vLLM build without the route: the operator turned the capability off, so it is translated
        {"name": "chat-only", "kind": "vllm", "url": off.url, "capabilities": {"responses": False}}]})
    yield {"gw": gw, "off": off,
           "models": {"tgi": backend_tgi_double.model, "fastchat": backend_fastchat.model, "vllm": "chat-only"}}


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack["gw"].v1, api_key="x", max_retries=0, timeout=60) as c:
        yield c


def sent(off: Double) -> dict[str, Any]:
    return off.requests()[-1]["body"]


@pytest.mark.parametrize("kind", ["tgi", "fastchat", "vllm"])
def test_create_and_stream(stack: dict[str, Any], client: openai.OpenAI, kind: str) -> None:
    model = stack["models"][kind]
    r = client.responses.create(model=model, input="Say hello", instructions="Be brief.", max_output_tokens=8,
                                temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == model
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage is not None and r.usage.output_tokens > 0 and r.usage.total_tokens == (
        r.usage.input_tokens + r.usage.output_tokens)
    events = list(client.responses.create(model=model, input="Say hello", instructions="Be brief.",
                                          max_output_tokens=8, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
    order = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert [k for k in kinds if k in order] == sorted((k for k in kinds if k in order), key=order.index), kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas and final.output_text == deltas and final.usage.output_tokens > 0
    # the SDK's own accumulation of the events (its stream helper) gives the same answer; its
    # get_final_response() exists for `response.completed` only, as against OpenAI itself
    with client.responses.stream(model=model, input="Say hello", instructions="Be brief.", max_output_tokens=8,
                                 temperature=0) as s:
        seen = list(s)
        if seen[-1].type == "response.completed":
            assert s.get_final_response().output_text == deltas
    assert seen[-1].type == kinds[-1] and seen[-1].response.output_text == deltas
    assert [e.text for e in seen if e.type == "response.output_text.done"] == [deltas]


def test_what_the_backend_receives(stack: dict[str, Any], client: openai.OpenAI) -> None:
    off = stack["off"]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    client.responses.create(
        model="chat-only", instructions="Sys.", max_output_tokens=7, temperature=0.5, top_p=0.9,
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
        reasoning={"effort": "low"}, metadata={"team": "x"}, store=False, safety_identifier="u-1",
        input=[{"role": "developer", "content": "Dev."},
               {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
               {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=",
                                             "detail": "low"}]}])
    body = sent(off)
    assert body["messages"] == [
        {"role": "system", "content": "Sys."}, {"role": "system", "content": "Dev."},
        {"role": "user", "content": "ab"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                                                         "detail": "low"}}]}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["user"]) == (7, 0.5, 0.9, "u-1")
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}}
    assert body["reasoning_effort"] == "low" and not {"metadata", "store", "text", "input"} & set(body)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(stack: dict[str, Any], client: openai.OpenAI, stream: bool) -> None:
    off = stack["off"]
    ask: dict[str, Any] = {"model": "chat-only", "input": "Weather in Paris?", "tools": TOOLS,
                           "tool_choice": "required", "extra_body": CALL}
    if stream:
        events = list(client.responses.create(**ask, stream=True))
        kinds = [e.type for e in events]
        assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
        r = events[-1].response
    else:
        r = client.responses.create(**ask)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    body = sent(off)
    assert body["tool_choice"] == "required"
    assert body["tools"][0] == {"type": "function", "function": {"name": "get_weather",
                                                                 "description": "Weather in a city",
                                                                 "parameters": TOOLS[0]["parameters"]}}
    answer = client.responses.create(model="chat-only", tools=TOOLS, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C, clear"}])
    assert answer.output_text
    turn = sent(off)["messages"]
    assert turn[1]["tool_calls"][0]["id"] == calls[0].call_id and turn[1]["role"] == "assistant"
    assert json.loads(turn[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert turn[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "18 C, clear"}


def test_previous_response_id_continues_a_stored_conversation(stack: dict[str, Any], client: openai.OpenAI) -> None:
    off = stack["off"]
    first = client.responses.create(model="chat-only", instructions="Old rules.", input="My name is Ada.",
                                    extra_body={"x_double": {"text": "Hello Ada"}})
    second = client.responses.create(model="chat-only", previous_response_id=first.id, instructions="New rules.",
                                     input="What is my name?")
    assert second.previous_response_id == first.id
    assert sent(off)["messages"] == [{"role": "system", "content": "New rules."},  # not inherited: replaced
                                     {"role": "user", "content": "My name is Ada."},
                                     {"role": "assistant", "content": "Hello Ada"},
                                     {"role": "user", "content": "What is my name?"}]
    streamed = list(client.responses.create(model="chat-only", previous_response_id=second.id, input="Again?",
                                            stream=True))[-1].response
    third = client.responses.create(model="chat-only", previous_response_id=streamed.id, input="Last.")
    assert third.output_text and len(sent(off)["messages"]) == 7  # 3 turns and their answers, then "Last."
    unstored = client.responses.create(model="chat-only", input="Forget me.", store=False)
    for missing in (unstored.id, "resp_unknown"):
        with pytest.raises(openai.BadRequestError) as exc:
            client.responses.create(model="chat-only", previous_response_id=missing, input="?")
        err: Any = exc.value.body
        assert err["code"] == "previous_response_not_found" and err["param"] == "previous_response_id", err


def test_refusals_name_what_cannot_be_translated(stack: dict[str, Any], client: openai.OpenAI) -> None:
    off = stack["off"]
    off.reset()
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"tools": [{"type": "web_search"}]}, "tools", "web_search"),
        ({"background": True}, "background", "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "item_reference"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input", "input_file"),
        ({"text": {"format": {"type": "json_schema"}}}, "text", "json_schema"),
    ]
    for extra, param, word in cases:
        r = httpx.post(stack["gw"].v1 + "/responses", json={"model": "chat-only", "input": "hi", **extra})
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert err["param"] == param and word in err["message"] and err["type"] == "invalid_request_error", err
    assert httpx.post(stack["gw"].v1 + "/responses", json={"model": "chat-only"}).json()["error"]["code"] == (
        "missing_required_parameter")
    assert off.requests() == []  # nothing reached the backend


def test_errors_keep_their_status(stack: dict[str, Any], client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.InternalServerError) as exc:
        client.responses.create(model="chat-only", input="hi", extra_body={"x_double": {"status": 500}})
    assert "chat-only" in str(exc.value.body)
    # a stream cut after it started ends in error + response.failed
    events = list(client.responses.create(model="chat-only", input="hi", stream=True,
                                          extra_body={"x_double": {"truncate": True, "chunks": 6}}))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]


def test_metrics_name_the_translated_path(stack: dict[str, Any], client: openai.OpenAI) -> None:
    client.responses.create(model="chat-only", input="hi")
    text = httpx.get(stack["gw"].url + "/metrics").text
    assert 'llm_gateway_requests_total{backend="chat-only",endpoint="responses.chat",model="chat-only",status="200"}' \
        in text
