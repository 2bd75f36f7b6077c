"""The Ollama-compatible front (gateway/fronts/ollama.py) with Ollama's official Python client, in front of a
real llama-server, the vLLM-format double and the TGI double: version, list, chat (one answer and NDJSON
streamed), a tool call round trip, and errors in Ollama's shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.procs import Double, Gateway, Spawner

KEY = "ollama-front-key-0123456789"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="module")
def front(fronts_gateway: dict[str, Any]) -> dict[str, Any]:
    return fronts_gateway


@pytest.fixture
def client() -> Iterator[Callable[..., ollama.Client]]:
    """Ollama clients for a gateway, closed after the test (their sockets too)."""
    made: list[ollama.Client] = []

    def make(gw: Gateway, **kw: Any) -> ollama.Client:
        made.append(ollama.Client(host=gw.url, timeout=60, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_version_and_list(front: dict[str, Any], client: Callable[..., ollama.Client]) -> None:
    gw = front["gw"]
    r = httpx.get(gw.url + "/api/version")
    assert r.status_code == 200 and r.json()["version"].count(".") == 2
    names = {m.model for m in client(gw).list().models}
    assert set(front["models"].values()) <= names


@pytest.mark.parametrize("kind", ["llamacpp", "vllm", "tgi"])
def test_chat_one_answer_and_streamed(front: dict[str, Any], kind: str, client: Callable[..., ollama.Client]) -> None:
    model = front["models"][kind]
    c = client(front["gw"])
    messages = [{"role": "user", "content": "Say hello"}]
    whole = c.chat(model=model, messages=messages, options={"temperature": 0, "num_predict": 8, "seed": 1})
    assert whole.model == model and whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count and whole.prompt_eval_count and whole.total_duration
    parts = list(c.chat(model=model, messages=messages, stream=True,
                        options={"temperature": 0, "num_predict": 8, "seed": 1}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].eval_count == whole.eval_count and parts[-1].done_reason == whole.done_reason
    # greedy, same seed: the deltas add up to the one answer
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_num_predict_is_max_tokens(front: dict[str, Any], client: Callable[..., ollama.Client]) -> None:
    whole = client(front["gw"]).chat(model="m-vllm", messages=[{"role": "user", "content": "hi"}],
                                     options={"num_predict": 2})
    assert whole.done_reason == "length" and whole.eval_count == 2
    assert front["vllm"].requests()[-1]["body"]["max_tokens"] == 2


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_round_trip(front: dict[str, Any], stream: bool, client: Callable[..., ollama.Client]) -> None:
    vllm: Double = front["vllm"]
    c = client(front["gw"])
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    # the double answers with the call it is told to make (an extra field, passed on as the chat path does)
    ask = {"model": "m-vllm", "messages": messages, "tools": TOOLS, "stream": stream,
           "x_double": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}}
    r = httpx.post(front["gw"].url + "/api/chat", json=ask, timeout=60)
    assert r.status_code == 200, r.text
    lines = [ollama.ChatResponse.model_validate_json(x) for x in r.text.splitlines() if x.strip()]
    calls = [tc for ln in lines for tc in (ln.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris"}  # an object, as Ollama sends it
    assert lines[-1].done
    upstream_call = vllm.requests()[-1]["body"]
    assert upstream_call["tools"] == TOOLS
    # the result goes back by tool name (Ollama's own clients do so): the gateway finds the call's id
    messages += [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 C, clear"}]
    answer = c.chat(model="m-vllm", messages=messages, tools=TOOLS)
    assert answer.message.content and answer.done
    sent = vllm.requests()[-1]["body"]["messages"]
    call_id = sent[1]["tool_calls"][0]["id"]
    fn = sent[1]["tool_calls"][0]["function"]  # OpenAI's shape: the arguments as a JSON string
    assert fn["name"] == "get_weather" and json.loads(fn["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "18 C, clear", "tool_call_id": call_id}


def test_errors_in_ollamas_shape(front: dict[str, Any], client: Callable[..., ollama.Client]) -> None:
    c = client(front["gw"])
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="m-vllm", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 4096})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error
    r = httpx.post(front["gw"].url + "/api/chat", content=b'{"model": "m-vllm"}',
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415 and set(r.json()) == {"error"}
    r = httpx.get(front["gw"].url + "/api/chat")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_keys_apply_to_the_front(spawn: Spawner, client: Callable[..., ollama.Client]) -> None:
    dbl = spawn.double("front-keyed", "m-keyed")
    gw = spawn.gateway({"auth": {"keys": [{"name": "ed", "key": KEY}]},
                        "backends": [{"name": "d", "kind": "openai", "url": dbl.url}]})
    with pytest.raises(ollama.ResponseError) as e:
        client(gw).list()
    assert e.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as e:
        client(gw).chat(model="m-keyed", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401 and "API key" in e.value.error
    keyed = client(gw, headers={"Authorization": f"Bearer {KEY}"})
    assert [m.model for m in keyed.list().models] == ["m-keyed"]
    assert keyed.chat(model="m-keyed", messages=[{"role": "user", "content": "hi"}]).message.content
    assert KEY not in gw.proc.output()


@pytest.mark.parametrize("kind", ["llamacpp", "vllm"])
def test_generate_one_answer_streamed_and_raw(front: dict[str, Any], kind: str,
                                              client: Callable[..., ollama.Client]) -> None:
    model = front["models"][kind]
    c = client(front["gw"])
    opts = {"temperature": 0, "num_predict": 6, "seed": 1}
    whole = c.generate(model=model, prompt="Once upon a time", system="Be brief.", options=opts)
    assert whole.model == model and whole.done and whole.response and whole.eval_count
    parts = list(c.generate(model=model, prompt="Once upon a time", system="Be brief.", options=opts, stream=True))
    assert parts[-1].done and "".join(p.response for p in parts) == whole.response
    raw = c.generate(model=model, prompt="Once upon a time", raw=True, options=opts)
    assert raw.done and raw.response
    if kind == "vllm":  # which path each took, as the backend saw it
        sent = front["vllm"].requests()
        assert sent[-1]["path"] == "/v1/completions" and sent[-1]["body"]["prompt"] == "Once upon a time"
        assert sent[-2]["path"] == "/v1/chat/completions" and sent[-2]["body"]["messages"] == [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"}]
    # an empty prompt: Ollama's preload, answered at once
    assert c.generate(model=model).done_reason == "load"
    with pytest.raises(ollama.ResponseError) as e:
        c.generate(model=model, prompt="x", template="{{ .Prompt }}")
    assert e.value.status_code == 400 and "template" in e.value.error


def test_embed_and_show(front: dict[str, Any], client: Callable[..., ollama.Client]) -> None:
    c = client(front["gw"])
    got = c.embed(model="m-vllm", input=["one", "two"])
    assert len(got.embeddings) == 2 and all(len(v) > 0 and isinstance(v[0], float) for v in got.embeddings)
    assert front["vllm"].requests()[-1]["body"] == {"model": "m-vllm", "input": ["one", "two"]}
    assert c.embed(model="m-vllm", input="").embeddings == []
    shown = c.show("m-vllm")
    assert "completion" in (shown.capabilities or []) and "embedding" in (shown.capabilities or [])
    tgi = c.show(front["models"]["tgi"])
    assert "embedding" not in (tgi.capabilities or [])  # TGI serves no embeddings
    with pytest.raises(ollama.ResponseError) as e:
        c.show("no-such-model")
    assert e.value.status_code == 404 and "no-such-model" in e.value.error


def test_metrics_name_the_front(front: dict[str, Any], client: Callable[..., ollama.Client]) -> None:
    c = client(front["gw"])
    c.chat(model="m-vllm", messages=[{"role": "user", "content": "hi"}])
    c.generate(model="m-vllm", prompt="hi")
    c.generate(model="m-vllm", prompt="hi", raw=True)
    c.embed(model="m-vllm", input="hi")
    text = httpx.get(front["gw"].url + "/metrics").text
    for label in ("ollama.chat", "ollama.generate", "ollama.embed"):
        assert f'llm_gateway_requests_total{{backend="vllm",endpoint="{label}",model="m-vllm",status="200"}}' in text, \
            label
