"""The same gateway-level checks against every backend kind, real or double.

Each backend is started once per session (tests/conftest.py) and put behind its own gateway
under the public name `conf-model`; every check below runs against each of them through the
official `openai` client.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.backends_under_test import BACKENDS, REAL, BackendUnderTest
from tests.procs import Gateway, Spawner

MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]
PUBLIC = "conf-model"
# The real backends run random-weight models that may emit EOS at any step: ignore_eos (llama.cpp,
# vLLM; an unknown field the doubles ignore) makes the max_tokens checks deterministic.
GEN = {"extra_body": {"ignore_eos": True}}


class Setup:
    def __init__(self, but: BackendUnderTest, gw: Gateway) -> None:
        self.but = but
        self.gw = gw
        self.client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)

    def tokens(self, kind: str) -> float:
        text = httpx.get(self.gw.url + "/metrics").text
        m = re.search(rf'llm_gateway_tokens_total\{{backend="under-test",kind="{kind}",model="{PUBLIC}"\}} (\S+)', text)
        return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module", params=[pytest.param(b, marks=getattr(pytest.mark, b)) if b in REAL else b
                                        for b in BACKENDS])
def setup(request: pytest.FixtureRequest, module_spawn: Spawner) -> Setup:
    but: BackendUnderTest = request.getfixturevalue(f"backend_{request.param.replace('-', '_')}")
    gw = module_spawn.gateway({
        "backends": [{"name": "under-test", "kind": but.kind, "url": but.url}],
        "models": [{"name": PUBLIC, "backends": [{"backend": "under-test", "model": but.model}]}],
    })
    return Setup(but, gw)


def test_model_is_listed_and_backend_ready(setup: Setup) -> None:
    assert [m.id for m in setup.client.models.list()] == [PUBLIC]
    backends = httpx.get(setup.gw.url + "/admin/backends").json()["backends"]
    assert [(b["name"], b["kind"], b["state"]) for b in backends] == [("under-test", setup.but.kind, "ready")]
    assert setup.but.model in backends[0]["models"]


def test_chat_non_stream(setup: Setup) -> None:
    before = setup.tokens("completion")
    r = setup.client.chat.completions.create(model=PUBLIC, messages=MESSAGES, max_tokens=12, **GEN)
    assert r.id and r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    assert setup.tokens("completion") == before + r.usage.completion_tokens


def test_chat_stream(setup: Setup) -> None:
    before = setup.tokens("completion")
    chunks = list(setup.client.chat.completions.create(model=PUBLIC, messages=MESSAGES, max_tokens=12, stream=True,
                                                       **GEN))
    assert chunks, "no chunk arrived"
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and all(ids), ids  # one non-empty id per stream
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert setup.tokens("completion") > before  # ... but the gateway counted it


def test_chat_stream_with_usage(setup: Setup) -> None:
    chunks = list(setup.client.chat.completions.create(
        model=PUBLIC, messages=MESSAGES, max_tokens=8, stream=True, stream_options={"include_usage": True}, **GEN))
    usage = [c.usage for c in chunks if c.usage is not None]
    if not setup.but.stream_usage:
        pytest.skip(f"{setup.but.kind} does not report usage in streams")
    assert usage and 0 < usage[-1].completion_tokens <= 8


def test_max_tokens_gives_length(setup: Setup) -> None:
    r = setup.client.chat.completions.create(model=PUBLIC, messages=MESSAGES, max_tokens=2, **GEN)
    assert r.usage is not None and r.usage.completion_tokens <= 2
    assert r.choices[0].finish_reason == "length"


def test_completions(setup: Setup) -> None:
    r = setup.client.completions.create(model=PUBLIC, prompt="Once upon a time", max_tokens=6, **GEN)
    assert r.choices[0].finish_reason in ("stop", "length") and isinstance(r.choices[0].text, str)
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 6
    chunks = list(setup.client.completions.create(model=PUBLIC, prompt="Once upon a time", max_tokens=6, stream=True,
                                                  **GEN))
    assert chunks and all(c.id for c in chunks)
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason][-1] in ("stop", "length")


def test_unknown_model_and_bad_request_never_reach_the_backend(spawn: Spawner) -> None:
    # Decided by the gateway before any backend is chosen, so checked once (not per backend): the
    # client gets the OpenAI envelope and the backend sees nothing.
    up = spawn.double("gatekeeper", "m")
    gw = spawn.gateway({"backends": [{"name": "gatekeeper", "kind": "vllm", "url": up.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="m", messages=[], max_tokens=2)
    for exc in (missing, empty):
        body = exc.value.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert missing.value.body["code"] == "model_not_found"
    assert empty.value.body["type"] == "invalid_request_error" and empty.value.body["param"] == "messages"
    assert up.requests() == []
