"""Every error the gateway emits is an OpenAI envelope with the right status."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.procs import Double, Gateway, Spawner, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> tuple[Gateway, Double, Double]:
    up = module_spawn.double("err-up", "m")
    doomed = module_spawn.double("doomed", "gone-model")
    gw = module_spawn.gateway({
        "server": {"max_body_bytes": 4096},
        "upstream": {"max_attempts": 1},
        "backends": [{"name": "err-up", "kind": "vllm", "url": up.url},
                     {"name": "doomed", "kind": "vllm", "url": doomed.url},
                     {"name": "never-up", "kind": "vllm", "url": f"http://127.0.0.1:{free_port()}"}],
        "models": [{"name": "waiting", "backends": [{"backend": "never-up", "model": "x"}]}],
    })
    return gw, up, doomed


def post(gw: Gateway, path: str, content: bytes | str) -> httpx.Response:
    return httpx.post(gw.v1 + path, content=content, headers={"content-type": "application/json"}, timeout=10)


def assert_envelope(r: httpx.Response, status: int, etype: str, code: str | None = None,
                    param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and isinstance(err["message"], str)
    assert err["type"] == etype
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/embeddings"])
def test_malformed_json_is_400(env, path: str) -> None:  # type: ignore[no-untyped-def]
    assert_envelope(post(env[0], path, b'{"model": "m", "messages": ['), 400, "invalid_request_error", "invalid_json")
    assert_envelope(post(env[0], path, b"[1, 2]"), 400, "invalid_request_error", "invalid_json")
    assert_envelope(post(env[0], path, b"\xff\xfe"), 400, "invalid_request_error", "invalid_json")


def test_missing_model_and_inputs_are_400(env) -> None:  # type: ignore[no-untyped-def]
    gw = env[0]
    assert_envelope(post(gw, "/chat/completions", '{"messages": []}'), 400, "invalid_request_error",
                    "missing_required_parameter", "model")
    assert_envelope(post(gw, "/chat/completions", '{"model": 5, "messages": []}'), 400,
                    "invalid_request_error", param="model")
    assert_envelope(post(gw, "/chat/completions", '{"model": "m"}'), 400, "invalid_request_error",
                    "missing_required_parameter", "messages")
    assert_envelope(post(gw, "/chat/completions", '{"model": "m", "messages": "hi"}'), 400,
                    "invalid_request_error", param="messages")
    assert_envelope(post(gw, "/completions", '{"model": "m"}'), 400, "invalid_request_error", param="prompt")
    assert_envelope(post(gw, "/embeddings", '{"model": "m"}'), 400, "invalid_request_error", param="input")
    assert_envelope(post(gw, "/chat/completions", '{"model": "m", "messages": [{}], "stream": "yes"}'), 400,
                    "invalid_request_error", param="stream")


def test_body_over_limit_is_413(env) -> None:  # type: ignore[no-untyped-def]
    big = '{"model": "m", "messages": [{"role": "user", "content": "' + "x" * 5000 + '"}]}'
    assert_envelope(post(env[0], "/chat/completions", big), 413, "invalid_request_error", "request_too_large")

    def chunked():  # no Content-Length: the limit still holds while reading
        yield big[:2000].encode()
        yield big[2000:].encode()

    r = httpx.post(env[0].v1 + "/chat/completions", content=chunked(), timeout=10,
                   headers={"content-type": "application/json"})
    assert_envelope(r, 413, "invalid_request_error", "request_too_large")


def test_unknown_model_is_404_and_the_openai_client_understands_it(env) -> None:  # type: ignore[no-untyped-def]
    gw = env[0]
    assert_envelope(post(gw, "/chat/completions", '{"model": "nope", "messages": [{}]}'), 404,
                    "not_found_error", "model_not_found", "model")
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert exc.value.code == "model_not_found"


@pytest.mark.parametrize(("upstream", "status", "etype"), [
    (400, 400, "invalid_request_error"), (422, 422, "invalid_request_error"), (404, 404, "not_found_error"),
    (429, 429, "rate_limit_error"), (500, 502, "server_error"), (503, 503, "server_error"),
])
def test_upstream_errors_keep_a_sensible_status(env, upstream: int, status: int, etype: str) -> None:  # type: ignore[no-untyped-def]
    r = post(env[0], "/chat/completions", f'{{"model": "m", "messages": [{{}}], '
             f'"x_double": {{"status": {upstream}, "message": "upstream says no"}}}}')
    err = assert_envelope(r, status, etype)
    rid = r.headers["x-request-id"]
    if upstream < 500:  # the client's business: the backend's words pass through
        assert err["message"] == "upstream says no"
    else:  # the backend's words stay in the gateway's log; the client learns who failed and the request id
        assert err["message"] == f"backend err-up failed (HTTP {upstream}); request id {rid}"
        logged = [ln for ln in env[0].proc.output().splitlines() if f"request id {rid}:" in ln]
        assert len(logged) == 1 and "WARNING" in logged[0] and "upstream says no" in logged[0]


def test_stream_options_without_stream_is_400(env) -> None:  # type: ignore[no-untyped-def]
    assert_envelope(post(env[0], "/chat/completions",
                         '{"model": "m", "messages": [{}], "stream_options": {"include_usage": true}}'),
                    400, "invalid_request_error", param="stream_options")


def test_no_ready_deployment_is_503(env) -> None:  # type: ignore[no-untyped-def]
    r = post(env[0], "/chat/completions", '{"model": "waiting", "messages": [{}]}')
    assert_envelope(r, 503, "server_error", "no_ready_deployment")
    assert r.headers["retry-after"]


def test_unreachable_backend_is_502_then_taken_out(env) -> None:  # type: ignore[no-untyped-def]
    gw, _, doomed = env
    doomed.proc.stop()  # it was ready; the gateway learns of its death from the next request
    r = post(gw, "/chat/completions", '{"model": "gone-model", "messages": [{}]}')
    assert_envelope(r, 502, "server_error", "upstream_connect_failed")
    # passive health took it out at once: no more connection attempts, a clear 503 instead
    r = post(gw, "/chat/completions", '{"model": "gone-model", "messages": [{}]}')
    assert_envelope(r, 503, "server_error", "no_ready_deployment")
    backends = httpx.get(gw.url + "/admin/backends").json()["backends"]
    assert {b["name"]: b["state"] for b in backends}["doomed"] == "down"


def test_wrong_method_and_unknown_path(env) -> None:  # type: ignore[no-untyped-def]
    gw = env[0]
    r = httpx.get(gw.v1 + "/chat/completions")
    assert_envelope(r, 405, "invalid_request_error", "method_not_allowed")
    assert_envelope(httpx.get(gw.url + "/v2/nothing"), 404, "not_found_error")


def test_api_keys(spawn: Spawner) -> None:
    up = spawn.double("auth-up", "m")
    gw = spawn.gateway({"auth": {"api_keys": ["k-one-4f1c9a7e2b", "k-two-8d3e6b0a5c"]},
                        "backends": [{"name": "auth-up", "kind": "vllm", "url": up.url}]})
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-one-4f1c9a7e2b"}):
        r = httpx.post(gw.v1 + "/chat/completions", content=body, headers={**headers, **JSON})
        if headers.get("Authorization") == "k-one-4f1c9a7e2b":
            assert r.status_code == 200  # a bare key is accepted like Azure-style clients send it
        else:
            assert_envelope(r, 401, "authentication_error", "invalid_api_key")
    assert httpx.post(gw.v1 + "/chat/completions", content=body,
                      headers={"Authorization": "Bearer k-two-8d3e6b0a5c", **JSON}).status_code == 200
    assert httpx.post(gw.v1 + "/chat/completions", content=body,
                      headers={"X-Api-Key": "k-one-4f1c9a7e2b", **JSON}).status_code == 200
    assert_envelope(httpx.get(gw.v1 + "/models"), 401, "authentication_error")
    client = openai.OpenAI(base_url=gw.v1, api_key="k-one-4f1c9a7e2b", max_retries=0)
    assert [m.id for m in client.models.list()] == ["m"]
    assert httpx.get(gw.url + "/healthz").status_code == 200
    assert "k-one-4f1c9a7e2b" not in gw.proc.output() and "k-two-8d3e6b0a5c" not in gw.proc.output()


@pytest.mark.parametrize("upstream", [{"first_byte_timeout": 0.5}, {"read_timeout": 0.5},
                                      {"total_timeout": 0.8, "read_timeout": 30}])
def test_timeouts(spawn: Spawner, upstream: dict) -> None:
    up = spawn.double("slow", "m")
    gw = spawn.gateway({"upstream": {**upstream, "max_attempts": 1},
                        "backends": [{"name": "slow", "kind": "vllm", "url": up.url}]})
    # non-stream: the double answers after 5x the timeout that should fire, so nothing comes back before then
    delay = 4.0 if "total_timeout" in upstream else 2.5
    r = httpx.post(gw.v1 + "/chat/completions", timeout=20, json={
        "model": "m", "messages": MESSAGES, "x_double": {"delay": delay}})
    if "read_timeout" in upstream and len(upstream) == 1:
        assert r.status_code == 200  # the idle timeout only starts once the answer has begun
    else:
        assert_envelope(r, 504, "server_error", "upstream_timeout")
    if "first_byte_timeout" in upstream:
        return
    # stream: chunks 2.5 s apart (the 0.5 s idle timeout cuts after the first, 5x margin), or 0.5 s
    # apart for >= 4 s in all (only the 0.8 s total timeout can cut it); either way the client is told
    delay = 2.5 if len(upstream) == 1 else 0.5
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=20, json={
            "model": "m", "messages": MESSAGES, "stream": True, "x_double": {"delay": delay}}) as s:
        events = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    assert events[-1] == "data: [DONE]" and "upstream_timeout" in events[-2]
