"""The upstream client through a running gateway: answers never cross clients, and a full pool fails cleanly.

Security review S1 (a 103 Early Hints taken as the answer handed client A's answer to client B), S14
(a 101 escaped the parser's error handling), S4 (probes queued behind requests' connections, so a full
pool marked healthy backends down) and S5 (a request waiting for a pool slot could wait forever: idle
connections held the slots and were never handed to it).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.procs import Spawner

JSON = {"Content-Type": "application/json"}


def ask(gw_url: str, marker: str, client: httpx.Client) -> httpx.Response:
    return client.post(gw_url + "/v1/chat/completions", headers=JSON,
                       json={"model": "raw-model", "messages": [{"role": "user", "content": marker}]})


@pytest.mark.parametrize("mode", ["hints", "continue", "stray", "idle-stray"])
def test_no_client_ever_receives_another_clients_answer(spawn: Spawner, mode: str) -> None:
    up = spawn.start_double("raw_upstream", "/health", "--mode", mode, name=f"raw-{mode}")
    gw = spawn.gateway({"backends": [{"name": "raw", "kind": "openai", "url": up.url}],
                        "upstream": {"max_attempts": 1}})
    got: list[tuple[int, str]] = []
    for i in range(6):
        with httpx.Client(timeout=30) as c:  # a new client connection each time: six different clients
            try:
                r = ask(gw.url, f"client-{i}-private", c)
                got.append((r.status_code, r.text))
            except httpx.TransportError as exc:
                got.append((0, repr(exc)))
        if mode == "idle-stray":  # the stray half-answer comes 50 ms after each answer: let it land
            time.sleep(0.5)
    for i, (_, text) in enumerate(got):  # first the leak itself: nobody holds another client's answer
        others = [j for j in range(6) if j != i and f"client-{j}-private" in text]
        assert not others, f"client {i} received the answer of client(s) {others}: {text}"
    for i, (status, text) in enumerate(got):
        assert status == 200, (i, status, text)
        assert f'"answer for client-{i}-private"' in text, (i, text)
    stats = httpx.get(up.url + "/_stats").json()
    assert stats["requests"] == 6
    if mode in ("stray", "idle-stray"):
        # Each answer was followed by bytes nobody asked for: every such connection was closed, not reused.
        assert stats["connections"] >= 6
    assert "Traceback" not in gw.proc.output()


def test_a_101_upgrade_is_a_502_and_leaves_no_traceback(spawn: Spawner) -> None:
    up = spawn.start_double("raw_upstream", "/health", "--mode", "upgrade", name="raw-upgrade")
    gw = spawn.gateway({"backends": [{"name": "raw", "kind": "openai", "url": up.url}],
                        "upstream": {"max_attempts": 1}})
    with httpx.Client(timeout=30) as c:
        for _ in range(2):
            r = ask(gw.url, "hello", c)
            assert r.status_code == 502
            err = r.json()["error"]
            assert err["code"] == "upstream_protocol_error" and "101" in err["message"]
    out = gw.proc.output()
    assert "Traceback" not in out and "Fatal error" not in out


def _hold_stream(url: str, done: list[int]) -> None:
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hold"}],
            "x_double": {"hold": True, "chunks": 3}}
    with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/chat/completions", headers=JSON, json=body) as r:
        for _ in r.iter_bytes():
            pass
        done.append(r.status_code)


def _wait(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_full_pool_keeps_probes_going_bounds_the_wait_and_hands_freed_connections_on(spawn: Spawner) -> None:
    up = spawn.double("up")
    gw = spawn.gateway({
        "backends": [{"name": "up", "kind": "vllm", "url": up.url}],
        "upstream": {"max_connections": 2, "pool_timeout": 1.0, "max_attempts": 1, "stream_keepalive": 0},
        "health": {"interval": 0.2, "timeout": 1.0},
    })
    done: list[int] = []
    holders = [threading.Thread(target=_hold_stream, args=(gw.url, done)) for _ in range(2)]
    for t in holders:
        t.start()
    _wait(lambda: up.stats()["in_flight"] == 2, "two held streams")

    # S4: both request connections are busy, yet probes keep reaching the backend and it stays ready.
    seen = len(httpx.get(up.url + "/_probes").json())
    _wait(lambda: len(httpx.get(up.url + "/_probes").json()) >= seen + 5, "five more probes")
    r = httpx.get(gw.url + "/readyz")
    assert r.status_code == 200, r.text

    # S5: a request that finds no connection waits at most pool_timeout, then a clean 503.
    with httpx.Client(timeout=30) as c:
        t0 = time.monotonic()
        r = c.post(gw.url + "/v1/chat/completions", headers=JSON,
                   json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
        waited = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "upstream_pool_exhausted"
    assert waited < 10  # 1 s pool_timeout; 10x margin

    up.release()
    for t in holders:
        t.join(30)
    assert done == [200, 200]


def _in_flight(gw_url: str, backend: str) -> float:
    for line in httpx.get(gw_url + "/metrics").text.splitlines():
        if line.startswith(f'llm_gateway_in_flight_requests{{backend="{backend}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_waiting_request_gets_a_connection_freed_by_a_finished_stream(spawn: Spawner) -> None:
    """S5: the waiter is queued before the streams end; the old pool left their connections idle
    and the waiter waiting (until a client timeout)."""
    up = spawn.double("up")
    gw = spawn.gateway({
        "backends": [{"name": "up", "kind": "vllm", "url": up.url}],
        "upstream": {"max_connections": 2, "pool_timeout": 25, "max_attempts": 1, "stream_keepalive": 0},
    })
    done: list[int] = []
    holders = [threading.Thread(target=_hold_stream, args=(gw.url, done)) for _ in range(2)]
    for t in holders:
        t.start()
    _wait(lambda: up.stats()["in_flight"] == 2, "two held streams")
    result: list[httpx.Response] = []

    def waiter() -> None:
        with httpx.Client(timeout=60) as c:
            result.append(c.post(gw.url + "/v1/chat/completions", headers=JSON,
                                 json={"model": "test-model", "messages": [{"role": "user", "content": "w"}]}))

    w = threading.Thread(target=waiter)
    w.start()
    _wait(lambda: _in_flight(gw.url, "up") == 3, "the third request waiting for a connection")
    assert up.stats()["received"] == 2  # it is waiting in the gateway, not at the backend
    up.release()
    w.join(60)
    for t in holders:
        t.join(30)
    assert result, "the waiting request never finished"
    assert result[0].status_code == 200, result[0].text
    assert done == [200, 200]


@pytest.mark.parametrize("mode", ["close", "http10"])
def test_an_answer_ended_by_the_servers_close_is_complete(spawn: Spawner, mode: str) -> None:
    """Issue 11, defect 3: no Content-Length, no chunking: the close is the end (RFC 9112 6.3 rule 8)."""
    up = spawn.start_double("raw_upstream", "/health", "--mode", mode, name=f"raw-{mode}")
    gw = spawn.gateway({"backends": [{"name": "raw", "kind": "openai", "url": up.url}],
                        "upstream": {"max_attempts": 1}})
    with httpx.Client(timeout=30) as c:
        for i in range(3):
            r = ask(gw.url, f"close-{i}", c)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == f"answer for close-{i}"
    assert httpx.get(up.url + "/_stats").json()["connections"] >= 3  # such a connection is never reused


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):  # the peak: what a burst of buffering would have cost
                return int(line.split()[1])
    return 0


@pytest.mark.parametrize("mode", ["huge-body", "huge-headers"])
def test_an_answer_that_never_ends_costs_a_bounded_buffer_and_a_502(spawn: Spawner, mode: str) -> None:
    """Issue 11, defect 2 (S11, S12): a backend that keeps sending body (1 GiB declared) or headers
    used to be buffered whole; the caps are upstream.max_response_bytes and the 64 KiB header cap."""
    up = spawn.start_double("raw_upstream", "/health", "--mode", mode, name=f"raw-{mode}")
    gw = spawn.gateway({"backends": [{"name": "raw", "kind": "openai", "url": up.url}],
                        "upstream": {"max_attempts": 1, "max_response_bytes": 4 * 1024 * 1024}})
    before = _rss_kib(gw.proc.popen.pid)
    with httpx.Client(timeout=60) as c:
        r = ask(gw.url, "big", c)
    assert r.status_code == 502, r.text[:300]
    assert r.json()["error"]["code"] == "upstream_protocol_error"
    grown = (_rss_kib(gw.proc.popen.pid) - before) / 1024
    # The cap is 4 MiB (body) or 64 KiB (headers); without it the gateway held 1 GiB or 16 MiB. 5x margin
    # over the body cap and the parser's own buffers.
    assert grown < 40, f"peak RSS grew {grown:.0f} MiB"
    assert "Traceback" not in gw.proc.output()
