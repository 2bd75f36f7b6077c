"""What errors may say, what may count against a backend, what a request body may cost.

S7/S8: no backend 5xx text or internal host:port reaches a client; a request id ties the client's
answer to the gateway's log. S10: error-code metric labels come from a closed set. S6: one
client's poison request cannot eject a backend. S3: inference takes only application/json.
S18: bodies over 1 MiB are read and parsed a few at a time.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import UPSTREAM_ERROR_CODES
from tests.procs import Double, Gateway, Spawner

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}
SECRET = "postgresql://svc:hunter2@10.0.3.7/prod"
TRACEBACK = f'Traceback (most recent call last):\n  File "/srv/internal/app/engine.py", line 7\n{SECRET}'


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def states(gw: Gateway) -> dict[str, str]:
    return {b["name"]: b["state"] for b in httpx.get(gw.url + "/admin/backends", timeout=10).json()["backends"]}


def chat(gw: Gateway, content: str = "hi", timeout: float = 30, **x_double: object) -> httpx.Response:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": content}]}
    if x_double:
        body["x_double"] = x_double
    return httpx.post(gw.v1 + "/chat/completions", json=body, timeout=timeout)


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> tuple[Gateway, Double]:
    up = module_spawn.double("sec-up", "m")
    gw = module_spawn.gateway({"upstream": {"max_attempts": 1, "stream_keepalive": 0},
                               "health": {"interval": 60},  # states below change by requests only
                               "routing": {"eject_after_errors": 1000},
                               "backends": [{"name": "sec-up", "kind": "vllm", "url": up.url}]})
    return gw, up


# -- S7: a backend's 5xx text stays in the log ------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_backend_5xx_text_never_reaches_the_client(env, stream: bool, status: int) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    r = httpx.post(gw.v1 + "/chat/completions", timeout=30, json={
        "model": "m", "messages": MESSAGES, "stream": stream,
        "x_double": {"status": status, "message": TRACEBACK + "x" * 10_000, "type": "InternalServerError"}})
    assert r.status_code == {500: 502}.get(status, status)
    rid = r.headers["x-request-id"]
    assert len(rid) == 16 and int(rid, 16) >= 0
    err = r.json()["error"]
    assert err["message"] == f"backend sec-up failed (HTTP {status}); request id {rid}"
    assert err["type"] == "server_error"
    assert "hunter2" not in r.text and "Traceback" not in r.text and "engine.py" not in r.text
    # the operator finds it by the id: one warning line, the backend's text truncated to ~2 KB
    logged = [ln for ln in gw.proc.output().splitlines() if f"request id {rid}:" in ln]
    assert len(logged) == 1 and "WARNING" in logged[0] and "sec-up" in logged[0] and "hunter2" in logged[0]
    assert 2048 < len(logged[0]) < 3000


def test_4xx_text_passes_through_and_every_answer_has_a_request_id(env) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    r = chat(gw, status=400, message="prompt has 9000 tokens; the limit is 4096")
    assert r.status_code == 400 and r.json()["error"]["message"] == "prompt has 9000 tokens; the limit is 4096"
    ids = {r.headers["x-request-id"]}
    ok = chat(gw)
    assert ok.status_code == 200
    ids.add(ok.headers["x-request-id"])
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30,
                      json={"model": "m", "messages": MESSAGES, "stream": True}) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        ids.add(s.headers["x-request-id"])
        s.read()
    for bad in (httpx.post(gw.v1 + "/chat/completions", json={"model": "nope", "messages": MESSAGES}),
                httpx.post(gw.v1 + "/chat/completions", content=b"{", headers=JSON),
                httpx.post(gw.v1 + "/chat/completions", content=b"{}", headers={"content-type": "text/plain"})):
        assert bad.status_code in (404, 400, 415)
        ids.add(bad.headers["x-request-id"])
    assert len(ids) == 6  # one per request


# -- S8: no internal host:port in a client-facing message ---------------------------------------------
def test_an_unreachable_backend_is_named_but_not_located(spawn: Spawner) -> None:
    doomed = spawn.double("doomed", "m")
    gw = spawn.gateway({"upstream": {"max_attempts": 1}, "health": {"interval": 60},
                        "backends": [{"name": "doomed", "kind": "vllm", "url": doomed.url}]})
    wait_for(lambda: states(gw)["doomed"] == "ready", "the first probe")
    doomed.proc.stop()  # its port is closed now: connection refused
    r = chat(gw)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_connect_failed"
    assert err["message"].startswith("backend doomed is unreachable (") and "connection refused" in err["message"]
    assert err["message"].endswith(f"; request id {r.headers['x-request-id']}")
    assert "127.0.0.1" not in r.text and str(doomed.port) not in r.text


# -- S10: error-code labels from a closed set ----------------------------------------------------------
def test_upstream_error_codes_cannot_grow_the_metric_labels(env) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    rnd = random.Random(19)
    sent = []
    for i in range(12):
        code = f"code-{rnd.getrandbits(48):012x}"
        status = (400, 409, 422, 500, 502, 503)[i % 6]
        sent.append(code)
        r = chat(gw, status=status, message="no", type="invalid_request_error", code=code)
        assert r.status_code == {500: 502}.get(status, status)
        if status < 500:  # the client still reads the backend's own code
            assert r.json()["error"]["code"] == code
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    labels = {s.labels["code"] for fam in text_string_to_metric_families(text)
              if fam.name == "llm_gateway_upstream_errors" for s in fam.samples if s.labels.get("backend") == "sec-up"}
    assert labels and labels <= UPSTREAM_ERROR_CODES, labels
    assert "other" in labels
    assert not any(code in text for code in sent)


# -- S6: ejection counts the backend's failures, not one client's poison request -----------------------
def test_one_poison_request_resent_does_not_eject(spawn: Spawner) -> None:
    up = spawn.double("victim", "m")
    gw = spawn.gateway({"upstream": {"max_attempts": 1}, "health": {"interval": 60},
                        "routing": {"eject_after_errors": 3},
                        "backends": [{"name": "victim", "kind": "vllm", "url": up.url}]})
    wait_for(lambda: states(gw)["victim"] == "ready", "the first probe")
    codes = [chat(gw, "the same poison", status=500).status_code for _ in range(10)]
    assert codes == [502] * 10  # every one reached the backend: it was never taken out
    assert states(gw)["victim"] == "ready" and up.stats()["received"] == 10
    # the poison counted once; with two more different requests, three in a row are the backend's problem
    assert [chat(gw, f"other {i}", status=500).status_code for i in range(2)] == [502] * 2
    assert states(gw)["victim"] == "down"


def test_timeouts_count_once_per_request(spawn: Spawner) -> None:
    up = spawn.double("slow", "m")
    gw = spawn.gateway({"upstream": {"max_attempts": 1, "first_byte_timeout": 0.5}, "health": {"interval": 60},
                        "routing": {"eject_after_errors": 3},
                        "backends": [{"name": "slow", "kind": "vllm", "url": up.url}]})
    wait_for(lambda: states(gw)["slow"] == "ready", "the first probe")
    # answers 5 s late, after the 0.5 s first-byte timeout: a huge generation, resent by its client
    assert [chat(gw, "a long essay", delay=5).status_code for _ in range(4)] == [504] * 4
    assert states(gw)["slow"] == "ready"
    assert [chat(gw, f"another {i}", delay=5).status_code for i in range(2)] == [504] * 2
    assert states(gw)["slow"] == "down"


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_of_the_backend_count_every_time(spawn: Spawner, status: int) -> None:
    up = spawn.double("flaky", "m")
    gw = spawn.gateway({"upstream": {"max_attempts": 1}, "health": {"interval": 60},
                        "routing": {"eject_after_errors": 3},
                        "backends": [{"name": "flaky", "kind": "vllm", "url": up.url}]})
    wait_for(lambda: states(gw)["flaky"] == "ready", "the first probe")
    assert [chat(gw, "same", status=status).status_code for _ in range(2)] == [status] * 2
    assert states(gw)["flaky"] == "ready"
    assert chat(gw, "same", status=status).status_code == status
    assert states(gw)["flaky"] == "down"  # a 502/504 is the backend's (or its proxy's) whatever the request


def test_json_nested_too_deeply_is_a_400_without_a_traceback(env) -> None:  # type: ignore[no-untyped-def]
    gw, _ = env
    deep = '{"model": "m", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    seen = len(gw.proc.output())
    r = httpx.post(gw.v1 + "/chat/completions", content=deep, headers=JSON, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert chat(gw).status_code == 200  # and the next request is logged after it, if at all
    log = gw.proc.output()[seen:]
    assert "Traceback" not in log and "RecursionError" not in log


# -- S3: inference takes JSON only ----------------------------------------------------------------------
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/jsonx", "text/json"])
def test_a_body_not_declared_json_is_415(env, ctype: str | None) -> None:  # type: ignore[no-untyped-def]
    gw, up = env
    before = up.stats()["received"]
    headers = {} if ctype is None else {"content-type": ctype}
    r = httpx.post(gw.v1 + "/chat/completions", headers=headers, timeout=10,
                   content=json.dumps({"model": "m", "messages": MESSAGES}))
    assert r.status_code == 415, r.text
    assert r.json() == {"error": {"message": "Send the request body as JSON with 'Content-Type: application/json'.",
                                  "type": "invalid_request_error", "param": None, "code": "unsupported_media_type"}}
    assert up.stats()["received"] == before


@pytest.mark.parametrize("ctype", ["application/json", "Application/JSON", "application/json; charset=utf-8",
                                   "application/json;charset=UTF-8"])
def test_json_with_parameters_in_any_case_is_accepted(env, ctype: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(env[0].v1 + "/chat/completions", headers={"content-type": ctype}, timeout=10,
                   content=json.dumps({"model": "m", "messages": MESSAGES}))
    assert r.status_code == 200, r.text


# -- S18: large bodies are read and parsed a few at a time ----------------------------------------------
LARGE = 1536 * 1024  # over the 1 MiB threshold


def large_body(tag: str) -> bytes:
    pad = "x" * (LARGE - 100)
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": tag + pad}]}).encode()


def start_upload(gw: Gateway, body: bytes, send: int) -> socket.socket:
    """A client that sends the headers and `send` bytes of its body, then waits."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:send])
    return sock


def post_large(gw: Gateway, tag: str) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", content=large_body(tag), headers=JSON, timeout=30)


def test_large_bodies_take_a_slot_while_read(spawn: Spawner) -> None:
    up = spawn.double("big-up", "m")
    gw = spawn.gateway({"server": {"max_large_bodies": 1, "large_body_wait": 0.5},
                        "backends": [{"name": "big-up", "kind": "vllm", "url": up.url}]})
    held = large_body("held")
    a = start_upload(gw, held, 100_000)  # a slow client holds the only slot ...

    def slot_taken() -> bool:  # ... once the gateway got to it: a large request waits, then 503
        r = post_large(gw, "probe")
        assert r.status_code in (200, 503), r.text
        return r.status_code == 503

    wait_for(slot_taken, "the slow upload to take the slot")
    r = post_large(gw, "waits")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "server_busy" and r.json()["error"]["type"] == "server_error"
    assert chat(gw).status_code == 200  # small bodies never wait
    a.sendall(held[100_000:])  # the slow client finishes: answered, and the slot is free again
    assert a.recv(65536).startswith(b"HTTP/1.1 200")
    a.close()
    assert post_large(gw, "after").status_code == 200
    # no Content-Length (chunked): the slot is taken once the body grows past 1 MiB
    body = large_body("chunked")
    part, rest = body[:LARGE - 4096], body[LARGE - 4096:]
    c = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(part), part))
    wait_for(slot_taken, "the chunked upload to take the slot")
    c.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
    assert c.recv(65536).startswith(b"HTTP/1.1 200")
    c.close()
    # every way a read can end gives the slot back: a client gone mid-body ...
    gone = start_upload(gw, large_body("gone"), 100_000)
    wait_for(slot_taken, "the second slow upload to take the slot")
    gone.close()
    wait_for(lambda: post_large(gw, "after-gone").status_code == 200, "the slot of a vanished client")
    # ... a body over the limit found while reading (no Content-Length), and one that is not JSON
    gw2 = spawn.gateway({"server": {"max_large_bodies": 1, "large_body_wait": 0.5, "max_body_bytes": 2 << 20},
                         "backends": [{"name": "big-up", "kind": "vllm", "url": up.url}]})
    for _ in range(3):
        r = httpx.post(gw2.v1 + "/chat/completions", headers=JSON, timeout=30,  # chunked: no Content-Length
                       content=iter([b"[" + b"1," * (512 * 1024), b"1," * (544 * 1024)]))
        assert r.status_code == 413
        r = httpx.post(gw2.v1 + "/chat/completions", headers=JSON, timeout=30, content=b"{" + b" " * LARGE)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert post_large(gw2, "still free").status_code == 200


def test_default_body_limit_refuses_16_mib_before_reading(spawn: Spawner) -> None:
    gw = spawn.gateway(None, env={"GATEWAY_AUTODISCOVER__ENABLED": "false"})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(16 << 20))
    conn.endheaders()  # and not one byte of the body
    r = conn.getresponse()
    assert r.status == 413
    assert json.loads(r.read())["error"]["message"].endswith("limit of 8388608 bytes.")
    conn.close()
