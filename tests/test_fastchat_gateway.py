"""Real FastChat (controller + two HF model workers on CPU) behind the gateway, with no FastChat
API server: the gateway speaks to the controller and the workers itself."""

from __future__ import annotations

import signal

import httpx
import openai
import pytest

from tests.procs import Spawner

pytestmark = pytest.mark.fastchat
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def admin(gw_url: str) -> dict:
    return httpx.get(gw_url + "/admin/backends").json()["backends"][0]


def test_workers_found_through_the_controller_and_both_used(fastchat_cluster: dict, spawn: Spawner) -> None:
    gw = spawn.gateway({"backends": [{"name": "fc", "kind": "fastchat", "url": fastchat_cluster["controller"]}]})
    b = admin(gw.url)
    assert b["state"] == "ready" and b["detail"] == "2 live worker(s)" and b["models"] == ["tiny-fastchat"]
    card = httpx.get(gw.v1 + "/models").json()["data"][0]
    assert card["id"] == "tiny-fastchat" and card["context_length"] == 512  # from /model_details
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60)
    before = {w["url"]: httpx.post(w["url"] + "/worker_get_status").json() for w in fastchat_cluster["workers"]}
    assert all(s["queue_length"] == 0 for s in before.values())
    r = client.chat.completions.create(model="tiny-fastchat", messages=MESSAGES, max_tokens=5)
    assert r.usage.completion_tokens > 0 and r.choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-fastchat", messages=MESSAGES, max_tokens=5, stream=True) if c.choices)
    assert text  # cumulative worker text became deltas
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny-fastchat", messages=[
            {"role": "user", "content": " ".join(["hello"] * 700)}])
    assert exc.value.code == "context_length_exceeded"  # from /count_token against the 512 context
    e = client.embeddings.create(model="tiny-fastchat", input=["Hello world", "Bye"])
    assert len(e.data) == 2 and e.usage.prompt_tokens > 0


def test_a_dead_worker_still_listed_by_the_controller_is_not_used(fastchat_cluster: dict, spawn: Spawner,
                                                                    tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a separate pair of workers, so the session cluster stays whole for other tests
    from tests.backends import fastchat_env
    from tests.backends.hf_model import write_tiny_llama
    from tests.procs import free_port
    venv = fastchat_env.ensure_fastchat_venv()
    model = write_tiny_llama(tmp_path / "m")
    cport = free_port()
    controller = f"http://127.0.0.1:{cport}"
    argv, env = fastchat_env.controller_args(venv, cport)
    spawn.proc(argv, "ctl", env=env).wait_http(controller + "/test_connection")
    workers = []
    for i in range(2):
        port = free_port()
        argv, env = fastchat_env.worker_args(venv, model, port, controller, model_names="doomed-model")
        p = spawn.proc(argv, f"w{i}", env=env)
        fastchat_env.wait_worker_ready(f"http://127.0.0.1:{port}", timeout=180, proc=p)
        workers.append(p)
    gw = spawn.gateway({"health": {"interval": 60},  # no probe will help: the request path must cope
                        "backends": [{"name": "fc", "kind": "fastchat", "url": controller}]})
    assert admin(gw.url)["detail"] == "2 live worker(s)"
    workers[0].stop(signal.SIGKILL)
    assert "doomed-model" in httpx.post(controller + "/list_models").json()["models"]  # still listed
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60)
    for _ in range(4):  # none fails: a refused worker is marked dead and the retry goes to the other
        assert client.chat.completions.create(model="doomed-model", messages=MESSAGES, max_tokens=2).usage
    assert admin(gw.url)["state"] == "ready"


def test_a_worker_configured_directly(fastchat_cluster: dict, spawn: Spawner) -> None:
    url = fastchat_cluster["workers"][0]["url"]
    gw = spawn.gateway({"backends": [{"name": "w", "kind": "fastchat", "url": url}]})
    assert admin(gw.url)["detail"] == "1 live worker(s)"
    r = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60).completions.create(
        model="tiny-fastchat", prompt="Once upon a time", max_tokens=4)
    assert r.choices[0].text and r.usage.completion_tokens > 0
