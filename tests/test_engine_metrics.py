"""README "Engine metrics": the engines' own load figures re-exported in one schema
(llm_gateway_engine_*{backend}), read by the health probes. Through a running gateway in front of
doubles of five kinds (vLLM, TGI, Ollama, RWKV-Runner, a plain OpenAI server) and the session's real
llama-server, vLLM and FastChat.

Load is put on each engine directly, past the gateway: the gateway can only know of it from the
engine's own report, which is the point. Expected values come from the work the test sent and from
the engine's own endpoint read at the same time, never from the gateway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backends_under_test import BackendUnderTest
from tests.test_adapters import fake_fetch
from tests.procs import Double, Gateway, Spawner, free_port

RUN, WAIT = "llm_gateway_engine_requests_running", "llm_gateway_engine_requests_waiting"
KV, LOADED = "llm_gateway_engine_kv_cache_usage_ratio", "llm_gateway_engine_models_loaded"
MEM = "llm_gateway_engine_model_memory_bytes"
ENGINE = (RUN, WAIT, KV, LOADED, MEM)
RWKV_PTH = "models/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth"


def engine(gw: Gateway, backend: str) -> dict[tuple[str, str], float]:
    """The engine series of one backend: {(metric, model label or ""): value}."""
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return {(s.name, s.labels.get("model", "")): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name in ENGINE and s.labels.get("backend") == backend}


def prom(text: str) -> dict[str, float]:
    """An engine's own exposition: value per metric name, summed over label sets."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def wait_for(cond: Callable[[], bool], what: str | Callable[[], str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.03)


def wait_engine(gw: Gateway, backend: str, want: dict[tuple[str, str], float], timeout: float = 20.0) -> None:
    """Until the backend's engine series are exactly `want` (no more, no fewer)."""
    seen: list[Any] = []
    wait_for(lambda: seen.append(engine(gw, backend)) or seen[-1] == want,
             lambda: f"{backend}: want {want}, last seen {seen[-1] if seen else None}", timeout)


def in_threads(n: int, fn: Callable[[], Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> dict[str, Any]:
    d: dict[str, Double] = {
        "vllm": module_spawn.double("em-vllm", "m-vllm", "--max-num-seqs", "2", "--num-gpu-blocks", "8"),
        "tgi": module_spawn.start_double("tgi_server", "/health", "--model-id", "org/m-tgi", name="em-tgi"),
        "ollama": module_spawn.start_double("ollama_server", "/api/version", "--models", "llama3.2,qwen2.5:0.5b",
                                            "--loaded", "llama3.2", name="em-ollama"),
        "rwkv": module_spawn.start_double("rwkv_server", "/status", "--preload", RWKV_PTH, name="em-rwkv"),
        "openai": module_spawn.double("em-openai", "m-openai"),
    }
    kinds = {"vllm": "vllm", "tgi": "tgi", "ollama": "ollama", "rwkv": "rwkv-runner", "openai": "openai"}
    gw = module_spawn.gateway({"health": {"interval": 0.1, "not_ready_interval": 0.1},
                               "backends": [{"name": n, "kind": kinds[n], "url": d[n].url} for n in d]})
    return {"gw": gw, **d}


def test_idle_engines_report_their_own_figures_and_nothing_they_do_not_report(env: dict[str, Any]) -> None:
    gw = env["gw"]
    # vLLM: scheduler gauges and KV usage from /metrics; one model loaded (awake)
    wait_engine(gw, "vllm", {(RUN, ""): 0, (WAIT, ""): 0, (KV, ""): 0, (LOADED, ""): 1})
    # TGI: batch and queue from /metrics, no KV figure. TGI sets those gauges on its first request
    # (metrics-exporter-prometheus has no series before): none yet, so none exported either.
    own = prom(httpx.get(env["tgi"].url + "/metrics").text)
    assert "tgi_queue_size" not in own and "tgi_batch_current_size" not in own
    wait_engine(gw, "tgi", {(LOADED, ""): 1})
    # Ollama: resident models and each one's memory from /api/ps, no queue figures
    ps = httpx.get(env["ollama"].url + "/api/ps").json()["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest"]
    wait_engine(gw, "ollama", {(LOADED, ""): 1, (MEM, "llama3.2:latest"): ps[0]["size"]})
    # RWKV-Runner: /status says only that a model is loaded
    wait_engine(gw, "rwkv", {(LOADED, ""): 1})
    # a plain OpenAI-compatible server reports nothing: no series at all (absent, not 0)
    assert engine(gw, "openai") == {}


def test_running_waiting_and_kv_usage_under_load(env: dict[str, Any]) -> None:
    gw, vllm, tgi = env["gw"], env["vllm"], env["tgi"]

    def held_vllm() -> None:
        httpx.post(vllm.url + "/v1/chat/completions", timeout=60, json={
            "model": "m-vllm", "messages": [{"role": "user", "content": "hi"}], "x_double": {"hold": True}})

    def tgi_request(ctl: dict[str, Any]) -> Callable[[], None]:
        return lambda: httpx.post(tgi.url + "/generate", timeout=60, json={
            "inputs": "hi", "parameters": {"max_new_tokens": 3}, "x_double": ctl})

    threads = in_threads(3, held_vllm)  # 3 in flight, max_num_seqs 2: 2 running, 1 waiting
    threads += in_threads(2, tgi_request({"hold": True}))  # held in TGI's queue
    threads += in_threads(1, tgi_request({"hold_after": 1}))  # in the batch, held after its first token
    try:
        wait_for(lambda: vllm.stats()["in_flight"] == 3 and tgi.stats()["queued"] == 2 and tgi.stats()["batch"] == 1,
                 "the load reached the engines")
        own = prom(httpx.get(vllm.url + "/metrics").text)  # what vLLM itself says
        assert (own["vllm:num_requests_running"], own["vllm:num_requests_waiting"]) == (2, 1)
        wait_engine(gw, "vllm", {(RUN, ""): 2, (WAIT, ""): 1, (KV, ""): own["vllm:kv_cache_usage_perc"],
                                 (LOADED, ""): 1})
        assert 0 < own["vllm:kv_cache_usage_perc"] <= 1
        own = prom(httpx.get(tgi.url + "/metrics").text)
        assert (own["tgi_batch_current_size"], own["tgi_queue_size"]) == (1, 2)
        wait_engine(gw, "tgi", {(RUN, ""): 1, (WAIT, ""): 2, (LOADED, ""): 1})
    finally:
        vllm.release()
        tgi.release()
        tgi.release()  # the batch's request holds again after the queue's were let go
        for t in threads:
            t.join(30)
    wait_engine(gw, "vllm", {(RUN, ""): 0, (WAIT, ""): 0, (KV, ""): 0, (LOADED, ""): 1})
    wait_engine(gw, "tgi", {(RUN, ""): 0, (WAIT, ""): 0, (LOADED, ""): 1})


def test_ollama_resident_models_and_memory_follow_api_ps(env: dict[str, Any]) -> None:
    gw, ollama = env["gw"], env["ollama"]

    def want() -> dict[tuple[str, str], float]:
        ps = httpx.get(ollama.url + "/api/ps").json()["models"]
        return {(LOADED, ""): len(ps), **{(MEM, m["name"]): m["size"] for m in ps}}

    r = httpx.post(ollama.url + "/api/generate", timeout=60, json={"model": "qwen2.5:0.5b", "prompt": "hi",
                                                                   "stream": False})
    assert r.status_code == 200, r.text
    loaded = want()
    assert loaded[(LOADED, "")] == 2 and (MEM, "qwen2.5:0.5b") in loaded
    wait_engine(gw, "ollama", loaded)
    # unloaded (keep_alive 0): its memory series goes, not a stale value or a 0
    r = httpx.post(ollama.url + "/api/generate", timeout=60, json={"model": "qwen2.5:0.5b", "keep_alive": 0})
    assert r.status_code == 200, r.text
    wait_for(lambda: want()[(LOADED, "")] == 1, "Ollama unloaded the model")
    wait_engine(gw, "ollama", want())
    assert (MEM, "qwen2.5:0.5b") not in engine(gw, "ollama")


def test_a_backend_that_goes_down_loses_its_engine_series(env: dict[str, Any]) -> None:
    gw = env["gw"]
    wait_for(lambda: engine(gw, "vllm") != {} and engine(gw, "rwkv") != {}, "series present first")
    env["vllm"].proc.stop()
    wait_engine(gw, "vllm", {})
    assert engine(gw, "rwkv") == {(LOADED, ""): 1}  # the others stay


# -- real engines ----------------------------------------------------------------------------------------
def long_chat(url: str, model: str, max_tokens: int) -> Callable[[], None]:
    return lambda: httpx.post(url + "/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True})


def watch(gw: Gateway, backend: str, stop: threading.Event) -> tuple[threading.Thread, list[dict]]:
    seen: list[dict] = []

    def run() -> None:
        while not stop.is_set():
            seen.append(engine(gw, backend))
            time.sleep(0.02)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, seen


@pytest.mark.llamacpp
def test_llama_server_processing_deferred_and_slot_usage(llama_binary: Path, spawn: Spawner, tmp_path: Path) -> None:
    from tests.backends.llamacpp import server_args, write_tiny_gguf
    # one slot and a long context: one answer runs for seconds, a second one is deferred meanwhile
    model = write_tiny_gguf(tmp_path / "long.gguf", n_ctx_train=8192)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spawn.proc(server_args(llama_binary, model, port, alias="long", ctx=4096, parallel=1),
               "llama-long").wait_http(url + "/health", timeout=60)
    gw = spawn.gateway({"health": {"interval": 0.05}, "backends": [{"name": "lc", "kind": "llamacpp", "url": url}]})
    idle = {(RUN, ""): 0, (WAIT, ""): 0, (KV, ""): 0, (LOADED, ""): 1}
    wait_engine(gw, "lc", idle)
    stop = threading.Event()
    w, seen = watch(gw, "lc", stop)
    threads = in_threads(2, long_chat(url, "long", 3000))
    for t in threads:
        t.join(300)
    stop.set()
    w.join()
    # both seen at once: one running in the only slot (usage 1/1), the other deferred
    assert {(RUN, ""): 1, (WAIT, ""): 1, (KV, ""): 1, (LOADED, ""): 1} in seen, seen[::20]
    wait_engine(gw, "lc", idle)


@pytest.mark.vllm
def test_real_vllm_running_and_kv_usage(backend_vllm: BackendUnderTest, spawn: Spawner) -> None:
    gw = spawn.gateway({"health": {"interval": 0.1},
                        "backends": [{"name": "v", "kind": "vllm", "url": backend_vllm.url}]})
    wait_for(lambda: engine(gw, "v").get((LOADED, "")) == 1, "vLLM's figures exported", 60)
    idle = engine(gw, "v")
    own = prom(httpx.get(backend_vllm.url + "/metrics").text)
    assert idle == {(RUN, ""): own["vllm:num_requests_running"], (WAIT, ""): own["vllm:num_requests_waiting"],
                    (KV, ""): own["vllm:kv_cache_usage_perc"], (LOADED, ""): 1}
    stop = threading.Event()
    w, seen = watch(gw, "v", stop)
    for _ in range(5):  # a probe every 0.1 s lands inside 4 x 200-token generations on a healthy machine
        threads = in_threads(4, long_chat(backend_vllm.url, backend_vllm.model, 200))
        for t in threads:
            t.join(300)
        if any(s.get((RUN, ""), 0) >= 1 and s.get((KV, ""), 0) > 0 for s in seen):
            break
    stop.set()
    w.join()
    busy = [s for s in seen if s.get((RUN, ""), 0) >= 1]
    assert busy and any(0 < s[(KV, "")] <= 1 for s in busy), seen[::20]
    assert all(s[(RUN, "")] + s[(WAIT, "")] <= 4 for s in busy)
    wait_for(lambda: engine(gw, "v").get((RUN, "")) == 0, "idle again", 30)


@pytest.mark.fastchat
def test_fastchat_queue_length_as_running_and_live_workers(fastchat_cluster: dict, spawn: Spawner) -> None:  # type: ignore[type-arg]
    from tests.test_fastchat_behaviour import busy
    gw = spawn.gateway({"health": {"interval": 0.1},
                        "backends": [{"name": "fc", "kind": "fastchat", "url": fastchat_cluster["controller"]}]})
    workers, model = fastchat_cluster["workers"], fastchat_cluster["model"]
    wait_engine(gw, "fc", {(RUN, ""): 0, (LOADED, ""): len(workers)}, 60)
    stop = threading.Event()
    threads = busy(workers[0]["url"], model, 2, stop) + busy(workers[1]["url"], model, 1, stop)
    try:
        # the workers' queue_length sum (2 + 1), which FastChat does not split into running and waiting
        seen: list[dict] = []
        wait_for(lambda: seen.append(engine(gw, "fc")) or seen[-1].get((RUN, "")) == 3,
                 lambda: f"3 reported: {seen[-20:]}", 60)
        assert seen[-1] == {(RUN, ""): 3, (LOADED, ""): 2}
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    wait_engine(gw, "fc", {(RUN, ""): 0, (LOADED, ""): 2}, 60)


# -- the adapters' parsing, on the bytes other builds send (paths the session's engines do not take) ----
def probe(adapter_cls: Any, routes: dict[str, tuple[int, bytes]]) -> Any:
    import asyncio

    from adapters.base import BackendTarget
    return asyncio.run(adapter_cls(BackendTarget("b", "http://up")).probe(fake_fetch(routes)))


LC = {"/health": (200, b'{"status":"ok"}'),
      "/v1/models": (200, b'{"object":"list","data":[{"id":"tiny","object":"model","owned_by":"llamacpp"}]}')}


def test_llamacpp_builds_without_sleep_read_slots_and_older_ones_report_kv() -> None:
    from adapters.base import EngineStats
    from adapters.llamacpp import LlamaCppAdapter
    # a build that cannot sleep (no is_sleeping in /props): /slots, busy / all slots, no queue figure
    slots = b'[{"id":0,"is_processing":true},{"id":1,"is_processing":false},{"id":2,"is_processing":false}]'
    p = probe(LlamaCppAdapter, {**LC, "/props": (200, b'{"total_slots":3}'), "/slots": (200, slots)})
    assert p.engine == EngineStats(running=1.0, kv_usage=1 / 3, models_loaded=1)
    # builds before May 2025 (--no-slots, --metrics): their own kv_cache_usage_ratio wins over busy slots
    old = (b"# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.125\n"
           b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n"
           b"# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 4\n")
    p = probe(LlamaCppAdapter, {**LC, "/props": (200, b'{"total_slots":2}'), "/slots": (501, b"{}"),
                                "/metrics": (200, old)})
    assert p.engine == EngineStats(running=1.0, waiting=4.0, kv_usage=0.125, models_loaded=1) and p.load == 5.0


def test_vllm_data_parallel_engines_add_up_and_the_older_kv_name_counts() -> None:
    from adapters.base import EngineStats
    from adapters.vllm import VLLMAdapter
    routes = {"/health": (200, b""), "/version": (200, b'{"version":"0.9.1"}'),
              "/v1/models": (200, b'{"object":"list","data":[{"id":"m","object":"model","max_model_len":256}]}')}
    text = "".join(f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {r}\n'
                   f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} {w}\n'
                   f'vllm:gpu_cache_usage_perc{{engine="{e}",model_name="m"}} {kv}\n'
                   for e, r, w, kv in ((0, 2.0, 1.0, 0.5), (1, 3.0, 0.0, 0.25)))
    p = probe(VLLMAdapter, {**routes, "/metrics": (200, text.encode())})
    assert p.engine == EngineStats(running=5.0, waiting=1.0, kv_usage=0.375, models_loaded=1)


def test_ollama_memory_only_under_names_the_backend_lists() -> None:
    from adapters.ollama import OllamaAdapter
    tags = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":2019393189}]}'
    ps = (b'{"models":[{"name":"llama3.2:latest","size":3000000000,"size_vram":1000000000},'
          b'{"name":"made-up-by-a-broken-proxy","size":5}]}')
    p = probe(OllamaAdapter, {"/api/tags": (200, tags), "/api/ps": (200, ps), "/api/version": (200, b"{}")})
    assert p.engine.model_memory == {"llama3.2:latest": 3000000000} and p.engine.models_loaded == 2


def test_tgi_without_metrics_still_reports_its_one_model() -> None:
    from adapters.base import EngineStats
    from adapters.tgi import TGIAdapter
    info = b'{"model_id":"org/m","max_total_tokens":2048,"max_concurrent_requests":128,"version":"3.3.6"}'
    p = probe(TGIAdapter, {"/health": (200, b""), "/info": (200, info), "/metrics": (404, b""),
                           "/api-doc/openapi.json": (200, b'{"paths":{"/v1/completions":{}}}')})
    assert p.engine == EngineStats(models_loaded=1) and p.load is None


def test_llamacpp_asleep_and_router_mode_read_neither_slots_nor_metrics() -> None:
    from adapters.base import EngineStats
    from adapters.llamacpp import LlamaCppAdapter
    # asleep: nothing runs and its model is unloaded; /slots and /metrics are not routes here: never read
    p = probe(LlamaCppAdapter, {**LC, "/props": (200, b'{"total_slots":2,"is_sleeping":true}')})
    assert p.engine == EngineStats(running=0.0, waiting=0.0, models_loaded=0)
    # router: each model's status from /v1/models; the loaded ones count
    cards = b",".join(b'{"id":"%s","object":"model","status":{"value":"%s"}}' % (n, s)
                      for n, s in ((b"a", b"loaded"), (b"b", b"unloaded"), (b"c", b"loaded")))
    p = probe(LlamaCppAdapter, {"/health": LC["/health"], "/v1/models": (200, b'{"data":[' + cards + b"]}"),
                                "/props": (200, b'{"role":"router"}')})
    assert p.engine == EngineStats(models_loaded=2)
