"""FastChat through a running gateway, on the wire details of the protocol audit (issue 12: defects 16,
17, 21, 23). What the gateway sends is read from recording fakes (tests/doubles/fastchat_fake.py); what
the worker does with it, from the session's real FastChat (a controller and two HF workers on CPU)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from adapters.fastchat_conv import render
from tests.doubles.fastchat_fake import FakeServer, controller, worker
from tests.procs import Gateway, Spawner

MESSAGES = [{"role": "user", "content": "Hi"}]
CONTEXT, COUNT = 2048, 5  # what the fake worker's /model_details and /count_token answer
FORMATS = [{"type": "json_object"},
           {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}]


@pytest.fixture
def fake(spawn: Spawner) -> Iterator[tuple[Gateway, FakeServer, FakeServer]]:
    w = worker("127.0.0.1", "fake-model", "Hello")
    c = controller("127.0.0.1", {"fake-model": w.url})
    try:
        gw = spawn.gateway({"health": {"interval": 0.05},
                            "backends": [{"name": "fc", "kind": "fastchat", "url": c.url}]})
        yield gw, c, w
    finally:
        w.close()
        c.close()


def wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def max_new_tokens(gw: Gateway, w: FakeServer, **body: Any) -> int:
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "fake-model", "messages": MESSAGES, **body})
    assert r.status_code == 200, r.text
    return w.sent("/worker_generate")[-1]["max_new_tokens"]


# -- defect 16: the prompt's first token (BOS) -------------------------------------------------------------


def test_max_new_tokens_leaves_the_prompt_whole(fake: tuple[Gateway, FakeServer, FakeServer]) -> None:
    gw, _, w = fake
    # the HF worker keeps the prompt's last ctx - max_new_tokens - 1 tokens (FC inference.py:95-99)
    room = CONTEXT - COUNT - 1
    assert max_new_tokens(gw, w) == room
    assert max_new_tokens(gw, w, max_tokens=10_000) == room
    assert max_new_tokens(gw, w, max_tokens=7) == 7


@pytest.mark.fastchat
def test_the_worker_uses_every_prompt_token(fastchat_cluster: dict, spawn: Spawner) -> None:
    gw = spawn.gateway({"backends": [{"name": "fc", "kind": "fastchat", "url": fastchat_cluster["controller"]}]})
    wurl = fastchat_cluster["workers"][0]["url"]
    model = fastchat_cluster["model"]
    ctx = httpx.post(wurl + "/model_details", json={"model": model}).json()["context_length"]
    conv = httpx.post(wurl + "/worker_get_conv_template", json={"model": model}).json()["conv"]

    def count(messages: list[dict[str, str]]) -> int:  # the worker's own count of the gateway's prompt
        body = {"model": model, "prompt": render(conv, messages)}
        return httpx.post(wurl + "/count_token", json=body).json()["count"]

    def ask(words: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": " ".join(["hello"] * words)}]

    # a prompt that leaves a few tokens of room, so that the answer with no max_tokens is short
    n10, n20 = count(ask(10)), count(ask(20))
    words = 10 + (ctx - 9 - n10) * 10 // (n20 - n10)
    while count(ask(words)) > ctx - 6:
        words -= 1
    messages, n = ask(words), count(ask(words))
    assert ctx - 16 <= n <= ctx - 6, (words, n)
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)
    r = client.chat.completions.create(model=model, messages=messages, temperature=0)
    assert r.usage.prompt_tokens == n  # all of it, BOS included: it used to be n - 1
    assert r.usage.completion_tokens <= ctx - n - 1


# -- defect 23: an explicit null max_completion_tokens ---------------------------------------------------------


def test_explicit_null_max_completion_tokens_keeps_max_tokens(fake: tuple[Gateway, FakeServer, FakeServer]) -> None:
    gw, _, w = fake
    assert max_new_tokens(gw, w, max_completion_tokens=None, max_tokens=3) == 3
    assert max_new_tokens(gw, w, max_completion_tokens=4, max_tokens=3) == 4


# -- defect 17: response_format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_structured_output_is_refused_before_any_worker_call(fake: tuple[Gateway, FakeServer, FakeServer],
                                                             fmt: dict) -> None:
    gw, _, w = fake
    calls = w.count("/count_token"), w.count("/worker_generate"), w.count("/worker_generate_stream")
    for stream in (False, True):
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "fake-model", "messages": MESSAGES,
                                                          "response_format": fmt, "stream": stream})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "unsupported_parameter" and "response_format" in err["message"]
    assert (w.count("/count_token"), w.count("/worker_generate"), w.count("/worker_generate_stream")) == calls
    assert max_new_tokens(gw, w, response_format={"type": "text"}) > 0  # plain text is no demand


@pytest.mark.fastchat
def test_real_fastchat_structured_output_refused(fastchat_cluster: dict, spawn: Spawner) -> None:
    gw = spawn.gateway({"backends": [{"name": "fc", "kind": "fastchat", "url": fastchat_cluster["controller"]}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=fastchat_cluster["model"], messages=MESSAGES,
                                       response_format={"type": "json_object"})
    assert exc.value.code == "unsupported_parameter" and "response_format" in str(exc.value)


# -- defect 21: the controller's cost of being probed ----------------------------------------------------------


def test_the_controller_is_not_asked_for_workers_on_every_probe(fake: tuple[Gateway, FakeServer, FakeServer]) -> None:
    gw, c, w = fake
    # A probe asks the controller first, then each worker: wait on the worker's count, the later of the two
    # (waiting on the controller's left the 30th probe's worker call possibly still on its way).
    wait_for(lambda: w.count("/worker_get_status") >= 30, "fewer than 30 probes of the worker")
    assert c.count("/list_models") >= 30  # every probe also asked the controller for its models
    # each /get_worker_address adds 1 to a worker's queue estimate in the real controller: discovery
    # (ask until an address repeats: 2 calls for 1 worker) runs once, not on each of the 30 probes
    assert c.count("/get_worker_address") == 2
    assert httpx.get(gw.url + "/admin/backends").json()["backends"][0]["state"] == "ready"
