"""README "Errors": the codes a broken or refusing upstream produces, end to end.

tests/test_errors.py covers the client's own mistakes; here the upstream misbehaves (a malformed
HTTP answer, a connection dropped mid-body, a 504) or cannot serve the request at all.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.procs import Double, Gateway, Spawner, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> tuple[Gateway, Double]:
    up = module_spawn.double("broken", "m")
    nowhere = f"http://127.0.0.1:{free_port()}"  # capability checks happen before any backend is called
    gw = module_spawn.gateway({
        "upstream": {"max_attempts": 1},
        "routing": {"eject_after_errors": 100},  # the broken answers below must not take "broken" out
        "backends": [{"name": "broken", "kind": "vllm", "url": up.url},
                     {"name": "fc", "kind": "fastchat", "url": nowhere},
                     {"name": "ol", "kind": "ollama", "url": nowhere},
                     {"name": "no-tools", "kind": "openai", "url": up.url, "capabilities": {"tools": False}}],
        "models": [{"name": "fc-model", "backends": [{"backend": "fc", "model": "vicuna"}]},
                   {"name": "ol-model", "backends": [{"backend": "ol", "model": "llama3.2"}]},
                   {"name": "nt-model", "backends": [{"backend": "no-tools", "model": "m"}]}],
    })
    return gw, up


def chat(gw: Gateway, **body: object) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES, **body},
                      headers=JSON, timeout=30)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_a_malformed_http_answer_is_upstream_protocol_error(env) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    for raw in ("this is not HTTP at all\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Length: 7\r\n\r\n{}"):
        err = error_of(chat(gw, x_double={"raw": raw}), 502)
        assert (err["type"], err["code"]) == ("server_error", "upstream_protocol_error"), raw
    assert chat(gw).status_code == 200  # the backend stays in service


def test_a_connection_dropped_mid_body_is_upstream_disconnected(env) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    raw = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"id": "chatcmpl-1", '
    err = error_of(chat(gw, x_double={"raw": raw}), 502)
    assert (err["type"], err["code"]) == ("server_error", "upstream_disconnected")
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"x_double": {"raw": raw}})
    assert exc.value.status_code == 502 and exc.value.code == "upstream_disconnected"


def test_an_upstream_504_stays_504(env) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    err = error_of(chat(gw, x_double={"status": 504, "type": "GatewayTimeout"}), 504)
    assert err["type"] == "server_error"
    # and a 500 becomes 502, for comparison: only 503 and 504 keep their status
    assert chat(gw, x_double={"status": 500}).status_code == 502


@pytest.mark.parametrize(("model", "extra", "missing"), [
    ("fc-model", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ("nt-model", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ("ol-model", {"n": 2}, "n > 1"),
])
def test_a_request_no_backend_can_serve_is_400_unsupported_parameter(env, model: str, extra: dict,  # type: ignore[no-untyped-def]
                                                                     missing: str) -> None:
    gw, up = env
    up.reset()
    err = error_of(chat(gw, model=model, **extra), 400)
    assert (err["type"], err["code"]) == ("invalid_request_error", "unsupported_parameter")
    assert model in err["message"] and missing in err["message"]
    assert up.requests() == []  # refused before any backend was called
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MESSAGES, **extra)
    assert exc.value.code == "unsupported_parameter"
