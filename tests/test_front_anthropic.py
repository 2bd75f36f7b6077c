"""The Anthropic Messages front (gateway/fronts/anthropic.py) with Anthropic's official Python client, in front
of a real llama-server, the vLLM-format double and the TGI double: messages.create, messages.stream (the
typed events, accumulated by the SDK), a tool use round trip, stop sequences, errors in Anthropic's shape, and
the SDK's x-api-key against a keyed gateway."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.procs import Double, Gateway, Spawner

KEY = "anthropic-front-key-0123456789"
TOOLS = [{"name": "get_weather", "description": "Weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def front(fronts_gateway: dict[str, Any]) -> dict[str, Any]:
    return fronts_gateway


@pytest.fixture
def client() -> Iterator[Callable[..., anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []

    def make(gw: Gateway, key: str = "unused-without-keys") -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=60))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.mark.parametrize("kind", ["llamacpp", "vllm", "tgi"])
def test_create_and_stream(front: dict[str, Any], kind: str, client: Callable[..., anthropic.Anthropic]) -> None:
    model = front["models"][kind]
    c = client(front["gw"])
    # temperature as extra_body: this SDK no longer offers sampling fields; the gateway still maps them
    ask: dict[str, Any] = {"model": model, "max_tokens": 8, "system": "Be brief.", "extra_body": {"temperature": 0},
                           "messages": [{"role": "user", "content": "Say hello"}]}
    msg = c.messages.create(**ask)
    assert msg.type == "message" and msg.role == "assistant" and msg.model == model
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.usage.output_tokens > 0
    assert msg.usage.input_tokens > 0
    with c.messages.stream(**ask) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_delta" in kinds and "content_block_stop" in kinds
    # greedy: the streamed deltas add up to the one answer, with the same end and counts
    assert final.content[0].text == msg.content[0].text
    assert (final.stop_reason, final.usage.output_tokens) == (msg.stop_reason, msg.usage.output_tokens)


def test_what_the_backend_receives(front: dict[str, Any], client: Callable[..., anthropic.Anthropic]) -> None:
    c = client(front["gw"])
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    c.messages.create(model="m-vllm", max_tokens=5, stop_sequences=["END"], extra_body={"top_k": 3},
                      system=[{"type": "text", "text": "Sys."}], metadata={"user_id": "u-1"},
                      output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "max"},
                      service_tier="auto", inference_geo="eu",  # platform settings: dropped
                      messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}])
    sent = front["vllm"].requests()[-1]["body"]
    assert sent["messages"] == [{"role": "system", "content": "Sys."}, {"role": "user", "content": "ab"}]
    assert (sent["max_tokens"], sent["stop"], sent["top_k"], sent["user"]) == (5, ["END"], 3, "u-1")
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert sent["reasoning_effort"] == "high" and not {"service_tier", "inference_geo"} & set(sent)
    msg = c.messages.create(model="m-vllm", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_use_round_trip(front: dict[str, Any], stream: bool,
                               client: Callable[..., anthropic.Anthropic]) -> None:
    vllm: Double = front["vllm"]
    c = client(front["gw"])
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    ask: dict[str, Any] = {"model": "m-vllm", "max_tokens": 50, "tools": TOOLS, "messages": messages,
                           "tool_choice": {"type": "any"},
                           "extra_body": {"x_double": {"tool_calls": [{"name": "get_weather",
                                                                       "arguments": {"city": "Paris"}}]}}}
    if stream:
        with c.messages.stream(**ask) as s:
            msg = s.get_final_message()
    else:
        msg = c.messages.create(**ask)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and len(uses) == 1
    assert uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}
    sent = vllm.requests()[-1]["body"]
    assert sent["tool_choice"] == "required" and sent["tools"][0]["function"]["parameters"] == TOOLS[0][
        "input_schema"]
    messages += [{"role": "assistant", "content": [u.model_dump() for u in uses]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                               "content": "18 C, clear"}, {"type": "text", "text": "Thanks"}]}]
    answer = c.messages.create(model="m-vllm", max_tokens=20, tools=TOOLS, messages=messages)
    assert answer.content[0].text
    turn = vllm.requests()[-1]["body"]["messages"]
    assert turn[1]["tool_calls"][0]["id"] == uses[0].id
    assert json.loads(turn[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # the result first (it must follow the call), then the rest of the user's turn
    assert turn[2] == {"role": "tool", "tool_call_id": uses[0].id, "content": "18 C, clear"}
    assert turn[3] == {"role": "user", "content": "Thanks"}


def test_errors_in_anthropics_shape(front: dict[str, Any], client: Callable[..., anthropic.Anthropic]) -> None:
    c = client(front["gw"])
    with pytest.raises(anthropic.NotFoundError) as nf:
        c.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert nf.value.body["error"]["type"] == "not_found_error" and "no-such-model" in str(nf.value)
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(model="m-vllm", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                          tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": bad.value.body["error"]["message"]}}
    assert "web_search" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as missing:  # Anthropic requires max_tokens
        c.post("/v1/messages", cast_to=object, body={"model": "m-vllm", "messages": []})
    assert "max_tokens" in str(missing.value)


def test_the_sdks_x_api_key_against_a_keyed_gateway(spawn: Spawner,
                                                     client: Callable[..., anthropic.Anthropic]) -> None:
    dbl = spawn.double("anth-keyed", "m-keyed")
    gw = spawn.gateway({"auth": {"keys": [{"name": "ann", "key": KEY}]},
                        "backends": [{"name": "d", "kind": "openai", "url": dbl.url}]})
    ask = {"model": "m-keyed", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(gw, "wrong-key-0123456789abcdef").messages.create(**ask)
    assert e.value.body["error"]["type"] == "authentication_error"
    assert client(gw, KEY).messages.create(**ask).content[0].text  # sent as x-api-key by the SDK
    assert KEY not in gw.proc.output()


def test_metrics_name_the_front(front: dict[str, Any], client: Callable[..., anthropic.Anthropic]) -> None:
    client(front["gw"]).messages.create(model="m-vllm", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(front["gw"].url + "/metrics").text
    assert ('llm_gateway_requests_total{backend="vllm",endpoint="anthropic.messages",model="m-vllm",status="200"}'
            in text)
