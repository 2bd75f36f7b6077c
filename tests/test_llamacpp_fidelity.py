"""llama.cpp protocol fidelity against the real llama-server (issue 12: audit defects 18 and 22, and
structured output), through the gateway with the official openai client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Gateway, Spawner, free_port

pytestmark = pytest.mark.llamacpp
GREEDY = {"temperature": 0.0, "seed": 1, "extra_body": {"cache_prompt": False}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "sunny", "temp"],
           "properties": {"city": {"enum": ["Paris", "Rome"]}, "sunny": {"type": "boolean"},
                          "temp": {"type": "integer", "minimum": 0, "maximum": 40}}}


def start_llama(spawn: Spawner, llama_binary: Path, tiny_gguf: Path, name: str, *extra: str) -> str:
    from tests.backends.llamacpp import server_args, wait_ready
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    p = spawn.proc(server_args(llama_binary, tiny_gguf, port, alias="tiny-llama", extra=list(extra)), name)
    wait_ready(p, url, timeout=60)
    return url


def client_for(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def gw(backend_llamacpp: BackendUnderTest, module_spawn: Spawner) -> Gateway:
    return module_spawn.gateway({"backends": [{"name": "llama", "kind": "llamacpp", "url": backend_llamacpp.url}]})


# -- defect 18: /v1/completions logprobs ----------------------------------------------------------------
def check_legacy(lp: Any, text: str, start: int = 0) -> int:
    """The openai SDK's `Logprobs`: parallel lists, text_offset running over the answer's text."""
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs)
    assert all(isinstance(t, dict) and 1 <= len(t) <= 2 for t in lp.top_logprobs)
    offset = start
    for tok, off in zip(lp.tokens, lp.text_offset):
        assert off == offset
        offset += len(tok)
    assert "".join(lp.tokens) == text
    return offset


def test_completion_logprobs_in_the_legacy_shape(gw: Gateway) -> None:
    # llama-server answers them in the chat shape, {"content": [...]}, stream or not
    # (tools/server/server-task.cpp probs_to_json); vLLM and OpenAI in the legacy one
    client = client_for(gw)
    r = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=6, logprobs=2, **GREEDY)
    text = r.choices[0].text
    check_legacy(r.choices[0].logprobs, text)
    offset, streamed = 0, ""
    for c in client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=6, logprobs=2,
                                       stream=True, **GREEDY):
        if c.choices and c.choices[0].logprobs is not None:
            offset = check_legacy(c.choices[0].logprobs, c.choices[0].text, offset)
        streamed += c.choices[0].text if c.choices else ""
    assert streamed == text and offset == len(text)


def test_echo_is_refused_not_ignored(gw: Gateway) -> None:
    # llama-server ignores `echo`: the answer would lack the prompt (and its logprobs) with a 200
    with pytest.raises(openai.BadRequestError) as exc:
        client_for(gw).completions.create(model="tiny-llama", prompt="Once", max_tokens=2, echo=True, logprobs=1)
    assert exc.value.body["param"] == "echo"  # type: ignore[index]


# -- defect 22: a sleeping llama-server is cold, and the probes do not wake it ------------------------
def test_sleeping_server_is_cold_and_stays_asleep(llama_binary: Path, tiny_gguf: Path,
                                                   backend_llamacpp: BackendUnderTest, spawn: Spawner) -> None:
    sleepy = start_llama(spawn, llama_binary, tiny_gguf, "llama-sleepy", "--sleep-idle-seconds", "1")
    gw = spawn.gateway({"health": {"interval": 0.3},
                        "backends": [{"name": "sleepy", "kind": "llamacpp", "url": sleepy},
                                     {"name": "warm", "kind": "llamacpp", "url": backend_llamacpp.url}],
                        "models": [{"name": "tiny", "backends": [{"backend": "sleepy", "weight": 100}, "warm"]}]})
    # Asleep, the model is unloaded and /health stays 200; /props says is_sleeping.
    def wait_residency(want: dict) -> dict:
        deadline = time.monotonic() + 60
        while (b := {x["name"]: x for x in httpx.get(gw.url + "/admin/backends").json()["backends"]})["sleepy"][
                "residency"] != want:
            assert time.monotonic() < deadline, b["sleepy"]
            time.sleep(0.1)
        return b["sleepy"]

    wait_residency({"tiny-llama": "sleeping"})
    client = client_for(gw)
    for _ in range(3):  # weight 100 would pick "sleepy" every time if it were warm
        raw = client.completions.with_raw_response.create(model="tiny", prompt="Once", max_tokens=2)
        assert raw.headers["x-llm-gateway-backend"] == "warm"
    # Woken by a request, it must fall asleep again while the gateway probes it every 0.3 s: a GET
    # /slots (SERVER_TASK_TYPE_SLOT_GET) restarts the idle timer and wakes a sleeping server
    # (server-queue.cpp:24-26, server-context.cpp:4710-4718), GET /metrics and /props do neither.
    httpx.post(sleepy + "/v1/completions", json={"prompt": "Once", "max_tokens": 2}, timeout=60)
    deadline = time.monotonic() + 30  # the idle TTL is 1 s
    while not httpx.get(sleepy + "/props").json()["is_sleeping"]:
        assert time.monotonic() < deadline, "the gateway's probes keep llama-server awake"
        time.sleep(0.1)
    b = wait_residency({"tiny-llama": "sleeping"})
    assert b["state"] == "ready" and b["reported_load"] == 0.0


# -- structured output with a JSON schema, for real ----------------------------------------------------
@pytest.fixture(scope="module")
def schema_gw(llama_binary: Path, tiny_gguf: Path, module_spawn: Spawner) -> Gateway:
    # --no-jinja: with the Jinja path llama-server prefixes the schema grammar with the generation
    # prompt and feeds it the prompt's tokens (common/sampling.cpp prefill); the tiny test vocabulary
    # (SentencePiece) tokenises "assistant\n" after <|im_start|> with a leading "▁", which that
    # grammar rejects ("Failed to initialize samplers"). Real models' vocabularies do not.
    url = start_llama(module_spawn, llama_binary, tiny_gguf, "llama-schema", "--no-jinja")
    return module_spawn.gateway({"backends": [{"name": "llama", "kind": "llamacpp", "url": url}]})


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_structured_output(schema_gw: Gateway, stream: bool) -> None:
    client = client_for(schema_gw)
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
    messages: Any = [{"role": "user", "content": "Weather in Paris as JSON"}]
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny-llama", messages=messages, response_format=fmt, max_tokens=150, stream=True) if c.choices)
    else:
        r = client.chat.completions.create(model="tiny-llama", messages=messages, response_format=fmt, max_tokens=150)
        assert r.choices[0].finish_reason == "stop"
        text = r.choices[0].message.content or ""
    jsonschema.validate(json.loads(text), WEATHER)  # a random model, but grammar-constrained


# -- defect 24: reasoning field name --------------------------------------------------------------------
# A chat template that renders reasoning in <think> tags: llama-server's template analysis then splits a
# <think> block off the answer into `reasoning_content` (--reasoning-format deepseek).
THINK_TEMPLATE = (
    "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' and message.get('reasoning_content') -%}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- (message['content'] or '') + '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
# the tiny random model "thinks" what a grammar makes it say
THINK = {"grammar": 'root ::= "<think>\\npondering\\n</think>\\n\\nAnswer"'}


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_field_renames_reasoning_content(llama_binary: Path, tiny_gguf: Path, tmp_path: Path,
                                                   spawn: Spawner, stream: bool) -> None:
    template = tmp_path / "think.jinja"
    template.write_text(THINK_TEMPLATE)
    url = start_llama(spawn, llama_binary, tiny_gguf, "llama-think", "--chat-template-file", str(template),
                      "--reasoning-format", "deepseek")
    gw = spawn.gateway({"backends": [{"name": "native", "kind": "llamacpp", "url": url, "discover": False},
                                     {"name": "renamed", "kind": "llamacpp", "url": url, "discover": False,
                                      "reasoning_field": "reasoning"}],
                        "models": [{"name": "native", "backends": ["native"]},
                                   {"name": "renamed", "backends": ["renamed"]}]})
    client = client_for(gw)
    for model, key, absent in (("native", "reasoning_content", "reasoning"),
                               ("renamed", "reasoning", "reasoning_content")):
        messages: Any = [{"role": "user", "content": "Think first"}]
        if stream:
            chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=40, stream=True,
                                                         extra_body=THINK))
            deltas = [c.choices[0].delta.model_extra or {} for c in chunks if c.choices]
            reasoning = "".join(d.get(key) or "" for d in deltas)
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert not any(absent in d for d in deltas)
        else:
            m = client.chat.completions.create(model=model, messages=messages, max_tokens=40,
                                               extra_body=THINK).choices[0].message
            reasoning, content = (m.model_extra or {}).get(key), m.content
            assert absent not in (m.model_extra or {})
        assert (reasoning or "").strip() == "pondering" and content == "Answer"
