"""`llm-gateway serve` with no config: probe default ports, recognise kinds, serve what is found."""

from __future__ import annotations

import json

import httpx
import openai

from tests.procs import Spawner, free_port


def test_finds_and_serves_backends_on_probed_ports(spawn: Spawner) -> None:
    vllm_like = spawn.double("found", "Qwen/Qwen2.5-0.5B-Instruct")  # owned_by vllm, like vLLM
    other = spawn.double("generic", "gen-model", "--owned-by", "acme")
    empty = free_port()
    gw = spawn.gateway(None, env={"GATEWAY_AUTODISCOVER__PORTS": json.dumps([vllm_like.port, other.port, empty])})
    log = gw.proc.output()
    assert f"found vllm at http://127.0.0.1:{vllm_like.port}" in log
    assert f"found openai at http://127.0.0.1:{other.port}" in log
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["Qwen/Qwen2.5-0.5B-Instruct", "gen-model"]
    r = client.chat.completions.create(model="Qwen/Qwen2.5-0.5B-Instruct",
                                       messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from found, this is a streamed answer"
    assert httpx.get(gw.url + "/readyz").status_code == 200


def test_starts_with_nothing_found_and_says_how_to_configure(spawn: Spawner) -> None:
    gw = spawn.gateway(None, env={"GATEWAY_AUTODISCOVER__PORTS": json.dumps([free_port()])})
    assert httpx.get(gw.url + "/healthz").status_code == 200
    r = httpx.get(gw.url + "/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"
    log = gw.proc.output()
    assert "no inference server found" in log and "--config" in log
    assert httpx.get(gw.v1 + "/models").json()["data"] == []


def test_gateway_config_env_var_selects_the_file(spawn: Spawner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    up = spawn.double("envcfg", "m")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"backends:\n  - {{name: envcfg, kind: vllm, url: '{up.url}'}}\n"
                   f"models:\n  - {{name: public, backends: [envcfg]}}\n")
    gw = spawn.gateway(None, env={"GATEWAY_CONFIG": str(cfg)})
    # a backend serving one model maps `backends: [name]` to that model
    assert sorted(m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]) == ["public"]
    r = httpx.post(gw.v1 + "/chat/completions",
                   json={"model": "public", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and up.requests()[-1]["body"]["model"] == "m"


def test_fastchat_controller_is_recognised_and_served(spawn: Spawner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A stand-in answering a FastChat controller's liveness route and (empty) model list as
    # fastchat/serve/controller.py does: recognised, added as kind fastchat, down until a worker
    # registers. (Real FastChat behind the gateway: tests/test_fastchat_gateway.py.)
    port = free_port()
    script = tmp_path / "ctl.py"
    script.write_text(
        "from aiohttp import web\n"
        "app = web.Application()\n"
        "app.router.add_get('/test_connection', lambda r: web.json_response('success'))\n"
        "app.router.add_post('/list_models', lambda r: web.json_response({'models': []}))\n"
        f"web.run_app(app, host='127.0.0.1', port={port}, print=None)\n")
    import sys
    ctl = spawn.proc([sys.executable, str(script)], "controller")
    ctl.wait_http(f"http://127.0.0.1:{port}/test_connection")
    gw = spawn.gateway(None, env={"GATEWAY_AUTODISCOVER__PORTS": json.dumps([port])})
    assert f"found fastchat at http://127.0.0.1:{port}" in gw.proc.output()
    b = httpx.get(gw.url + "/admin/backends").json()["backends"][0]
    assert (b["kind"], b["state"]) == ("fastchat", "down") and "no live model worker" in b["detail"]


def test_a_discovered_controller_may_name_workers_on_its_own_host_only(spawn: Spawner) -> None:
    # Any local process answering /test_connection becomes a controller: it must not be able to
    # send the gateway (and clients' prompts) to another host.
    import time

    from tests.doubles.fastchat_fake import controller, worker
    good = worker("127.0.0.1", "good-model", "Hello from good")
    elsewhere = worker("127.0.0.2", "elsewhere", "never")
    ctl = controller("127.0.0.1", {"good-model": good.url, "elsewhere": elsewhere.url})
    try:
        gw = spawn.gateway(None, env={"GATEWAY_AUTODISCOVER__PORTS": json.dumps([ctl.port])})
        deadline = time.monotonic() + 30
        while [b["state"] for b in httpx.get(gw.url + "/admin/backends").json()["backends"]] != ["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert f"found fastchat at {ctl.url}" in gw.proc.output()
        assert sorted(m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]) == ["good-model"]
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "good-model", "messages": [
            {"role": "user", "content": "hi"}]})
        assert r.json()["choices"][0]["message"]["content"] == "Hello from good"
        assert elsewhere.requests == []
    finally:
        for s in (ctl, good, elsewhere):
            s.close()
