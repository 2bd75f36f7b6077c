"""Passive ejection per deployment on multi-model backends (protocol audit #19).

Ollama answers 500 for one model's load or scheduling failure while its other models keep working
(ollama server/routes.go handleScheduleError); a llama.cpp router is the same. Counting those 500s per
backend took every model of the backend out. On a backend that serves several models the run of
failures is now counted per model and ejects only that deployment, until the next good probe.
"""

from __future__ import annotations

import httpx

from adapters.base import Probe, ServedModel, State
from gateway.health import HealthMonitor
from gateway.runtime import Gateway
from gateway.settings import GatewaySettings
from tests.procs import Spawner

JSON = {"Content-Type": "application/json"}


def chat(gw_url: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(gw_url + "/v1/chat/completions", headers=JSON, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def test_one_failing_model_does_not_take_the_backends_other_models_out(spawn: Spawner) -> None:
    multi = spawn.double("multi", "good,bad")
    single = spawn.double("single", "solo")
    gw = spawn.gateway({
        "upstream": {"max_attempts": 1},
        "health": {"interval": 60},  # no probe undoes anything during the test
        "backends": [{"name": "multi", "kind": "vllm", "url": multi.url},
                     {"name": "single", "kind": "vllm", "url": single.url}],
    })
    for i in range(3):  # three distinct failing requests: a run the backend is responsible for
        r = chat(gw.url, "bad", x_double={"status": 500}, seed=i)
        assert r.status_code == 502, r.text
    admin = {b["name"]: b for b in httpx.get(gw.url + "/admin/backends").json()["backends"]}
    assert admin["multi"]["state"] == "ready"
    assert list(admin["multi"]["ejected_models"]) == ["bad"]
    # the failing model is out of service; the backend's other model still serves
    r = chat(gw.url, "bad")
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_ready_deployment"
    assert chat(gw.url, "good").status_code == 200
    # a single-model backend is still taken out as a whole (its one model is the backend)
    for i in range(3):
        assert chat(gw.url, "solo", x_double={"status": 500}, seed=i).status_code == 502
    admin = {b["name"]: b for b in httpx.get(gw.url + "/admin/backends").json()["backends"]}
    assert admin["single"]["state"] == "down" and admin["single"]["ejected_models"] == {}
    assert httpx.get(gw.url + "/readyz").status_code == 200  # `good` still serves


def test_a_good_probe_brings_an_ejected_model_back() -> None:
    gw = Gateway(GatewaySettings(backends=[{"name": "m", "kind": "vllm", "url": "http://127.0.0.1:9"}]))
    b = gw.backends["m"]
    b.served = (ServedModel("good"), ServedModel("bad"))
    b.ejected["bad"] = "3 server errors in a row"
    b.model_errors["bad"] = 2
    monitor = HealthMonitor(gw)
    monitor.apply(b, Probe(State.DOWN, detail="refused"))
    assert b.ejected  # only a good probe clears it
    monitor.apply(b, Probe(State.READY, [ServedModel("good"), ServedModel("bad")]))
    assert not b.ejected and not b.model_errors and b.usable("bad")
