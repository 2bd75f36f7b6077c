"""README "Backend kinds": per-kind quirks that only unit tests covered, now through a running
gateway, against the wire-format doubles (one gateway for all of them) and a real llama-server.

Probes are every 60 s here: a state change seen right after a request came from the request path.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Double, Gateway, Spawner, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}
RWKV_PATH = "models/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"
RWKV_MODEL = "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096"


DOUBLES = {  # name: (module, ready path, args); started together, then waited for
    "llama": ("openai_server", "/health", ("--name", "llama-like", "--models", "tiny-llama")),
    "vllm": ("openai_server", "/health", ("--name", "vllm-r", "--models", "qwq")),
    "tgi": ("tgi_server", "/health", ("--model-id", "org/tgi-model")),
    "ollama": ("ollama_server", "/api/version", ("--models", "llama3.2", "--loaded", "llama3.2")),
    "rwkv": ("rwkv_server", "/status", ("--preload", RWKV_PATH)),
}


@pytest.fixture(scope="module")
def kinds(module_spawn: Spawner) -> tuple[Gateway, dict[str, Double]]:
    d = {}
    for name, (module, _, args) in DOUBLES.items():
        port = free_port()
        proc = module_spawn.proc([sys.executable, "-m", f"tests.doubles.{module}", "--port", str(port), *args],
                                 f"{module}-{name}")
        d[name] = Double(proc, port, name)
    for name, (_, ready, _) in DOUBLES.items():
        d[name].proc.wait_http(d[name].url + ready)
    gw = module_spawn.gateway({
        "upstream": {"stream_keepalive": 0},
        "health": {"interval": 60},
        "backends": [{"name": "llama", "kind": "llamacpp", "url": d["llama"].url},
                     {"name": "vr", "kind": "vllm", "url": d["vllm"].url, "reasoning_field": "reasoning_content"},
                     {"name": "vplain", "kind": "vllm", "url": d["vllm"].url},
                     {"name": "tgi", "kind": "tgi", "url": d["tgi"].url},
                     {"name": "ollama", "kind": "ollama", "url": d["ollama"].url},
                     {"name": "rwkv", "kind": "rwkv-runner", "url": d["rwkv"].url}],
        "models": [{"name": "renamed", "backends": [{"backend": "vr", "model": "qwq"}]},
                   {"name": "plain", "backends": [{"backend": "vplain", "model": "qwq"}]}],
    })
    return gw, d


def states(gw: Gateway) -> dict[str, str]:
    return {b["name"]: b["state"] for b in httpx.get(gw.url + "/admin/backends").json()["backends"]}


def chat(gw: Gateway, model: str, **extra: object) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json={"model": model, "messages": MESSAGES, **extra},
                      headers=JSON, timeout=30)


def state_gauge(gw: Gateway, backend: str) -> str:
    text = httpx.get(gw.url + "/metrics").text
    on = [s.labels["state"] for f in text_string_to_metric_families(text) for s in f.samples
          if s.name == "llm_gateway_backend_state" and s.labels["backend"] == backend and s.value == 1]
    assert len(on) == 1, on
    return on[0]


def test_llamacpp_503_loading_marks_the_backend_loading_at_once(kinds) -> None:  # type: ignore[no-untyped-def]
    gw, d = kinds
    assert states(gw)["llama"] == "ready"
    assert chat(gw, "tiny-llama").status_code == 200
    # the server starts reloading (e.g. restarted under the same address): every route answers
    # llama-server's 503 "Loading model"; the request tells the gateway before any probe can
    httpx.post(d["llama"].url + "/_loading?on=1")
    try:
        r = chat(gw, "tiny-llama")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "backend_loading" and r.headers["retry-after"]
        assert states(gw)["llama"] == "loading"
        assert state_gauge(gw, "llama") == "loading"
        # no traffic goes to it meanwhile: the gateway answers without calling it
        before = len(d["llama"].requests())
        r = chat(gw, "tiny-llama")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_ready_deployment"
        assert len(d["llama"].requests()) == before
    finally:
        httpx.post(d["llama"].url + "/_loading?on=0")


def test_vllm_reasoning_field_renamed_through_the_gateway(kinds) -> None:  # type: ignore[no-untyped-def]
    gw, _ = kinds
    knob = {"x_double": {"reasoning": "first, think"}}
    plain = chat(gw, "plain", **knob).json()["choices"][0]["message"]
    assert plain["reasoning"] == "first, think" and "reasoning_content" not in plain  # passed through as is
    msg = chat(gw, "renamed", **knob).json()["choices"][0]["message"]
    assert msg["reasoning_content"] == "first, think" and "reasoning" not in msg
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    deltas = [c.choices[0].delta for c in client.chat.completions.create(
        model="renamed", messages=MESSAGES, stream=True, extra_body=knob) if c.choices]
    assert [x.model_extra["reasoning_content"] for x in deltas if "reasoning_content" in x.model_extra] == \
        ["first, think"]
    assert not any("reasoning" in x.model_extra for x in deltas)
    assert "".join(x.content or "" for x in deltas).startswith("Hello from vllm-r")


def test_tgi_embeddings_refused_with_400_before_calling_it(kinds) -> None:  # type: ignore[no-untyped-def]
    gw, d = kinds
    r = httpx.post(gw.v1 + "/embeddings", json={"model": "org/tgi-model", "input": "hello"}, headers=JSON)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "unsupported_parameter")
    assert "embeddings" in err["message"]
    assert not [q for q in d["tgi"].requests() if "embed" in q["path"]]
    assert chat(gw, "org/tgi-model").status_code == 200  # the same model chats


def test_ollama_only_fields_reach_ollama(kinds) -> None:  # type: ignore[no-untyped-def]
    gw, d = kinds
    r = chat(gw, "llama3.2:latest", think=False, truncate=False, shift=False, format="json", top_k=5,
             options={"mirostat": 2, "repeat_last_n": 32}, max_tokens=4)
    assert r.status_code == 200, r.text
    sent = [q for q in d["ollama"].requests() if q["path"] == "/api/chat"][-1]["body"]
    assert (sent["think"], sent["truncate"], sent["shift"], sent["format"]) == (False, False, False, "json")
    assert sent["options"] == {"top_k": 5, "num_predict": 4, "mirostat": 2, "repeat_last_n": 32}
    r = httpx.post(gw.v1 + "/completions", headers=JSON, timeout=30, json={
        "model": "llama3.2:latest", "prompt": "Once", "think": False, "truncate": True})
    assert r.status_code == 200, r.text
    sent = [q for q in d["ollama"].requests() if q["path"] == "/api/generate"][-1]["body"]
    assert (sent["think"], sent["truncate"], sent["raw"]) == (False, True, True)


def test_rwkv_model_not_loaded_marks_the_backend_loading(kinds) -> None:  # type: ignore[no-untyped-def]
    gw, d = kinds
    assert states(gw)["rwkv"] == "ready"
    assert chat(gw, RWKV_MODEL).status_code == 200
    # the model is unloaded behind the gateway's back: RWKV-Runner answers 400 "model not loaded"
    r = httpx.post(d["rwkv"].url + "/switch-model", json={"model": "", "strategy": "cpu fp32"})
    assert r.status_code == 200 and httpx.get(d["rwkv"].url + "/status").json()["status"] == 0
    r = chat(gw, RWKV_MODEL)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "backend_loading"
    assert states(gw)["rwkv"] == "loading" and state_gauge(gw, "rwkv") == "loading"


@pytest.mark.llamacpp
def test_llamacpp_load_from_metrics_when_slots_are_off(llama_binary: Path, spawn: Spawner, tmp_path: Path) -> None:
    from tests.backends.llamacpp import server_args, write_tiny_gguf
    # a large context so that one answer runs long enough (seconds) to be seen by the probes
    model = write_tiny_gguf(tmp_path / "long.gguf", n_ctx_train=8192)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spawn.proc(server_args(llama_binary, model, port, alias="long", ctx=4096, parallel=1, extra=["--no-slots"]),
               "llama-no-slots").wait_http(url + "/health", timeout=60)
    deadline = time.monotonic() + 60
    while httpx.get(url + "/health").status_code != 200:  # 503 while the model loads
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(url + "/slots").status_code == 501  # really off; /metrics is on (server_args)
    gw = spawn.gateway({"health": {"interval": 0.05}, "backends": [{"name": "ns", "kind": "llamacpp", "url": url}]})

    def load() -> float | None:
        return httpx.get(gw.url + "/admin/backends").json()["backends"][0]["reported_load"]

    assert load() == 0.0  # a figure (from /metrics), not None
    busy = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not busy.is_set():
            if (load() or 0.0) >= 1.0:  # llamacpp:requests_processing while the answer is generated
                busy.set()
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    try:  # a long answer, left as soon as the busy slot was seen (leaving cancels it upstream)
        with httpx.stream("POST", gw.v1 + "/chat/completions", headers=JSON, timeout=120, json={
                "model": "long", "messages": MESSAGES, "max_tokens": 3500, "temperature": 0.0, "stream": True,
                "ignore_eos": True, "cache_prompt": False}) as r:
            for _ in r.iter_lines():
                if busy.is_set():
                    break
    finally:
        stop.set()
        w.join()
    assert busy.is_set()
    deadline = time.monotonic() + 30  # ... and idle again once the slot is free
    while load() != 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
