"""Real vLLM (CPU, tiny random model) behind the gateway: discovery, load from its /metrics,
version, and its 404 for a model name it does not serve."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.backends_under_test import BackendUnderTest
from tests.procs import Spawner

pytestmark = pytest.mark.vllm


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

    # load comes from vllm:num_requests_running + waiting while a long answer is generated
    seen: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(httpx.get(gw.url + "/admin/backends").json()["backends"][0]["reported_load"] or 0.0)
            time.sleep(0.1)

    w = threading.Thread(target=watch)
    w.start()
    r = client.chat.completions.create(model="tiny-vllm", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=200, extra_body={"ignore_eos": True})
    stop.set()
    w.join()
    assert r.usage.completion_tokens == 200
    assert max(seen) >= 1.0, seen

    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="misconfigured", messages=[{"role": "user", "content": "hi"}])
    assert "not-served" in exc.value.message and exc.value.body["type"] == "not_found_error"
