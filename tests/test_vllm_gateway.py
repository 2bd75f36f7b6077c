"""vLLM behind the gateway. Real vLLM (CPU, tiny random model): discovery, load from its /metrics,
version, and its 404 for a model name it does not serve. The vLLM-shaped double
(tests/doubles/openai_server.py + openai_extras.py): a sleeping engine is cold (issue 12, defect 22) and
an agent's parallel tool-call round trip through the official openai client."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.agent_turns import assistant_turn
from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner


@pytest.mark.vllm
def test_discovery_load_version_and_404(backend_vllm: BackendUnderTest, spawn: Spawner) -> None:
    gw = spawn.gateway({
        "health": {"interval": 0.2},
        "backends": [{"name": "vllm", "kind": "vllm", "url": backend_vllm.url}],
        # a mapping to a name this vLLM does not serve: vLLM answers 404 NotFoundError
        "models": [{"name": "misconfigured", "backends": [{"backend": "vllm", "model": "not-served"}]}],
    })
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-vllm", "misconfigured"}  # discovered + configured
    assert models["tiny-vllm"].model_extra["context_length"] == 256  # max_model_len
    b = httpx.get(gw.url + "/admin/backends").json()["backends"][0]
    assert b["state"] == "ready" and b["version"] and b["reported_load"] == 0.0

    # Load comes from vllm:num_requests_running + waiting. Whether a 0.2 s probe lands inside one
    # 200-token generation depends on the machine, so generate until the gateway has reported it
    # (or fail after 10 generations, far more than the 1-2 a healthy run needs).
    def load() -> float:
        return httpx.get(gw.url + "/admin/backends").json()["backends"][0]["reported_load"] or 0.0

    usage: list[int] = []

    def generate() -> None:
        r = client.chat.completions.create(model="tiny-vllm", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=200, extra_body={"ignore_eos": True})
        usage.append(r.usage.completion_tokens)

    seen: list[float] = []
    for _ in range(10):
        t = threading.Thread(target=generate)
        t.start()
        while t.is_alive() and not any(x >= 1.0 for x in seen):
            seen.append(load())
            time.sleep(0.05)
        t.join(120)
        if any(x >= 1.0 for x in seen):
            break
    assert usage and set(usage) == {200}, usage
    assert max(seen) >= 1.0, seen
    deadline = time.monotonic() + 30
    while load() != 0.0:  # and back to 0 once the answers are in
        assert time.monotonic() < deadline
        time.sleep(0.05)

    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="misconfigured", messages=[{"role": "user", "content": "hi"}])
    assert "not-served" in exc.value.message and exc.value.body["type"] == "not_found_error"


# -- the vLLM-shaped double ----------------------------------------------------------------------------
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def residency(gw_url: str) -> dict[str, dict]:
    return {b["name"]: b["residency"] for b in httpx.get(gw_url + "/admin/backends").json()["backends"]}


def wait_residency(gw_url: str, name: str, want: dict, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := residency(gw_url)[name]) != want:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_sleeping_engine_is_cold_and_a_warm_replica_serves(spawn: Spawner) -> None:
    sleepy = spawn.double("sleepy", MODEL)
    warm = spawn.double("warm", MODEL)
    gw = spawn.gateway({"health": {"interval": 0.2},
                        "backends": [{"name": "sleepy", "kind": "vllm", "url": sleepy.url, "weight": 100},
                                     {"name": "warm", "kind": "vllm", "url": warm.url}]})
    # --sleep-idle-ttl: /health still 200, vllm:engine_sleep_state{sleep_state="awake"} 0
    httpx.post(sleepy.url + "/_sleep", params={"level": 1})
    wait_residency(gw.url, "sleepy", {MODEL: "sleeping"})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
    for _ in range(4):  # weight 100 would pick "sleepy" every time if it were warm
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user",
                                                                                          "content": "hi"}])
        assert raw.headers["x-llm-gateway-backend"] == "warm"
    assert sleepy.stats()["received"] == 0
    # an inference request wakes it (idle_sleep/middleware.py); the next probe sees it warm again
    httpx.post(sleepy.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    wait_residency(gw.url, "sleepy", {})
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-llm-gateway-backend"] == "sleepy"


TOOLS = [{"type": "function", "function": {"name": n, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    for n in ("get_weather", "get_time")]


def turn(client: openai.OpenAI, messages: list[dict], stream: bool, **kw: Any) -> tuple[Any, list[dict], Any]:
    """One assistant turn with this module's TOOLS (tests/agent_turns.py)."""
    return assistant_turn(client, MODEL, TOOLS, messages, stream, **kw)


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_call_round_trip(spawn: Spawner, stream: bool) -> None:
    d = spawn.double("vllm-tools", MODEL)
    gw = spawn.gateway({"backends": [{"name": "v", "kind": "vllm", "url": d.url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
    messages: list[dict] = [{"role": "user", "content": "Weather and time in Paris?"}]
    planned = [{"name": "get_weather", "arguments": {"city": "Paris"}},
               {"name": "get_time", "arguments": {"city": "Paris"}}]
    content, calls, finish = turn(client, messages, stream, extra_body={"x_double": {"tool_calls": planned}})
    assert finish == "tool_calls" and not content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("chatcmpl-tool-") for c in calls)
    messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    results = {"get_weather": "sunny, 21 C", "get_time": "14:05"}
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c["id"], "content": results[c["function"]["name"]]})
    content, calls2, finish = turn(client, messages, stream,
                                   extra_body={"x_double": {"text": "Sunny, 21 C, and it is 14:05."}})
    assert content == "Sunny, 21 C, and it is 14:05." and not calls2 and finish == "stop"
    got = d.requests()[-1]["body"]["messages"]  # the history reached vLLM with its ids intact
    assert [tc["id"] for tc in got[1]["tool_calls"]] == [c["id"] for c in calls]
    assert [(m["tool_call_id"], m["content"]) for m in got[2:]] == \
        [(c["id"], results[c["function"]["name"]]) for c in calls]
