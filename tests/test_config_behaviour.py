"""Each `backends[]`, `models[]`, `upstream` and `routing` key the README documents, through a running gateway.

One gateway serves most checks (several backend names may point at one double: the
`x-llm-gateway-backend` header tells which was used); probes are far apart (interval 60 s) so
nothing but the requests themselves changes a backend's state during the module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.procs import Double, Gateway, Spawner

MESSAGES = [{"role": "user", "content": "hi"}]
SECRET = "upstream-secret-1234"
ENV_SECRET = "upstream-secret-from-env-5678"


def chat(gw: Gateway, model: str, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", None)
    return httpx.post(gw.v1 + "/chat/completions", timeout=30, headers=headers,
                      json={"model": model, "messages": MESSAGES, **kw})


def admin(gw: Gateway) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(gw.url + "/admin/backends").json()["backends"]}


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def pinned(model: str, backend: str, weight: float | None = None) -> dict[str, Any]:
    return {"backend": backend, "model": model, **({"weight": weight} if weight else {})}


@pytest.fixture(scope="module")
def env(module_spawn: Spawner) -> Iterator[dict[str, Any]]:
    specs = {"shared": ("s1,hid-a,hid-b",), "doomed": ("s1,doom-extra",), "failing": ("s1", "--fail-status", "503")}
    with ThreadPoolExecutor(len(specs)) as pool:  # start the doubles side by side
        futs = {n: pool.submit(module_spawn.double, n, *args) for n, args in specs.items()}
    d: dict[str, Double] = {n: f.result() for n, f in futs.items()}
    s = d["shared"].url
    backend = {"kind": "vllm", "discover": False}
    cfg = {
        "upstream": {"connect_timeout": 0.3, "retry_deadline": 1.0, "stream_keepalive": 0},
        "health": {"interval": 60},
        "backends": [
            {**backend, "name": "keyed", "url": s, "api_key": SECRET},
            {**backend, "name": "keyed-env", "url": s, "api_key_env": "UPSTREAM_TEST_KEY"},
            {**backend, "name": "plain", "url": s},
            {**backend, "name": "nousage", "url": s, "stream_usage": False},
            {**backend, "name": "wa", "url": s}, {**backend, "name": "wb", "url": s},
            {**backend, "name": "hidden", "url": s},
            {**backend, "name": "limited", "url": s, "max_concurrency": 2, "max_queue": 5, "queue_timeout": 0.5},
            {**backend, "name": "failing", "url": d["failing"].url},
            {**backend, "name": "failing2", "url": d["failing"].url},
            {"kind": "vllm", "name": "doomed", "url": d["doomed"].url},  # discover: true (the default)
        ],
        "models": [
            {"name": "via-key", "backends": [pinned("s1", "keyed")]},
            {"name": "via-env-key", "backends": [pinned("s1", "keyed-env")]},
            {"name": "via-plain", "backends": [pinned("s1", "plain")]},
            {"name": "no-usage", "backends": [pinned("s1", "nousage")]},
            {"name": "lim", "backends": [pinned("s1", "limited")]},
            {"name": "a-heavy", "backends": [pinned("s1", "wa", 10), pinned("s1", "wb")]},
            {"name": "b-heavy", "backends": [pinned("s1", "wa"), pinned("s1", "wb", 10)]},
            {"name": "trio", "backends": [pinned("s1", "wa"), pinned("s1", "wb"), pinned("s1", "plain")]},
            {"name": "shown", "backends": [pinned("hid-a", "hidden")]},
            {"name": "primary", "backends": [pinned("s1", "failing"), pinned("s1", "failing2")],
             "fallbacks": ["via-plain"]},
            {"name": "slow-pool", "backends": [pinned("s1", "failing", 100), pinned("s1", "plain")]},
            {"name": "doom-pool", "backends": [pinned("s1", "doomed", 100), pinned("s1", "plain")]},
        ],
    }
    gw = module_spawn.gateway(cfg, env={"UPSTREAM_TEST_KEY": ENV_SECRET})
    # Every backend ready first: on a busy machine a start-up probe can miss the 0.3 s connect_timeout, and the
    # backend then waits for its next probe (seen once in CI: `doomed` down while its tests ran).
    wait_for(lambda: all(b["state"] == "ready" for b in admin(gw).values()), timeout=40)
    yield {"gw": gw, **d}


def test_backend_api_key_is_sent_upstream_as_bearer(env: dict[str, Any]) -> None:
    gw, shared = env["gw"], env["shared"]
    assert chat(gw, "via-key").status_code == 200
    assert shared.requests()[-1]["authorization"] == f"Bearer {SECRET}"
    assert chat(gw, "via-plain").status_code == 200
    assert shared.requests()[-1]["authorization"] is None  # only the backend that has a key sends one
    assert SECRET not in gw.proc.output()


def test_backend_api_key_env_reads_the_key_from_the_environment(env: dict[str, Any], tmp_path: Path) -> None:
    gw, shared = env["gw"], env["shared"]
    assert chat(gw, "via-env-key").status_code == 200
    assert shared.requests()[-1]["authorization"] == f"Bearer {ENV_SECRET}"
    assert ENV_SECRET not in gw.proc.output() and ENV_SECRET not in httpx.get(gw.url + "/admin/backends").text
    # a variable that is not set stops the start with a message naming it (no key to leak)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"backends": [{"name": "k", "kind": "vllm", "url": "http://127.0.0.1:9",
                                                  "api_key_env": "UPSTREAM_TEST_KEY_UNSET"}]}))
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items() if k != "UPSTREAM_TEST_KEY_UNSET"})
    assert r.returncode == 2 and "the environment variable UPSTREAM_TEST_KEY_UNSET is not set" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_discover_false_serves_only_mapped_models(env: dict[str, Any]) -> None:
    gw = env["gw"]
    ids = {m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]}
    assert "shown" in ids
    assert not ids & {"hid-a", "hid-b", "s1"}  # reported by discover:false backends, not mapped
    r = chat(gw, "hid-b")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert chat(gw, "shown").status_code == 200 and env["shared"].requests()[-1]["body"]["model"] == "hid-a"
    # `doomed` keeps the default (discover: true): what it reports and no entry maps is served too
    assert "doom-extra" in ids and chat(gw, "doom-extra").headers["x-llm-gateway-backend"] == "doomed"


def stream_lines(gw: Gateway, model: str, **kw: Any) -> list[str]:
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30,
                      json={"model": model, "messages": MESSAGES, "stream": True, **kw}) as r:
        assert r.status_code == 200
        return [ln for ln in r.iter_lines() if ln]


def test_stream_usage_override_keeps_stream_options_away_from_the_backend(env: dict[str, Any]) -> None:
    gw, shared = env["gw"], env["shared"]
    lines = stream_lines(gw, "via-plain")  # vllm's default: the gateway asks for usage, then strips it
    assert shared.requests()[-1]["body"]["stream_options"] == {"include_usage": True}
    assert lines[-1] == "data: [DONE]" and not any('"usage"' in ln for ln in lines)
    lines = stream_lines(gw, "no-usage")  # stream_usage: false: nothing added
    assert "stream_options" not in shared.requests()[-1]["body"]
    assert lines[-1] == "data: [DONE]"


def test_stream_keepalive_zero_sends_no_comments(env: dict[str, Any]) -> None:
    # The upstream withholds its headers, then its first event: either wait would carry
    # `: keepalive` comments if keepalive were on (or taken as an interval of 0 s).
    lines = stream_lines(env["gw"], "via-plain", x_double={"headers_delay": 0.4, "first_delay": 0.4})
    assert lines[-1] == "data: [DONE]" and len(lines) > 3
    assert not [ln for ln in lines if ln.startswith(":")]


def test_max_concurrency_and_queue_timeout_on_a_vllm_backend(env: dict[str, Any]) -> None:
    gw, lim = env["gw"], env["shared"]
    lim.reset()  # max_in_flight counts from here
    before = lim.stats()["received"]
    held: list[int] = []
    threads = [threading.Thread(target=lambda: held.append(chat(gw, "lim", x_double={"hold": True}).status_code))
               for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: lim.stats()["in_flight"] == 2)
        started = time.monotonic()
        r = chat(gw, "lim")  # both slots taken: waits in the queue for queue_timeout, then 429
        waited = time.monotonic() - started
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1 and "stayed busy" in r.json()["error"]["message"]
        assert 0.45 <= waited < 10  # it did wait (a full queue would answer at once)
        assert admin(gw)["limited"]["limit"]["max_concurrency"] == 2
    finally:
        lim.release()
        for t in threads:
            t.join(30)
    assert held == [200, 200]
    stats = lim.stats()
    assert stats["max_in_flight"] == 2 and stats["received"] - before == 2  # the third never reached it


def test_per_model_weight_overrides_the_backend_weight(env: dict[str, Any]) -> None:
    gw = env["gw"]
    # Sequential requests tie on in-flight counts; the heavier deployment always wins the tie-break.
    assert {chat(gw, "a-heavy").headers["x-llm-gateway-backend"] for _ in range(4)} == {"wa"}
    assert {chat(gw, "b-heavy").headers["x-llm-gateway-backend"] for _ in range(4)} == {"wb"}


def test_fallback_serves_after_every_attempt_failed_before_any_byte(env: dict[str, Any]) -> None:
    gw, failing = env["gw"], env["failing"]
    before = failing.stats()["received"]
    r = chat(gw, "primary")
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "plain"
    assert failing.stats()["received"] - before == 2  # both deployments were tried (and answered 503) first
    r = chat(gw, "primary", stream=True)
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "plain"
    assert r.text.rstrip().endswith("data: [DONE]")


def test_retry_deadline_stops_new_attempts(env: dict[str, Any]) -> None:
    gw, shared = env["gw"], env["shared"]
    before = shared.stats()["received"]
    started = time.monotonic()
    # `failing` (weight 100) answers 503 after 1.5 s: past the 1 s retry_deadline. (`plain` would
    # have answered 200, after the same delay.)
    r = chat(gw, "slow-pool", x_double={"headers_delay": 1.5})
    assert time.monotonic() - started >= 1.5
    assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert shared.stats()["received"] == before  # `plain` was not tried (a fast failure is: see fallbacks)


def test_session_affinity_by_header_and_not_by_user_by_default(env: dict[str, Any]) -> None:
    gw = env["gw"]

    def home(**kw: Any) -> set[str]:
        return {chat(gw, "trio", **kw).headers["x-llm-gateway-backend"] for _ in range(3)}

    for s in ("s-1", "s-2", "s-3", "s-4"):
        assert len(home(headers={"X-Session-Id": s})) == 1
    assert home(user="alice") == {"wa", "wb", "plain"}  # affinity_from_user is off: `user` spreads


def test_connect_timeout_on_the_request_path(env: dict[str, Any]) -> None:
    """A backend that stops answering SYNs (a full accept queue) fails after connect_timeout and
    the request moves on; the OS alone would keep trying for minutes."""
    gw, doomed = env["gw"], env["doomed"]
    assert chat(gw, "doom-pool").headers["x-llm-gateway-backend"] == "doomed"
    doomed.proc.stop(signal.SIGKILL)
    with socket.socket() as hole, socket.socket() as filler:
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", doomed.port))
        hole.listen(0)
        filler.connect(("127.0.0.1", doomed.port))  # fills the accept queue: later SYNs are dropped
        started = time.monotonic()
        r = chat(gw, "doom-pool")
        took = time.monotonic() - started
        assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "plain"
        assert 0.3 <= took < 3.0
        b = admin(gw)["doomed"]
        assert b["state"] == "down" and "timed out" in b["detail"]


def test_retry_deadline_also_stops_fallbacks(env: dict[str, Any]) -> None:
    gw, shared = env["gw"], env["shared"]
    before = shared.stats()["received"]
    # `primary`'s deployments answer 503 after 1.5 s, past the 1 s retry_deadline: its fallback
    # (`via-plain`, on the shared double) is a new attempt and must not start either.
    r = chat(gw, "primary", x_double={"headers_delay": 1.5})
    assert r.status_code == 503, r.text
    assert shared.stats()["received"] == before
