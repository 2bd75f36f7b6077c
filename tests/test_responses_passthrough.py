"""POST /v1/responses (OpenAI's Responses API) through a running gateway (issue 12, audit defect 20).

Passed through to backends whose server implements it: the vLLM-shaped double
(tests/doubles/openai_responses.py, vLLM's event shapes) and the real llama-server (0c1e57098 serves
/v1/responses). Routed by `model` like chat, the model name substituted, every other byte as sent;
the SSE events (`event:` + `data:` lines, no `[DONE]`) relayed as they arrive; usage counted from
`response.completed`. Kinds whose server lacks the route (TGI, FastChat, RWKV-Runner, Ollama) are
translated to chat completions instead (gateway/fronts/responses.py), never sent the route. Talked to
with the official `openai` client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.doubles.fastchat_fake import controller, worker
from tests.procs import Double, Gateway, Spawner

TEXT = "one two three four five six"


@pytest.fixture(scope="module")
def vllm_gateway(module_spawn: Spawner) -> Iterator[tuple[Gateway, Double, openai.OpenAI]]:
    up = module_spawn.double("resp-vllm", "test-model")
    gw = module_spawn.gateway({
        "backends": [{"name": "resp-vllm", "kind": "vllm", "url": up.url}],
        "models": [{"name": "agent", "backends": [{"backend": "resp-vllm", "model": "test-model"}]}],
    })
    yield gw, up, openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)


def tokens(gw: Gateway, model: str) -> dict[str, float]:
    text = httpx.get(gw.url + "/metrics").text
    out = {}
    for kind in ("prompt", "completion"):
        m = re.search(rf'llm_gateway_tokens_total\{{backend="[^"]*",kind="{kind}",model="{model}"\}} (\S+)', text)
        out[kind] = float(m.group(1)) if m else 0.0
    return out


def test_non_stream_is_passed_through_with_the_model_substituted(vllm_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, up, client = vllm_gateway
    up.reset()
    before = tokens(gw, "agent")
    r = client.responses.create(model="agent", input="Say hi", instructions="be brief", max_output_tokens=64,
                                extra_body={"x_double": {"text": TEXT}, "vendor_field": [1, {"a": None}]})
    assert r.object == "response" and r.status == "completed" and r.output_text == TEXT
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (7, 6)
    (got,) = up.requests()
    assert got["path"] == "/v1/responses"
    # As sent, but for `model`: no stream_options patch, unknown fields untouched.
    assert got["body"] == {"model": "test-model", "input": "Say hi", "instructions": "be brief",
                           "max_output_tokens": 64, "x_double": {"text": TEXT}, "vendor_field": [1, {"a": None}]}
    after = tokens(gw, "agent")
    assert (after["prompt"] - before["prompt"], after["completion"] - before["completion"]) == (7, 6)


def test_stream_events_relayed_untouched_and_usage_counted(vllm_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, up, client = vllm_gateway
    up.reset()
    before = tokens(gw, "agent")
    events = list(client.responses.create(model="agent", input=[{"role": "user", "content": "hi"}], stream=True,
                                          extra_body={"x_double": {"text": TEXT}}))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == TEXT and done.usage.output_tokens == 6
    (got,) = up.requests()
    assert got["path"] == "/v1/responses" and got["body"]["model"] == "test-model"
    assert "stream_options" not in got["body"]
    after = tokens(gw, "agent")
    assert (after["prompt"] - before["prompt"], after["completion"] - before["completion"]) == (7, 6)

    # The raw bytes: vLLM's `event:`/`data:` pairs and nothing the gateway added (no [DONE], no error).
    with httpx.stream("POST", gw.v1 + "/responses", timeout=30,
                      json={"model": "agent", "input": "hi", "stream": True, "x_double": {"text": TEXT}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = [b for b in raw.split("\n\n") if b]
    for b in blocks:
        event, data = b.split("\n")
        assert event == "event: " + json.loads(data.removeprefix("data: "))["type"], b
    assert "[DONE]" not in raw and '"error"' not in raw
    assert blocks[-1].startswith("event: response.completed\n")


def test_stream_reaches_the_client_while_the_backend_is_still_generating(vllm_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, up, _ = vllm_gateway
    up.reset()
    # The double sends its first delta and then waits for /_release: the client must see that delta
    # first (read timeout 30 s: a buffering gateway fails here).
    with httpx.stream("POST", gw.url + "/responses", timeout=30,  # the path without /v1 too
                      json={"model": "agent", "input": "hi", "stream": True,
                            "x_double": {"text": TEXT, "hold": True}}) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "response.output_text.delta":
                break
        assert up.stats()["completed"] == 0  # still held: nothing was buffered until the end
        up.release()
        rest = [json.loads(line[6:])["type"] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "response.completed"


def test_stream_cut_mid_answer_ends_in_an_error_the_sdk_raises(vllm_gateway) -> None:  # type: ignore[no-untyped-def]
    _, up, client = vllm_gateway
    up.reset()
    stream = client.responses.create(model="agent", input="hi", stream=True,
                                     extra_body={"x_double": {"text": TEXT, "truncate": True}})
    seen = []
    with pytest.raises(openai.APIError, match="closed the connection"):
        for e in stream:
            seen.append(e.type)
    assert "response.output_text.delta" in seen and "response.completed" not in seen


def test_checked_fields_and_methods(vllm_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, up, _ = vllm_gateway
    up.reset()
    cases = [({"model": "agent"}, "input", "missing_required_parameter"),
             ({"model": "agent", "input": 5}, "input", "invalid_type"),
             ({"model": "agent", "input": "hi", "stream": "yes"}, "stream", "invalid_type"),
             ({"input": "hi"}, "model", "missing_required_parameter")]
    for body, param, code in cases:
        r = httpx.post(gw.v1 + "/responses", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param and r.json()["error"]["code"] == code
    assert httpx.post(gw.v1 + "/responses", json={"model": "nope", "input": "hi"}).status_code == 404
    r = httpx.get(gw.v1 + "/responses")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert up.requests() == []


def test_kinds_without_the_responses_api_are_translated_never_sent_the_route(
        backend_tgi_double: BackendUnderTest, spawn: Spawner) -> None:
    """Kinds whose server lacks the route get the request as chat completions (gateway/fronts/responses.py,
    issue 17; tests/test_front_responses.py has the details): never a POST /v1/responses they cannot serve."""
    tgi_requests = lambda: [r for r in httpx.get(backend_tgi_double.url + "/_requests").json()  # noqa: E731
                            if "responses" in str(r.get("path", ""))]
    w = worker("127.0.0.1", "fc-model", "Hello")
    c = controller("127.0.0.1", {"fc-model": w.url})
    off = spawn.double("resp-off", "off-model")
    try:
        gw = spawn.gateway({"backends": [
            {"name": "tgi", "kind": "tgi", "url": backend_tgi_double.url},
            # an override cannot turn it on for a kind whose adapter cannot forward it
            {"name": "fc", "kind": "fastchat", "url": c.url, "capabilities": {"responses": True}},
            # a vLLM build without the route: the operator turns the capability off
            {"name": "old-vllm", "kind": "vllm", "url": off.url, "capabilities": {"responses": False}},
        ]})
        client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
        for model in (backend_tgi_double.model, "fc-model", "off-model"):
            r = client.responses.create(model=model, input="hi", max_output_tokens=4)
            assert r.object == "response" and r.output_text, r
            if model == "fc-model":
                continue  # this fake worker has no streaming route (real FastChat: tests/test_front_responses.py)
            events = list(client.responses.create(model=model, input="hi", max_output_tokens=4, stream=True))
            assert events[-1].type in ("response.completed", "response.incomplete") and events[-1].response.output_text
        assert tgi_requests() == [] and off.requests()
        assert all(r["path"] == "/v1/chat/completions" for r in off.requests())
        assert all("responses" not in path for _, path in w.requests + c.requests)
    finally:
        w.close()
        c.close()


def test_media_links_refused_in_input_items_with_data_only(spawn: Spawner) -> None:
    up = spawn.double("resp-media", "m")
    gw = spawn.gateway({"backends": [{"name": "b", "kind": "vllm", "url": up.url, "media_urls": "data_only"}]})
    image = {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                         {"type": "input_image", "image_url": "http://10.0.0.1/admin.png"}]}
    r = httpx.post(gw.v1 + "/responses", json={"model": "m", "input": [image]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "media_url_not_allowed" and err["param"] == "input[0].content[1].image_url", err
    assert "input[0]" in err["message"] and "messages" not in err["message"]
    inline = {**image, "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}
    assert httpx.post(gw.v1 + "/responses", json={"model": "m", "input": [inline]}).status_code == 200
    assert [r["path"] for r in up.requests()] == ["/v1/responses"]


@pytest.mark.llamacpp
def test_real_llama_server(llama_servers: list[BackendUnderTest], spawn: Spawner) -> None:
    s = llama_servers[0]
    gw = spawn.gateway({"backends": [{"name": "llama", "kind": "llamacpp", "url": s.url}],
                        "models": [{"name": "local", "backends": [{"backend": "llama", "model": s.model}]}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)
    before = tokens(gw, "local")
    r = client.responses.create(model="local", input="Hello there", max_output_tokens=5, temperature=0)
    assert r.object == "response" and r.model == s.model and r.output_text
    assert r.usage is not None and r.usage.output_tokens == 5 and r.usage.input_tokens > 0
    events = list(client.responses.create(model="local", input=[{"role": "user", "content": "Hello there"}],
                                          max_output_tokens=4, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert deltas and done.output_text == deltas and done.usage.output_tokens == 4
    after = tokens(gw, "local")
    assert after["completion"] - before["completion"] == 9
    assert after["prompt"] - before["prompt"] == r.usage.input_tokens + done.usage.input_tokens
