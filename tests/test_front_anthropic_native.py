"""Anthropic's Messages API passed through (gateway/fronts/anthropic.py, Endpoint.MESSAGES) to the servers that
implement it: a real llama-server and a real vLLM (CPU). With Anthropic's official client: the answer is the
backend's own (the same as asking it directly), streamed event by event; usage is counted from the native
events; a forced tool use round trip; errors in Anthropic's shape, including llama-server's own error event and
a stream cut short (scripted in llama-server's exact bytes by the double); `capabilities: {messages: false}`
and kinds without the route are translated instead."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backends_under_test import BackendUnderTest
from tests.procs import Gateway, Spawner

pytestmark = [pytest.mark.llamacpp, pytest.mark.vllm]

TOOLS = [{"name": "get_weather", "description": "Weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def native(module_spawn: Spawner, backend_llamacpp: BackendUnderTest, backend_vllm: BackendUnderTest,
           backend_tgi_double: BackendUnderTest) -> dict[str, Any]:
    scripted = module_spawn.double("anth-scripted", "m-scripted", "--lenient-model")
    gw = module_spawn.gateway({"backends": [
        {"name": "llama", "kind": "llamacpp", "url": backend_llamacpp.url},
        {"name": "vllm", "kind": "vllm", "url": backend_vllm.url},
        {"name": "tgi", "kind": "tgi", "url": backend_tgi_double.url},
        # llama-server's wire format, scripted byte for byte (x_double.raw)
        {"name": "scripted", "kind": "llamacpp", "url": scripted.url}]})
    return {"gw": gw, "scripted": scripted,
            "backends": {"llama": backend_llamacpp, "vllm": backend_vllm, "tgi": backend_tgi_double}}


@pytest.fixture
def client() -> Iterator[Callable[..., anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []

    def make(url: str, key: str = "unused-without-keys") -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=120))
        return made[-1]

    yield make
    for c in made:
        c.close()


def counters(gw: Gateway) -> dict[tuple[str, ...], float]:
    """The gateway's request and token counters, by their labels."""
    out: dict[tuple[str, ...], float] = {}
    for fam in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text):
        for s in fam.samples:
            if s.name == "llm_gateway_requests_total":
                out[("requests", s.labels["endpoint"], s.labels["backend"], s.labels["status"])] = s.value
            elif s.name == "llm_gateway_tokens_total":
                out[("tokens", s.labels["backend"], s.labels["kind"])] = s.value
    return out


def grew(before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float], key: tuple[str, ...]) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def whole_prompt(msg: Any) -> int:
    u = msg.usage
    return u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)


ASK = {"max_tokens": 8, "system": "Be brief.", "messages": [{"role": "user", "content": "Say hello"}],
       "extra_body": {"temperature": 0}}


@pytest.mark.parametrize("name", ["llama", "vllm"])
def test_passed_through_as_the_backend_answers(native: dict[str, Any], name: str,
                                               client: Callable[..., anthropic.Anthropic]) -> None:
    b: BackendUnderTest = native["backends"][name]
    gw: Gateway = native["gw"]
    direct = client(b.url).messages.create(model=b.model, **ASK)  # the server's own answer, no gateway
    before = counters(gw)
    c = client(gw.url)
    msg = c.messages.create(model=b.model, **ASK)
    assert msg.content[0].text == direct.content[0].text and msg.content[0].text  # greedy: the same answer
    # the prompt whole: the server's cache may serve part of a repeated one (cache_read_input_tokens)
    assert (msg.stop_reason, whole_prompt(msg), msg.usage.output_tokens) == (
        direct.stop_reason, whole_prompt(direct), direct.usage.output_tokens)
    with c.messages.stream(model=b.model, **ASK) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text == msg.content[0].text
    assert (final.stop_reason, final.usage.output_tokens) == (msg.stop_reason, msg.usage.output_tokens)
    after = counters(gw)
    # passed through (endpoint "messages"), never translated onto chat
    assert grew(before, after, ("requests", "messages", name, "200")) == 2
    assert grew(before, after, ("requests", "anthropic.messages", name, "200")) == 0
    # usage counted from the native answer and from the stream's message_start / message_delta events:
    # the whole prompt (Anthropic's input_tokens plus the cache reads it leaves out), the output as reported
    assert grew(before, after, ("tokens", name, "prompt")) == whole_prompt(msg) + whole_prompt(final)
    assert grew(before, after, ("tokens", name, "completion")) == msg.usage.output_tokens + final.usage.output_tokens


def test_what_llama_server_receives_is_what_was_sent(native: dict[str, Any]) -> None:
    """Anthropic's own fields reach the server (no translation): llama-server applies `stop_sequences` and
    says which one matched, which a chat completions answer cannot carry."""
    b: BackendUnderTest = native["backends"]["llama"]
    ask = {"model": b.model, "max_tokens": 30, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}
    full = httpx.post(b.url + "/v1/messages", json=ask, timeout=60).json()["content"][0]["text"]
    words = full.split()
    assert len(words) >= 3, full
    stop = words[1]  # a word that comes up: the answer stops just before it
    r = httpx.post(native["gw"].url + "/v1/messages", json={**ask, "stop_sequences": [stop]}, timeout=60)
    doc = r.json()
    assert r.status_code == 200 and doc["type"] == "message"
    # llama-server's own reading (server-task.cpp to_json_anthropic): end_turn, with the matched word
    assert (doc["stop_reason"], doc["stop_sequence"]) == ("end_turn", stop)
    assert stop not in doc["content"][0]["text"] and full.startswith(doc["content"][0]["text"].rstrip())


@pytest.mark.parametrize("stream", [False, True])
def test_tool_blocks_reach_llama_server_as_sent(native: dict[str, Any], stream: bool,
                                               client: Callable[..., anthropic.Anthropic]) -> None:
    """A tool use turn and its tool_result, with tools and tool_choice, passed through: llama-server converts
    them itself (server-chat.cpp server_chat_convert_anthropic_to_oai) and answers as it answers directly.
    (A forced call from this random-weight model cannot be had on this route: the conversion drops the
    logit_bias that tests/test_llamacpp_tool_choice.py steers it with; translated tool use is
    tests/test_front_anthropic.py's.)"""
    b: BackendUnderTest = native["backends"]["llama"]
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                  "input": {"city": "Paris"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                             "content": "18 C, clear"}]}]
    ask: dict[str, Any] = {"model": b.model, "max_tokens": 6, "tools": TOOLS, "tool_choice": {"type": "auto"},
                           "messages": history, "extra_body": {"temperature": 0}}

    def answer(c: anthropic.Anthropic) -> Any:
        if not stream:
            return c.messages.create(**ask)
        with c.messages.stream(**ask) as s:
            return s.get_final_message()

    via, direct = answer(client(native["gw"].url)), answer(client(b.url))
    assert [blk.model_dump() for blk in via.content] == [blk.model_dump() for blk in direct.content]
    assert (via.stop_reason, whole_prompt(via), via.usage.output_tokens) == (
        direct.stop_reason, whole_prompt(direct), direct.usage.output_tokens)
    first = client(b.url).messages.create(model=b.model, max_tokens=1, messages=history[:1])
    assert whole_prompt(via) > whole_prompt(first) + 5  # the call and its result are in the prompt


def test_backend_errors_in_anthropics_shape(native: dict[str, Any], client: Callable[..., anthropic.Anthropic]) -> None:
    c = client(native["gw"].url)
    for name in ("llama", "vllm"):  # a prompt beyond the context (256 tokens on both)
        b: BackendUnderTest = native["backends"][name]
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model=b.model, max_tokens=5, messages=[{"role": "user", "content": "word " * 600}])
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error", name
        assert e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:  # refused before any backend: server tools, max_tokens
        c.messages.create(model=native["backends"]["llama"].model, max_tokens=5, messages=[{"role": "user",
                          "content": "hi"}], tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "web_search" in e.value.body["error"]["message"]
    r = httpx.post(native["gw"].url + "/v1/messages", json={"model": native["backends"]["llama"].model,
                                                            "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


def sse(*events: tuple[str, dict[str, Any]]) -> str:
    """llama-server's format_anthropic_sse: `event:` then compact `data:` per event."""
    return "".join(f"event: {name}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n" for name, doc in events)


START = ("message_start", {"type": "message_start", "message": {
    "id": "chatcmpl-x", "type": "message", "role": "assistant", "content": [], "model": "m-scripted",
    "stop_reason": None, "stop_sequence": None,
    "usage": {"cache_read_input_tokens": 0, "input_tokens": 9, "output_tokens": 0}}})
BLOCK = ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})
DELTA = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hel"}})
HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def test_failures_after_the_stream_began(native: dict[str, Any], client: Callable[..., anthropic.Anthropic]) -> None:
    """llama-server's own error event (`event: error` with its error object, server-context.cpp format_error)
    and a stream that just stops: the client gets Anthropic's error event either way, never [DONE]."""
    gw: Gateway = native["gw"]
    own = sse(START, BLOCK, DELTA, ("error", {"code": 500, "message": "failed to decode the batch",
                                              "type": "server_error"}))
    for raw, says in ((own, "failed to decode the batch"), (sse(START, BLOCK, DELTA), "without finishing")):
        body = {"model": "m-scripted", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}],
                "x_double": {"raw": HEAD + raw}}
        with httpx.stream("POST", gw.url + "/v1/messages", json=body, timeout=30) as r:
            text = r.read().decode()
        assert r.status_code == 200 and "[DONE]" not in text and text.count("event: error") == 1, text
        last = text.strip().split("\n\n")[-1].split("\n")
        assert last[0] == "event: error"
        err = json.loads(last[1][len("data: "):])
        assert err["type"] == "error" and err["error"]["type"] == "api_error" and says in err["error"]["message"]
        c = client(gw.url)
        with pytest.raises(anthropic.APIStatusError) as e:  # the SDK raises on it
            with c.messages.stream(model="m-scripted", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                                   extra_body={"x_double": {"raw": HEAD + raw}}) as s:
                for _ in s:
                    pass
        assert says in str(e.value)


def test_translated_where_the_route_is_missing(module_spawn: Spawner, native: dict[str, Any],
                                               client: Callable[..., anthropic.Anthropic]) -> None:
    """`capabilities: {messages: false}` (a server build without the route) and kinds whose servers have none
    (TGI here) get the request translated onto chat completions; the client sees the same protocol."""
    b: BackendUnderTest = native["backends"]["llama"]
    gw = module_spawn.gateway({"backends": [
        {"name": "old-llama", "kind": "llamacpp", "url": b.url, "capabilities": {"messages": False}}]})
    before = counters(gw)
    msg = client(gw.url).messages.create(model=b.model, **ASK)
    assert msg.type == "message" and msg.content[0].text and msg.usage.output_tokens > 0
    tgi = client(native["gw"].url).messages.create(model=native["backends"]["tgi"].model, **ASK)
    assert tgi.content[0].text
    after = counters(gw)
    assert grew(before, after, ("requests", "anthropic.messages", "old-llama", "200")) == 1
    assert grew(before, after, ("requests", "messages", "old-llama", "200")) == 0


def test_media_links_refused_in_anthropics_blocks(module_spawn: Spawner, native: dict[str, Any]) -> None:
    """`media_urls: data_only`: an image block's URL source (also inside a tool result) is refused before the
    server could fetch it; inline base64 passes."""
    b: BackendUnderTest = native["backends"]["llama"]
    gw = module_spawn.gateway({"backends": [{"name": "l", "kind": "llamacpp", "url": b.url,
                                             "media_urls": "data_only"}]})
    link = {"type": "image", "source": {"type": "url", "url": "http://169.254.169.254/latest/meta-data"}}
    for content, where in (([link], "messages[0].content[0].source"),
                           ([{"type": "tool_result", "tool_use_id": "t1", "content": [link]}],
                            "messages[0].content[0].content[0].source")):
        r = httpx.post(gw.url + "/v1/messages", json={"model": b.model, "max_tokens": 5,
                                                      "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 400 and r.json()["type"] == "error", r.text
        assert where in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/v1/messages", json={"model": b.model, "max_tokens": 3, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, timeout=60)
    assert r.status_code == 200, r.text


def test_count_tokens_is_the_servers_own_count(native: dict[str, Any], spawn: Spawner,
                                              client: Callable[..., anthropic.Anthropic]) -> None:
    """POST /v1/messages/count_tokens, passed through: the count the server gives directly, the prompt the
    same messages are then charged for; refused in Anthropic's shape for a kind that cannot count (TGI)."""
    gw: Gateway = native["gw"]
    ask: dict[str, Any] = {"system": "Be brief.", "messages": [{"role": "user", "content": "Say hello to me"}]}
    for name in ("llama", "vllm"):
        b: BackendUnderTest = native["backends"][name]
        via = client(gw.url).messages.count_tokens(model=b.model, **ask)
        assert via.input_tokens == client(b.url).messages.count_tokens(model=b.model, **ask).input_tokens > 0
        made = client(b.url).messages.create(model=b.model, max_tokens=1, **ask)
        assert via.input_tokens == whole_prompt(made), name
    with pytest.raises(anthropic.BadRequestError) as e:
        client(gw.url).messages.count_tokens(model=native["backends"]["tgi"].model, **ask)
    assert e.value.body["type"] == "error" and "llama.cpp, vLLM" in e.value.body["error"]["message"]
    after = counters(gw)
    assert after[("requests", "messages.count_tokens", "llama", "200")] >= 1


def test_counting_tokens_is_not_charged_to_a_keys_limits(native: dict[str, Any], spawn: Spawner,
                                                         client: Callable[..., anthropic.Anthropic]) -> None:
    b: BackendUnderTest = native["backends"]["llama"]
    key = "count-tokens-key-0123456789abcdef"
    gw = spawn.gateway({"auth": {"keys": [{"name": "cc", "key": key, "limits": {"rpm": 1, "tpm": 100}}]},
                        "backends": [{"name": "l", "kind": "llamacpp", "url": b.url}]})
    c = client(gw.url, key)
    ask: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    for _ in range(4):  # an agent counts before every turn: none of it is a request or tokens against the limits
        assert c.messages.count_tokens(model=b.model, **ask).input_tokens > 0
    assert c.messages.create(model=b.model, max_tokens=2, **ask).content  # the one request a minute
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(model=b.model, max_tokens=2, **ask)
    with pytest.raises(anthropic.AuthenticationError):  # but a key is still needed
        client(gw.url, "wrong-key-0123456789abcdef").messages.count_tokens(model=b.model, **ask)
