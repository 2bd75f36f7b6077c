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
