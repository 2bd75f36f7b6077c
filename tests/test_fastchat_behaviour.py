"""README "Backend kinds", fastchat: echo off, the load figure (the sum of the workers'
`queue_length`) and the least busy live worker, through a running gateway and the session's real
FastChat (a controller and two HF model workers on CPU, tests/conftest.py `fastchat_cluster`).

Workers are kept busy by requests sent to them directly, past the gateway: the gateway learns of
that work only from its probes of each worker's /worker_get_status, which is the point.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.procs import Gateway, Proc, Spawner

pytestmark = pytest.mark.fastchat
JSON = {"content-type": "application/json"}
GENERATE = '"POST /worker_generate HTTP/1.1"'  # the gateway's non-stream calls (uvicorn's access log)


@pytest.fixture(scope="module")
def fc(fastchat_cluster: dict, module_spawn: Spawner) -> tuple[Gateway, dict]:  # type: ignore[type-arg]
    # A worker running three generations answers its /worker_get_status late on a loaded machine (its
    # event loop shares the GIL with the generation threads): past the default 5 s probe timeout the
    # worker counts as not alive and its queue drops out of the load (a full run once read 1, not 4).
    gw = module_spawn.gateway({"health": {"interval": 0.1, "timeout": 30},
                               "backends": [{"name": "fc", "kind": "fastchat", "url": fastchat_cluster["controller"]}]})
    return gw, fastchat_cluster


def wait_for(cond: Callable[[], bool], what: str | Callable[[], str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.02)


def reported_load(gw: Gateway) -> float | None:
    return httpx.get(gw.url + "/admin/backends").json()["backends"][0]["reported_load"]


def queue_of(worker: dict) -> object:  # type: ignore[type-arg]
    """The worker's own queue_length, or why it could not be read (for failure messages)."""
    try:
        return httpx.post(worker["url"] + "/worker_get_status", timeout=30).json()["queue_length"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return repr(exc)


def generate_calls(worker: dict) -> int:  # type: ignore[type-arg]
    proc: Proc = worker["proc"]
    return proc.output().count(GENERATE)


def busy(worker_url: str, model: str, n: int, stop: threading.Event) -> list[threading.Thread]:
    """n generations kept running on one worker, sent directly (streamed, so they do not count as
    GENERATE), each followed at once by the next until `stop` is set. One generation cannot be held
    open: a never-read stream of this worker (2.7 MB with logprobs) fits whole in loopback socket
    buffers, so it finishes and frees the worker's semaphore however slowly the client reads. Back to
    back, the worker's queue_length is n except for the moment between two of them."""
    def run() -> None:
        while not stop.is_set():
            with httpx.stream("POST", worker_url + "/worker_generate_stream", timeout=300, json={
                    "model": model, "prompt": "Hi", "temperature": 0, "max_new_tokens": 500, "echo": False}) as r:
                for _ in r.iter_bytes():
                    pass
    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.fixture
def quiet(fc) -> Iterator[None]:  # type: ignore[no-untyped-def]
    gw, _ = fc
    wait_for(lambda: reported_load(gw) == 0.0, "no work left on the workers")
    yield
    wait_for(lambda: reported_load(gw) == 0.0, "the direct generations finished")


def test_echo_is_off(fc) -> None:  # type: ignore[no-untyped-def]
    gw, cluster = fc
    worker, model, prompt = cluster["workers"][0]["url"], cluster["model"], "Hello! How are you?"
    direct = {"model": model, "prompt": prompt, "temperature": 0, "max_new_tokens": 6}
    # the worker's own default repeats the prompt ahead of the answer
    assert httpx.post(worker + "/worker_generate", json=direct, timeout=60).json()["text"].startswith(prompt)
    answer = httpx.post(worker + "/worker_generate", json={**direct, "echo": False}, timeout=60).json()["text"]
    assert answer and not answer.startswith(prompt)
    body = {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 6}
    r = httpx.post(gw.v1 + "/completions", json=body, headers=JSON, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == answer  # greedy: the same tokens, without the prompt
    with httpx.stream("POST", gw.v1 + "/completions", json={**body, "stream": True}, headers=JSON, timeout=60) as s:
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == answer
    chat = httpx.post(gw.v1 + "/chat/completions", headers=JSON, timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 6, "temperature": 0})
    content = chat.json()["choices"][0]["message"]["content"]
    assert prompt not in content and "USER:" not in content  # not the rendered conversation either


@pytest.mark.parametrize("busier", [0, 1])
def test_load_is_the_sum_of_queues_and_the_least_busy_worker_serves(fc, quiet, busier: int) -> None:  # type: ignore[no-untyped-def]
    gw, cluster = fc
    workers, model = cluster["workers"], cluster["model"]
    other = 1 - busier
    stop = threading.Event()
    threads = busy(workers[busier]["url"], model, 3, stop) + busy(workers[other]["url"], model, 1, stop)
    try:
        # 3 + 1 running: only the sum of both workers' queue_length reads 4
        seen: list[float | None] = []
        wait_for(lambda: seen.append(reported_load(gw)) or seen[-1] == 4.0,
                 lambda: f"load 4 reported: {seen[-20:]}; the workers say {[queue_of(w) for w in workers]}; "
                         f"the gateway: {httpx.get(gw.url + '/admin/backends').json()['backends'][0]}")
        calls = [generate_calls(w) for w in workers]
        r = httpx.post(gw.v1 + "/completions", headers=JSON, timeout=60,
                       json={"model": model, "prompt": "Once", "max_tokens": 2})
        assert r.status_code == 200, r.text
        # the gateway's request went to the worker with the shorter queue, whichever it lists first
        wait_for(lambda: generate_calls(workers[other]) == calls[other] + 1, "served by the less busy worker")
        assert generate_calls(workers[busier]) == calls[busier]
    finally:
        stop.set()
        for t in threads:
            t.join(300)


def test_every_worker_is_found_when_the_controller_favours_one(fastchat_cluster: dict, spawn: Spawner) -> None:  # type: ignore[type-arg]
    """The controller's default dispatch (shortest_queue) hands out the worker with the lowest queue
    estimate and adds 1 to it: with estimates 0 and 8 the first worker comes back 8 times, so "ask until
    an address repeats" found one worker of two (a full CI run saw this: load 1 for 60 s, "1 live
    worker(s)"). A heartbeat in the second worker's name sets its estimate to 8 (its own next heartbeat,
    up to 45 s later, resets it); the gateway must still know both workers from its first ready probe."""
    controller, workers = fastchat_cluster["controller"], fastchat_cluster["workers"]
    for w, estimate in zip(workers, (0, 8)):
        r = httpx.post(controller + "/receive_heart_beat", json={"worker_name": w["url"], "queue_length": estimate})
        assert r.json() == {"exist": True}
    gw = spawn.gateway({"health": {"interval": 0.2, "timeout": 30},
                        "backends": [{"name": "fc", "kind": "fastchat", "url": controller}]})
    seen: list[dict] = []  # type: ignore[type-arg]
    wait_for(lambda: seen.append(httpx.get(gw.url + "/admin/backends").json()["backends"][0])
             or seen[-1]["state"] == "ready", lambda: f"the backend never became ready: {seen[-1]}")
    assert seen[-1]["detail"] == "2 live worker(s)", seen[-1]
