"""Real llama-server (built from the llama.cpp sources in llama-cpp-python's sdist, tiny generated
GGUF models) behind the gateway, through the official openai client."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner, free_port

pytestmark = pytest.mark.llamacpp
GREEDY = {"temperature": 0.0, "seed": 1, "extra_body": {"ignore_eos": True, "cache_prompt": False}}
MESSAGES = [{"role": "user", "content": "Tell me a story about a cat"}]


def backend_states(gw_url: str) -> dict[str, dict]:
    return {b["name"]: b for b in httpx.get(gw_url + "/admin/backends").json()["backends"]}


@pytest.fixture(scope="module")
def pool_gateway(llama_servers: list[BackendUnderTest], module_spawn: Spawner):  # type: ignore[no-untyped-def]
    gw = module_spawn.gateway({
        "health": {"interval": 0.3},
        "backends": [{"name": f"llama{i}", "kind": "llamacpp", "url": s.url} for i, s in enumerate(llama_servers)],
        "models": [{"name": "tiny", "aliases": ["pool"], "backends": ["llama0", "llama1"]}],
    })
    return gw, openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)


def test_two_llama_servers_as_one_pool(pool_gateway) -> None:  # type: ignore[no-untyped-def]
    gw, client = pool_gateway
    # `backends: [llama0, llama1]` with no upstream name: each server's only model (its alias)
    route = httpx.get(gw.url + "/admin/backends").json()["routes"][0]
    assert [(d["backend"], d["upstream_model"]) for d in route["deployments"]] == [
        ("llama0", "tiny-llama"), ("llama1", "tiny-llama")]
    seen = set()
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="pool", messages=MESSAGES, max_tokens=3, **GREEDY)
        seen.add(raw.headers["x-llm-gateway-backend"])
        r = raw.parse()
        assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    assert seen == {"llama0", "llama1"}
    card = client.models.retrieve("tiny")
    assert card.model_extra["context_length"] == 256


def test_stop_sequences(pool_gateway) -> None:  # type: ignore[no-untyped-def]
    _, client = pool_gateway
    full = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=24, **GREEDY)
    text = full.choices[0].text
    # greedy decoding repeats itself exactly: stop at a piece from the middle of that answer
    cut = len(text) // 2
    stop = text[cut:cut + 3]
    assert stop.strip(), repr(text)
    again = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=24, stop=[stop], **GREEDY)
    assert again.choices[0].finish_reason == "stop"
    assert again.choices[0].text == text[:text.index(stop)]  # llama.cpp leaves the stop string out
    streamed = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=24, stop=[stop],
                                              stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == again.choices[0].text


def test_context_overflow_is_context_length_exceeded(pool_gateway) -> None:  # type: ignore[no-untyped-def]
    _, client = pool_gateway
    long = " ".join(["story"] * 600)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], max_tokens=4)
    assert exc.value.code == "context_length_exceeded"
    assert "context" in exc.value.message


def test_embeddings_without_flag_are_a_clear_400(pool_gateway) -> None:  # type: ignore[no-untyped-def]
    _, client = pool_gateway
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="tiny", input="hello")
    assert exc.value.code == "unsupported_endpoint" and "--embeddings" in exc.value.message


def test_usage_and_load_from_slots(llama_binary: Path, spawn: Spawner, tmp_path: Path) -> None:
    from tests.backends.llamacpp import server_args, write_tiny_gguf
    # its own model and server with a large context, so one answer runs long enough (~3 s) to be
    # seen in /slots
    model = write_tiny_gguf(tmp_path / "long.gguf", n_ctx_train=8192)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spawn.proc(server_args(llama_binary, model, port, alias="long", ctx=4096, parallel=1),
               "llama-long").wait_http(url + "/health", timeout=60)
    gw = spawn.gateway({"health": {"interval": 0.05}, "backends": [{"name": "long", "kind": "llamacpp", "url": url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)
    seen: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(backend_states(gw.url)["long"]["reported_load"] or 0.0)
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    chunks = list(client.chat.completions.create(model="long", messages=MESSAGES, max_tokens=3500, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    stop.set()
    w.join()
    assert chunks[-1].usage.completion_tokens == 3500 and chunks[-1].usage.prompt_tokens > 0
    assert max(seen) >= 1.0, seen  # a busy slot seen in /slots while the answer streamed
    deadline = time.monotonic() + 10  # ... and free again once the slot is released
    while backend_states(gw.url)["long"]["reported_load"] != 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    b = backend_states(gw.url)["long"]
    assert b["version"] and b["state"] == "ready"


def test_loading_state_then_ready(llama_binary: Path, spawn: Spawner, tmp_path: Path) -> None:
    from tests.backends.llamacpp import server_args, write_tiny_gguf
    big = write_tiny_gguf(tmp_path / "big.gguf", size="loading")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gw = spawn.gateway({"health": {"interval": 0.2, "not_ready_interval": 0.1},
                        "backends": [{"name": "big", "kind": "llamacpp", "url": url}],
                        "models": [{"name": "big-model", "backends": [{"backend": "big", "model": "big"}]}]})
    states = [backend_states(gw.url)["big"]["state"]]
    assert states == ["starting"]  # nothing listens yet
    spawn.proc(server_args(llama_binary, big, port, alias="big"), "llama-big")
    refused_while_loading = False
    deadline = time.monotonic() + 120
    while states[-1] != "ready":
        assert time.monotonic() < deadline, states
        s = backend_states(gw.url)["big"]["state"]
        if s != states[-1]:
            states.append(s)
        if s == "loading" and not refused_while_loading:
            r = httpx.post(gw.v1 + "/chat/completions", json={"model": "big-model", "messages": MESSAGES})
            # the gateway itself refuses: no traffic reaches a loading backend
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_ready_deployment"
            refused_while_loading = True
        time.sleep(0.05)
    assert "loading" in states and refused_while_loading, states
    r = httpx.post(gw.v1 + "/chat/completions", timeout=60,
                   json={"model": "big-model", "messages": MESSAGES, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_router_mode_serves_every_model_and_loads_on_demand(llama_binary: Path, tiny_gguf: Path, spawn: Spawner,
                                                            tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "alpha.gguf")
    shutil.copy(tiny_gguf, models / "beta.gguf")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    p = spawn.proc([str(llama_binary), "--models-dir", str(models), "--no-models-autoload", "--host", "127.0.0.1",
                    "--port", str(port), "-c", "256", "-np", "1", "-t", "2", "--no-webui"], "llama-router")
    p.wait_http(url + "/health", timeout=60)
    gw = spawn.gateway({"health": {"interval": 0.3},
                        "backends": [{"name": "router", "kind": "llamacpp", "url": url}]})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120)
    assert sorted(m.id for m in client.models.list()) == ["alpha", "beta"]
    b = backend_states(gw.url)["router"]
    assert b["residency"] == {"alpha": "unloaded", "beta": "unloaded"}
    # the router was started with --no-models-autoload; the gateway asks it to load on demand
    r = client.chat.completions.create(model="beta", messages=MESSAGES, max_tokens=3, **GREEDY)
    assert r.usage.completion_tokens == 3
    deadline = time.monotonic() + 30
    while backend_states(gw.url)["router"]["residency"].get("beta") != "loaded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert backend_states(gw.url)["router"]["residency"]["alpha"] == "unloaded"
