"""The gateway through the official `openai` client (sync and async, stream and non-stream),
against two real upstream processes: aliases, upstream-name substitution, discovery, usage."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest

from tests.procs import Double, Gateway, Spawner

MESSAGES = [{"role": "user", "content": "Say hello"}]
# public model -> upstream name per backend, as configured below
UPSTREAM = {"up1": "m1", "up2": "m2-upstream"}


class Setup:
    def __init__(self, up1: Double, up2: Double, gw: Gateway) -> None:
        self.up = {"up1": up1, "up2": up2}
        self.gw = gw
        self.client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=20)
        self.aclient = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=20)

    def last_request(self, backend: str) -> dict:
        return self.up[backend].requests()[-1]


@pytest.fixture(scope="module")
def setup(module_spawn: Spawner) -> Setup:
    up1 = module_spawn.double("up1", "m1,shared")
    up2 = module_spawn.double("up2", "m2-upstream,shared", "--owned-by", "someone")
    gw = module_spawn.gateway({
        "backends": [
            {"name": "up1", "kind": "vllm", "url": up1.url},
            {"name": "up2", "kind": "openai", "url": up2.url},
        ],
        "models": [{"name": "qwen2.5-7b", "aliases": ["qwen"],
                    "backends": [{"backend": "up1", "model": "m1"}, {"backend": "up2", "model": "m2-upstream"}]}],
    })
    return Setup(up1, up2, gw)


def served_by(raw_response) -> str:  # type: ignore[no-untyped-def]
    return raw_response.headers["x-llm-gateway-backend"]


def test_models_lists_configured_and_discovered(setup: Setup) -> None:
    ids = sorted(m.id for m in setup.client.models.list())
    # configured name + the model both backends report; upstream names a `models:` entry maps
    # (m1, m2-upstream) are served under the public name only
    assert ids == ["qwen2.5-7b", "shared"]
    card = setup.client.models.retrieve("qwen")
    assert card.id == "qwen2.5-7b"
    with pytest.raises(openai.NotFoundError):
        setup.client.models.retrieve("m1")


def test_chat_non_stream_alias_and_substitution(setup: Setup) -> None:
    picked = set()
    for _ in range(4):  # both deployments get picked over a few idle requests (ties rotate)
        raw = setup.client.chat.completions.with_raw_response.create(model="qwen", messages=MESSAGES)
        backend = served_by(raw)
        picked.add(backend)
        resp = raw.parse()
        assert resp.choices[0].message.content == f"Hello from {backend}, this is a streamed answer"
        assert resp.usage is not None and resp.usage.completion_tokens == 8
        sent = setup.last_request(backend)["body"]
        assert sent["model"] == UPSTREAM[backend]
        assert sent["messages"] == MESSAGES
    assert picked == {"up1", "up2"}


def test_chat_stream_sync_without_usage(setup: Setup) -> None:
    with setup.client.chat.completions.with_streaming_response.create(
            model="qwen2.5-7b", messages=MESSAGES, stream=True) as raw:
        backend = raw.headers["x-llm-gateway-backend"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Hello from {backend}, this is a streamed answer"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the gateway asked upstream for usage (to count tokens) but the client did not: stripped
    assert all(c.usage is None and c.choices for c in chunks)
    assert setup.last_request(backend)["body"]["stream_options"] == {"include_usage": True}


def test_chat_stream_with_usage_requested(setup: Setup) -> None:
    chunks = list(setup.client.chat.completions.create(
        model="qwen", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_tokens_are_counted_even_when_usage_is_stripped(setup: Setup) -> None:
    def completion_tokens() -> float:
        text = httpx.get(setup.gw.url + "/metrics").text
        found = re.findall(r'llm_gateway_tokens_total\{backend="up\d",kind="completion",model="qwen2.5-7b"\} (\S+)',
                           text)
        return sum(float(v) for v in found)

    before = completion_tokens()
    list(setup.client.chat.completions.create(model="qwen", messages=MESSAGES, stream=True))
    assert completion_tokens() == before + 8


def test_async_client_stream_and_non_stream(setup: Setup) -> None:
    async def go() -> None:
        resp = await setup.aclient.chat.completions.create(model="qwen", messages=MESSAGES)
        assert resp.choices[0].message.content.startswith("Hello from up")
        stream = await setup.aclient.chat.completions.create(model="qwen", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert re.fullmatch(r"Hello from up\d, this is a streamed answer", text)
        many = await asyncio.gather(*(setup.aclient.chat.completions.create(model="shared", messages=MESSAGES)
                                      for _ in range(8)))
        assert all(r.choices[0].message.content.startswith("Hello from up") for r in many)
        await setup.aclient.close()
        setup.aclient = type(setup.aclient)(base_url=setup.gw.v1, api_key="unused", max_retries=0)

    asyncio.run(go())


def test_completions_stream_and_non_stream(setup: Setup) -> None:
    resp = setup.client.completions.create(model="qwen", prompt="Once upon", max_tokens=5)
    assert resp.choices[0].text.startswith("Hello from up")
    chunks = list(setup.client.completions.create(model="qwen", prompt="Once upon", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).startswith("Hello from up")
    assert all(c.choices for c in chunks)  # gateway-requested usage chunk stripped here too


def test_embeddings(setup: Setup) -> None:
    resp = setup.client.embeddings.create(model="qwen", input=["a", "bbb"])
    assert [d.embedding[0] for d in resp.data] == [1.0, 3.0]


def test_discovered_model_is_a_pool_of_both_backends(setup: Setup) -> None:
    seen = set()
    for _ in range(6):
        raw = setup.client.chat.completions.with_raw_response.create(model="shared", messages=MESSAGES)
        backend = served_by(raw)
        seen.add(backend)
        assert setup.last_request(backend)["body"]["model"] == "shared"
    assert seen == {"up1", "up2"}


def test_unknown_fields_reach_upstream_untouched(setup: Setup) -> None:
    extra = {"top_k": 5, "repetition_penalty": 1.1, "vendor_ext": {"nested": [1, 2.5, "x", None, True]},
             "x_double": {"text": "custom answer"}, "big": 2 ** 70 + 1, "seedlike": -(2 ** 63) - 1,
             "digits": "1234567890123456789012", "unicode": "héllo ✓"}  # big ints exact, not floats
    raw = setup.client.chat.completions.with_raw_response.create(
        model="qwen", messages=MESSAGES, temperature=0.3, extra_body=extra)
    backend = served_by(raw)
    assert raw.parse().choices[0].message.content == "custom answer"
    sent = setup.last_request(backend)["body"]
    for k, v in extra.items():
        assert sent[k] == v, k
    assert sent["temperature"] == 0.3
