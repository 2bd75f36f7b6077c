"""Hostile clients against a real gateway process: each attack gets a 4xx in the OpenAI envelope
or a closed connection, the upstream never sees a request the client steered, everyone else
keeps being served, and the gateway's log holds no traceback.

Raw sockets where httpx cannot express the attack (truncated bodies, smuggling, floods).
The gateway runs with `server.max_body_bytes` at 1 MiB, so the huge-body cases stay quick.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.procs import Double, Gateway, Spawner

MODEL = "test-model"
LIMIT = 1 << 20
MESSAGES = [{"role": "user", "content": "hi"}]
JSON_CT = {"content-type": "application/json"}
INPUT = {"chat/completions": "messages", "completions": "prompt", "embeddings": "input"}
GOOD_INPUT = {"messages": MESSAGES, "prompt": "hi", "input": "hi"}


@dataclass
class Setup:
    gw: Gateway
    up: Double
    started: float = field(default_factory=time.monotonic)


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> Iterator[Setup]:
    up = module_spawn.double("hostile-up", MODEL)
    gw = module_spawn.gateway({"backends": [{"name": "hostile-up", "kind": "vllm", "url": up.url}],
                               "server": {"max_body_bytes": LIMIT}})
    s = Setup(gw, up)
    yield s
    log = gw.proc.output()
    assert "Traceback" not in log, log[-5000:]
    assert gw.proc.popen.poll() is None, "the gateway died"
    # Every request the upstream got names the configured model on a path the gateway chose.
    for r in up.requests():
        assert r["path"] in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"), r
        assert r["body"]["model"] == MODEL, r
    logging.getLogger(__name__).info("hostile clients: %.1f s", time.monotonic() - s.started)


def served(gw: Gateway) -> None:
    """A well-behaved client still gets its answer."""
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": MODEL, "messages": MESSAGES}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def assert_envelope(status: int, body: bytes, want: int | None = None, code: str | None = None) -> dict:
    assert 400 <= status < 500, (status, body[:500])
    if want is not None:
        assert status == want, (status, body[:500])
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    if code is not None:
        assert doc["error"]["code"] == code, doc
    return doc["error"]


# -- raw HTTP/1.1 ---------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    headers: dict[bytes, bytes]
    body: bytes
    closed: bool  # the server closed the connection after (or instead of) the answer


def connect(gw: Gateway, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)


def read_answer(s: socket.socket, expect_close: bool = True, buf: bytearray | None = None) -> Answer:
    """One HTTP/1.1 response from `s` (Content-Length framed, as the gateway and uvicorn send them),
    then, if `expect_close`, whether the server closes the connection. Bytes past the response stay
    in `buf` for the next call (pipelined answers may arrive in one read)."""
    buf = bytearray() if buf is None else buf

    def more() -> bool:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return False
        buf.extend(chunk)
        return bool(chunk)

    while b"\r\n\r\n" not in buf:
        if not more():
            return Answer(None, {}, bytes(buf), True)
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[:end + 4]
    status = int(lines[0].split(b" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    n = int(headers.get(b"content-length", b"0"))
    while len(buf) < n and more():
        pass
    body = bytes(buf[:n])
    del buf[:n]
    closed = False
    if expect_close:
        try:
            closed = not buf and s.recv(65536) == b""  # EOF; anything else is a second answer
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return Answer(status, headers, body, closed)


def send_raw(gw: Gateway, *parts: bytes, timeout: float = 30) -> Answer:
    with connect(gw, timeout) as s:
        for p in parts:
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):  # the server answered and closed first
                break
        return read_answer(s)


def post_head(path: str, extra: bytes = b"", length: int | None = None) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" % path.encode()
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    return head + extra + b"\r\n"


def chat_body(**extra: object) -> bytes:
    return json.dumps({"model": MODEL, "messages": MESSAGES, **extra}).encode()


# -- bodies -----------------------------------------------------------------------------------------
BAD_JSON = [b"", b"{", b'{"model": "test-model", "messages": [', b"not json", b"{'model': 'x'}", b"\x00\x01",
            b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}]} trailing',
            b'{"model": "test-model",}', b"[" * 200_000 + b"]" * 200_000,
            b'{"model": "test-model", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            b'{"model": "test-model", "n": 1e999999, "messages": []}', b"\xef\xbb\xbf{}",
            b'{"model": "test-model", "temperature": NaN, "messages": [{}]}',
            b'{"model": "test-model", "temperature": -Infinity, "messages": [{}]}']
NOT_AN_OBJECT = [b"null", b"[]", b'"text"', b"42", b"true"]


@pytest.mark.parametrize("body", BAD_JSON, ids=lambda b: repr(b[:24]))
def test_malformed_and_truncated_json_is_a_400(env: Setup, body: bytes) -> None:
    r = httpx.post(env.gw.v1 + "/chat/completions", content=body, headers=JSON_CT, timeout=30)
    assert_envelope(r.status_code, r.content, 400, "invalid_json")


@pytest.mark.parametrize("body", NOT_AN_OBJECT)
def test_json_that_is_not_an_object_is_a_400(env: Setup, body: bytes) -> None:
    for path in INPUT:
        r = httpx.post(f"{env.gw.v1}/{path}", content=body, headers=JSON_CT, timeout=30)
        assert_envelope(r.status_code, r.content, 400, "invalid_json")


INVALID_TEXT = [
    b'{"model": "test-model\xff", "messages": [{"role": "user", "content": "hi"}]}',  # not UTF-8
    b'{"model": "test-model", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',  # overlong
    b'{"model": "test-model", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # raw surrogate
    b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',  # escaped lone surrogates
    b'{"model": "test-model", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
    b'{"model": "test-model", "messages": [{"role": "user", "content": "\\ud800"}], "seed": 99999999999999999999}',
    '{"model": "test-model", "messages": []}'.encode("utf-16"),
]


@pytest.mark.parametrize("body", INVALID_TEXT, ids=range(len(INVALID_TEXT)))
def test_text_that_is_not_utf8_is_a_400(env: Setup, body: bytes) -> None:
    """Lone surrogates ("\\ud800") were a 500 and a traceback (in the error message they made the
    envelope unencodable: uvicorn's bare "Internal Server Error"; in a message, the forwarded body)."""
    before = len(env.up.requests())
    r = httpx.post(env.gw.v1 + "/chat/completions", content=body, headers=JSON_CT, timeout=30)
    assert_envelope(r.status_code, r.content, 400, "invalid_json")
    assert len(env.up.requests()) == before
    served(env.gw)


def test_a_surrogate_pair_is_valid_json_and_forwarded(env: Setup) -> None:
    body = b'{"model": "test-model", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \\u00e9"}]}'
    r = httpx.post(env.gw.v1 + "/chat/completions", content=body, headers=JSON_CT, timeout=30)
    assert r.status_code == 200, r.text
    assert env.up.requests()[-1]["body"]["messages"][0]["content"] == "\U0001f600 \u00e9"


WRONG_TYPES: list[tuple[str, str, object]] = [
    *[(ep, "model", v) for ep in INPUT for v in (1, 1.5, True, [], {}, [MODEL], {"name": MODEL}, "")],
    *[("chat/completions", "messages", v) for v in ("hi", 1, True, {}, {"role": "user"}, [], [1], ["hi"],
                                                     [None], [[]], [MESSAGES[0], "x"])],
    *[(ep, INPUT[ep], v) for ep in ("completions", "embeddings") for v in (1, 1.5, True, {}, {"text": "hi"})],
    *[(ep, "stream", v) for ep in INPUT for v in ("true", 1, 0, {}, [], "yes")],
    *[(ep, "stream_options", v) for ep in ("chat/completions", "completions")
      for v in (1, "x", [], True, [{"include_usage": True}])],
    *[(ep, "n", v) for ep in INPUT for v in ("2", 0, -1, 1.5, True, [], {}, 2.0)],
]


@pytest.mark.parametrize("endpoint,name,value", WRONG_TYPES, ids=[f"{e}-{n}-{v!r}" for e, n, v in WRONG_TYPES])
def test_wrong_type_for_a_routing_field_is_a_400_naming_it(env: Setup, endpoint: str, name: str,
                                                          value: object) -> None:
    field_ = INPUT[endpoint]
    body: dict[str, object] = {"model": MODEL, field_: GOOD_INPUT[field_]}
    if name == "stream_options":
        body["stream"] = True
    body[name] = value
    before = len(env.up.requests())
    r = httpx.post(f"{env.gw.v1}/{endpoint}", json=body, timeout=30)
    err = assert_envelope(r.status_code, r.content, 400)
    assert err["param"] is not None and err["param"].split("[")[0] == name, err
    assert len(env.up.requests()) == before, "a request with a wrong routing field reached the backend"


def test_a_body_that_stops_midway_and_closes_costs_nothing(env: Setup) -> None:
    with connect(env.gw) as s:
        s.sendall(post_head("/v1/chat/completions", length=1000) + b'{"model": ')
    with connect(env.gw) as s:  # and one that sends the head only
        s.sendall(post_head("/v1/chat/completions", length=1000))
    served(env.gw)


def test_a_body_that_stops_midway_and_waits_blocks_nobody_else(env: Setup) -> None:
    stalled = [connect(env.gw) for _ in range(20)]
    try:
        for s in stalled:
            s.sendall(post_head("/v1/chat/completions", length=1000) + b'{"model": ')
        for _ in range(5):
            served(env.gw)
    finally:
        for s in stalled:
            s.close()
    served(env.gw)


def test_a_huge_declared_length_is_refused_before_the_body_is_read(env: Setup) -> None:
    with connect(env.gw) as s:
        s.sendall(post_head("/v1/chat/completions", length=10 ** 12) + b'{"model": "')
        a = read_answer(s)  # without the remaining terabyte
    assert_envelope(a.status or 0, a.body, 413, "request_too_large")
    assert a.headers.get(b"connection") == b"close" and a.closed  # not left waiting for the terabyte
    served(env.gw)


def test_expect_100_continue_with_a_huge_length_gets_the_413_not_a_continue(env: Setup) -> None:
    with connect(env.gw) as s:
        s.sendall(post_head("/v1/chat/completions", b"Expect: 100-continue\r\n", length=10 ** 9))
        a = read_answer(s)
    assert_envelope(a.status or 0, a.body, 413, "request_too_large")  # the client never uploads the GB
    assert a.closed
    served(env.gw)


def test_pipelined_requests_a_bad_one_first_are_answered_in_order(env: Setup) -> None:
    good = chat_body()
    with connect(env.gw) as s:
        s.sendall(post_head("/v1/chat/completions", length=3) + b"{x}"
                  + post_head("/v1/chat/completions", length=len(good)) + good
                  + post_head("/v1/chat/completions", b"Connection: close\r\n", length=4) + b"null")
        pending = bytearray()
        first, second, third = (read_answer(s, expect_close=False, buf=pending) for _ in range(3))
    assert_envelope(first.status or 0, first.body, 400, "invalid_json")
    assert second.status == 200 and json.loads(second.body)["choices"], second
    assert_envelope(third.status or 0, third.body, 400, "invalid_json")


def test_a_huge_body_with_a_length_is_a_413(env: Setup) -> None:
    body = chat_body(pad="x" * (LIMIT + 1))
    r = httpx.post(env.gw.v1 + "/chat/completions", content=body, headers=JSON_CT, timeout=60)
    assert_envelope(r.status_code, r.content, 413, "request_too_large")
    served(env.gw)


def test_a_huge_chunked_body_without_a_length_is_a_413(env: Setup) -> None:
    piece = b"x" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    with connect(env.gw) as s:
        s.sendall(post_head("/v1/chat/completions", b"Transfer-Encoding: chunked\r\n") + b'8\r\n{"pad":"\r\n')
        a: Answer | None = None
        for _ in range(4 * LIMIT // len(piece)):  # up to 4x the limit: it answers once past it
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        a = read_answer(s)
    assert_envelope(a.status or 0, a.body, 413, "request_too_large")
    # Closed at once: before the fix uvicorn went on reading (and discarding) whatever came.
    assert a.headers.get(b"connection") == b"close" and a.closed
    served(env.gw)


def test_an_endless_chunked_body_through_httpx_is_a_413(env: Setup) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"model": "test-model", "pad": "'
        for _ in range(4 * LIMIT // 65536):
            yield b"y" * 65536

    try:
        r = httpx.post(env.gw.v1 + "/embeddings", content=endless(), headers=JSON_CT, timeout=60)
    except httpx.TransportError:  # closed while still sending: also a refusal
        pass
    else:
        assert_envelope(r.status_code, r.content, 413, "request_too_large")
    served(env.gw)


# -- headers and connections ---------------------------------------------------------------------------
def test_many_headers_and_a_huge_header_get_an_answer_or_a_close(env: Setup) -> None:
    many = b"".join(b"X-Flood-%d: %d\r\n" % (i, i) for i in range(5000))
    big = b"X-Huge: " + b"h" * (1 << 20) + b"\r\n"
    for extra in (many, big):
        a = send_raw(env.gw, post_head("/v1/chat/completions", extra + b"Connection: close\r\n", length=2) + b"{}")
        if a.status is not None:  # the headers taken: the body is still checked
            assert 400 <= a.status < 500, a
            if a.headers.get(b"content-type") == b"application/json":
                assert_envelope(a.status, a.body)
        else:
            assert a.closed
        served(env.gw)


def test_hundreds_of_unfinished_request_heads_do_not_stop_service(env: Setup) -> None:
    """Slowloris: 300 connections that never finish their request line."""
    socks: list[socket.socket] = []
    try:
        for i in range(300):
            s = connect(env.gw)
            s.sendall(b"POST /v1/chat/comp" if i % 2 else b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        for _ in range(5):
            served(env.gw)
        with httpx.Client(timeout=30) as c:  # concurrent-ish: several in a row on one keep-alive connection
            for _ in range(10):
                assert c.get(env.gw.url + "/healthz").status_code == 200
    finally:
        for s in socks:
            s.close()
    served(env.gw)


# -- smuggling -------------------------------------------------------------------------------------------
SMUGGLED = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 46\r\n\r\n"
            b'{"model": "test-model", "input": "SMUGGLED!!"}')
assert len(b'{"model": "test-model", "input": "SMUGGLED!!"}') == 46


def _smuggle_cases() -> dict[str, bytes]:
    body = b"0\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return {
        "cl-te": head + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + body + SMUGGLED,
        "te-cl": head + b"Transfer-Encoding: chunked\r\nContent-Length: 200\r\n\r\n" + body + SMUGGLED,
        "two-cl": head + b"Content-Length: 5\r\nContent-Length: %d\r\n\r\n" % (5 + len(SMUGGLED)) + b"{}{}{" + SMUGGLED,
        "cl-list": head + b"Content-Length: 5, 200\r\n\r\n{}{}{" + SMUGGLED,
        "te-obs-fold": head + b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n" + body + SMUGGLED,
        "obs-fold": head + b"X-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\n{}{}{" + SMUGGLED,
        "te-xchunked": head + b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n{}{}{" + SMUGGLED,
        "te-chunked-identity": head + b"Transfer-Encoding: chunked, identity\r\n\r\n" + body + SMUGGLED,
        "te-space": head + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n" + body + SMUGGLED,
        "cl-negative": head + b"Content-Length: -5\r\n\r\n" + SMUGGLED,
        "cl-plus": head + b"Content-Length: +5\r\n\r\n{}{}{" + SMUGGLED,
        "chunk-size-overflow": head + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff1\r\nx\r\n0\r\n\r\n"
        + SMUGGLED,
        "bare-lf": b"POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                   b"Content-Length: 5\n\n{}{}{" + SMUGGLED,
        "nul-in-header": head + b"Content-Length: 5\r\nX-A: a\x00b\r\n\r\n{}{}{" + SMUGGLED,
    }


SMUGGLE = _smuggle_cases()


@pytest.mark.parametrize("name", list(SMUGGLE))
def test_request_smuggling_gets_a_4xx_or_a_close_and_never_reaches_the_backend(env: Setup, name: str) -> None:
    with connect(env.gw, timeout=10) as s:
        s.sendall(SMUGGLE[name])
        answers = []
        pending = bytearray()
        while True:
            a = read_answer(s, expect_close=False, buf=pending)
            if a.status is None:
                break
            answers.append(a)
            if a.headers.get(b"connection") == b"close" or len(answers) > 2:
                break
    assert answers, f"{name}: closed without an answer"  # uvicorn answers a parse error with 400 + close
    first = answers[0]
    assert 400 <= first.status < 500, (name, first)  # type: ignore[operator]
    assert first.headers.get(b"connection") == b"close", (name, first)  # framing in doubt: never reused
    if first.headers.get(b"content-type") == b"application/json":
        assert_envelope(first.status or 0, first.body)
    # The smuggled request is never answered as a request of its own, and never reaches the backend.
    assert len(answers) == 1, (name, answers)
    assert not any("SMUGGLED" in json.dumps(r["body"]) for r in env.up.requests())
    served(env.gw)


# -- names that look like something else --------------------------------------------------------------
STEERING = ["http://evil.example/x", "https://127.0.0.1:1/v1", "//evil.example/x", "../../etc/passwd",
            "/etc/passwd", f"{MODEL}/../../admin", f"{MODEL}?x=1", f"{MODEL}#frag", "evil.example:80",
            "m\r\nX-Evil: 1", "m\r\n\r\nGET /evil HTTP/1.1", f"{MODEL}\r\nHost: evil", "@evil.example",
            f"{MODEL}\x00", f" {MODEL}", f"{MODEL} ", MODEL.upper(), "%2e%2e%2fadmin", "x" * 100_000]


@pytest.mark.parametrize("name", STEERING, ids=lambda n: repr(n[:30]))
def test_model_names_that_look_like_urls_paths_or_headers_are_a_404(env: Setup, name: str) -> None:
    before = len(env.up.requests())
    for path, field_ in INPUT.items():
        r = httpx.post(f"{env.gw.v1}/{path}", json={"model": name, field_: GOOD_INPUT[field_]}, timeout=30)
        err = assert_envelope(r.status_code, r.content, 404, "model_not_found")
        assert err["param"] == "model"
        assert b"X-Evil" not in b"".join(k + v for k, v in r.headers.raw)
    assert len(env.up.requests()) == before


def test_host_and_absolute_form_targets_do_not_steer_the_upstream(env: Setup) -> None:
    body = chat_body()
    for target, host in ((b"http://evil.example/v1/chat/completions", b"evil.example"),
                         (b"/v1/chat/completions", b"evil.example:1"),
                         (b"/v1/chat/completions", b"127.0.0.1:1")):
        before = len(env.up.requests())
        a = send_raw(env.gw, b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"X-Forwarded-Host: evil.example\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (target, host, len(body), body))
        if a.status == 200:  # served: by the configured backend, on the path the gateway chose
            reqs = env.up.requests()
            assert len(reqs) == before + 1 and reqs[-1]["path"] == "/v1/chat/completions"
        else:
            assert a.status is None or 400 <= a.status < 500, a
    for target in (b"/v1/../admin/backends/hostile-up/drain", b"/v1/chat/completions/../../admin/backends",
                   b"//evil.example/v1/chat/completions", b"/v1/chat/completions?url=http://evil.example/"):
        a = send_raw(env.gw, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (target, len(body), body))
        assert a.status is not None
        if a.status != 200:
            assert_envelope(a.status, a.body)
    states = {b["name"]: b["state"] for b in httpx.get(env.gw.url + "/admin/backends").json()["backends"]}
    assert states == {"hostile-up": "ready"}
    served(env.gw)
