"""Backends cannot be turned against the operator's network: FastChat worker addresses a controller
reports are checked (S16), and `media_urls: data_only` keeps media links from reaching backends that
would fetch them (S20). Ollama's client overrides (S17): tests/test_ollama_gateway.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.doubles.fastchat_fake import FakeServer, controller, worker
from tests.procs import Spawner

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def fakes() -> Iterator[list[FakeServer]]:
    servers: list[FakeServer] = []
    yield servers
    for s in servers:
        s.close()


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def chat(gw_v1: str, model: str) -> httpx.Response:
    return httpx.post(gw_v1 + "/chat/completions", json={"model": model, "messages": MESSAGES}, timeout=30)


def served(gw_v1: str) -> list[str]:
    return sorted(m["id"] for m in httpx.get(gw_v1 + "/models").json()["data"])


def test_a_controller_cannot_send_the_gateway_to_other_hosts_paths_or_credentials(spawn: Spawner,
                                                                                  fakes: list[FakeServer]) -> None:
    good = worker("127.0.0.1", "good-model", "Hello from good")
    elsewhere = worker("127.0.0.2", "elsewhere", "Hello from 127.0.0.2")  # another host (loopback range)
    admin = worker("127.0.0.1", "with-path", "never")  # an "internal service" on the controller's host
    creds = worker("127.0.0.1", "with-userinfo", "never")
    fakes += [good, elsewhere, admin, creds]
    ctl = controller("127.0.0.1", {
        "good-model": good.url, "elsewhere": elsewhere.url,
        "with-path": admin.url + "/internal/admin/delete-everything?x=",
        "with-userinfo": f"http://root:s3cret@127.0.0.1:{creds.port}"})
    fakes.append(ctl)
    gw = spawn.gateway({"health": {"interval": 0.2},
                        "backends": [{"name": "fc", "kind": "fastchat", "url": ctl.url}]})
    wait_until(lambda: ctl.count("/list_models") >= 3, "three discovery rounds")
    r = chat(gw.v1, "good-model")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello from good"
    assert served(gw.v1) == ["good-model"]
    assert chat(gw.v1, "elsewhere").status_code == 404
    assert (elsewhere.requests, admin.requests, creds.requests) == ([], [], [])  # never contacted
    log = gw.proc.output()
    for addr in (elsewhere.url, admin.url, creds.url):  # each refusal logged once over >= 3 rounds
        assert log.count(f"controller reported worker address '{addr}'; skipped") == 1, log
    assert "s3cret" not in log and "delete-everything" not in log  # no user info, path or query


def test_worker_hosts_widens_the_allowed_hosts_and_can_pin_ports(spawn: Spawner, fakes: list[FakeServer]) -> None:
    good = worker("127.0.0.1", "good-model", "Hello from good")
    elsewhere = worker("127.0.0.2", "elsewhere", "Hello from 127.0.0.2")
    other_port = worker("127.0.0.1", "other-port", "never")
    fakes += [good, elsewhere, other_port]
    ctl = controller("127.0.0.1", {"good-model": good.url, "elsewhere": elsewhere.url + "/",
                                   "other-port": other_port.url})
    fakes.append(ctl)
    gw = spawn.gateway({"health": {"interval": 0.2}, "backends": [
        {"name": "fc", "kind": "fastchat", "url": ctl.url,
         "worker_hosts": [f"127.0.0.1:{good.port}", "127.0.0.2"]}]})
    wait_until(lambda: ctl.count("/list_models") >= 2, "two discovery rounds")
    assert served(gw.v1) == ["elsewhere", "good-model"]
    assert chat(gw.v1, "elsewhere").json()["choices"][0]["message"]["content"] == "Hello from 127.0.0.2"
    assert other_port.requests == []  # the controller's host, but not the allowed port


def test_a_bad_worker_hosts_entry_is_a_config_error(spawn: Spawner) -> None:
    gw = spawn.gateway({"backends": [{"name": "fc", "kind": "fastchat", "url": "http://127.0.0.1:1",
                                      "worker_hosts": ["http://10.0.0.1/"]}]}, wait=False)
    assert gw.proc.popen.wait(60) != 0
    assert "'http://10.0.0.1/' is not a host or host:port" in gw.proc.output()


# -- S20: media links -------------------------------------------------------------------------
def image(url: Any, kind: str = "image_url") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": kind, kind: url}]}]


def test_data_only_backends_refuse_media_links_with_a_400_naming_the_field(spawn: Spawner) -> None:
    up = spawn.double("media", "m")
    gw = spawn.gateway({
        "backends": [{"name": "strict", "kind": "vllm", "url": up.url, "media_urls": "data_only", "discover": False},
                     {"name": "open", "kind": "vllm", "url": up.url, "discover": False}],
        "models": [{"name": "strict", "backends": [{"backend": "strict", "model": "m"}]},
                   {"name": "open", "backends": [{"backend": "open", "model": "m"}]}]})
    link = "http://169.254.169.254/latest/meta-data/"
    refused = [
        (image({"url": link}), False, "messages[0].content[1].image_url.url"),
        (image({"url": link}), True, "messages[0].content[1].image_url.url"),  # a stream: refused before it starts
        (image(link), False, "messages[0].content[1].image_url"),  # vLLM's bare-string form
        (image({"url": "file:///etc/passwd"}, "video_url"), False, "messages[0].content[1].video_url.url"),
        (image({"url": " HTTPS://intranet/a.wav"}, "audio_url"), False, "messages[0].content[1].audio_url.url"),
    ]
    for messages, stream, param in refused:
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "strict", "messages": messages, "stream": stream})
        assert r.status_code == 400, (param, r.text)
        err = r.json()["error"]
        assert (err["param"], err["code"], err["type"]) == (param, "media_url_not_allowed", "invalid_request_error")
    assert up.requests() == []  # nothing reached the backend
    inline = image({"url": "data:image/png;base64,iVBORw0KGgo="})
    assert httpx.post(gw.v1 + "/chat/completions", json={"model": "strict", "messages": inline}).status_code == 200
    assert httpx.post(gw.v1 + "/chat/completions", json={"model": "open", "messages": image({"url": link})}
                      ).status_code == 200  # the default, `allow`, forwards links as before
    sent = [req["body"]["messages"][0]["content"][1]["image_url"]["url"] for req in up.requests()]
    assert sent == ["data:image/png;base64,iVBORw0KGgo=", link]
