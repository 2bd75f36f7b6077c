"""Who may do what (README "Security"): client keys, admin keys, cross-site admin requests, the
open local gateway, the loud start on a non-loopback address, keys and URLs in the config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.procs import ROOT, Gateway, Spawner, free_port

CLIENT = "client-key-0123456789abcdef"
ADMIN = "admin-key-fedcba9876543210"
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "m", "messages": MESSAGES}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_envelope(r: httpx.Response, status: int, etype: str, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == etype
    if code is not None:
        assert err["code"] == code


def state(gw: Gateway, name: str, key: str = ADMIN) -> str:
    r = httpx.get(gw.url + "/admin/backends", headers=bearer(key))
    assert r.status_code == 200, r.text
    return {b["name"]: b["state"] for b in r.json()["backends"]}[name]


def wait_state(gw: Gateway, name: str, want: str, key: str = ADMIN) -> None:
    deadline = time.monotonic() + 30
    while state(gw, name, key) != want:
        assert time.monotonic() < deadline, f"{name} never became {want}"
        time.sleep(0.05)


def status_cli(gw: Gateway, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_ADMIN_KEY", "GATEWAY_API_KEY")}
    return subprocess.run([sys.executable, "-m", "gateway", "status", "--url", gw.url, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **env})


@pytest.fixture
def keyed(spawn: Spawner) -> Gateway:
    up = spawn.double("up", "m")
    # debug logging: the checks that no key reaches the log then cover every line the gateway can write
    return spawn.gateway({"auth": {"api_keys": [CLIENT], "admin_keys": [ADMIN]},
                          "server": {"log_level": "debug"}, "health": {"not_ready_interval": 0.2},
                          "backends": [{"name": "up", "kind": "vllm", "url": up.url}]})


def test_a_client_key_cannot_drain_an_admin_key_can(keyed: Gateway) -> None:
    gw = keyed
    drain = gw.url + "/admin/backends/up/drain"
    for h in (bearer(CLIENT), {"X-Api-Key": CLIENT}):
        assert_envelope(httpx.post(drain, headers=h), 403, "permission_error", "admin_key_required")
        assert_envelope(httpx.get(gw.url + "/admin/backends", headers=h), 403, "permission_error")
    for h in ({}, bearer("not-a-key-of-this-gateway")):
        assert_envelope(httpx.post(drain, headers=h), 401, "authentication_error", "invalid_api_key")
    # the client's attempts changed nothing: the backend is ready and serves
    assert state(gw, "up") == "ready"
    r = httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=bearer(CLIENT))
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == "up"
    # the admin key drains (new requests get 503), undrains, and the next probe brings it back
    r = httpx.post(drain, headers=bearer(ADMIN))
    assert r.status_code == 200 and r.json()["state"] == "draining"
    assert_envelope(httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=bearer(CLIENT)), 503,
                    "server_error", "no_ready_deployment")
    assert httpx.post(gw.url + "/admin/backends/up/undrain", headers=bearer(ADMIN)).status_code == 200
    wait_state(gw, "up", "ready")
    # an admin key may also do what a client key does
    assert httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=bearer(ADMIN)).status_code == 200
    out = gw.proc.output()  # written at debug level (the fixture), so debug lines are covered too
    for secret in (CLIENT, ADMIN, "not-a-key-of-this-gateway"):  # neither valid keys nor a wrong one
        assert secret not in out


def test_cross_site_admin_requests_are_refused(keyed: Gateway) -> None:
    gw = keyed
    drain = gw.url + "/admin/backends/up/drain"
    for h in ({"Origin": "https://attacker.example", "Content-Type": "text/plain"},
              {"Origin": "null"},
              {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
              {"Origin": f"http://127.0.0.1:{gw.port}", "Sec-Fetch-Site": "cross-site"}):
        assert_envelope(httpx.post(drain, headers={**bearer(ADMIN), **h}), 403, "permission_error",
                        "cross_site_request")
    assert state(gw, "up") == "ready"
    # the same request from the gateway's own origin (or a tool that sends neither header) passes
    same = {"Origin": f"http://127.0.0.1:{gw.port}", "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(drain, headers={**bearer(ADMIN), **same}).json()["state"] == "draining"


def test_status_command_reads_the_admin_key_from_the_environment(keyed: Gateway) -> None:
    gw = keyed
    ok = status_cli(gw, {"GATEWAY_ADMIN_KEY": ADMIN})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = {ln.split()[0]: ln.split() for ln in ok.stdout.splitlines()[1:]}
    assert rows["up"][1:3] == ["vllm", "ready"]
    client = status_cli(gw, {"GATEWAY_ADMIN_KEY": CLIENT})
    assert client.returncode == 1 and "HTTP 403" in client.stdout and "admin key" in client.stdout
    none = status_cli(gw, {})
    assert none.returncode == 1 and "HTTP 401" in none.stdout
    argv = status_cli(gw, {}, "--api-key", ADMIN)  # still works, with a warning
    assert argv.returncode == 0 and "deprecated" in argv.stderr and "GATEWAY_ADMIN_KEY" in argv.stderr


def test_open_endpoints_and_docs_with_keys(keyed: Gateway) -> None:
    gw = keyed
    assert httpx.get(gw.url + "/healthz").status_code == 200
    assert "llm_gateway_backend_state" in httpx.get(gw.url + "/metrics").text
    anon = httpx.get(gw.url + "/readyz")
    assert anon.status_code == 200 and anon.json() == {"status": "ready"}  # no topology for anonymous callers
    assert httpx.get(gw.url + "/readyz", headers=bearer(CLIENT)).json()["backends"] == {"up": "ready"}
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(gw.url + path).status_code == 404, path
        assert httpx.get(gw.url + path, headers=bearer(ADMIN)).status_code == 404, path
    assert_envelope(httpx.get(gw.v1 + "/models"), 401, "authentication_error")


def test_client_keys_without_admin_keys_turn_admin_off(spawn: Spawner) -> None:
    up = spawn.double("up", "m")
    gw = spawn.gateway({"auth": {"api_keys": [CLIENT]}, "backends": [{"name": "up", "kind": "vllm", "url": up.url}]})
    for path, method in (("/admin/backends", "GET"), ("/admin/backends/up/drain", "POST")):
        assert_envelope(httpx.request(method, gw.url + path, headers=bearer(CLIENT)), 403, "permission_error",
                        "admin_disabled")
        assert_envelope(httpx.request(method, gw.url + path), 401, "authentication_error")
    assert httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=bearer(CLIENT)).status_code == 200
    assert "admin endpoints: disabled" in gw.proc.output()


def test_an_open_gateway_keeps_admin_on_loopback(spawn: Spawner) -> None:
    up = spawn.double("up", "m")
    gw = spawn.gateway({"backends": [{"name": "up", "kind": "vllm", "url": up.url}]})
    assert httpx.get(gw.url + "/admin/backends").status_code == 200
    assert httpx.get(f"http://localhost:{gw.port}/admin/backends").status_code == 200
    # DNS rebinding reaches loopback under a foreign name: refused
    assert_envelope(httpx.get(gw.url + "/admin/backends", headers={"Host": "attacker.example:4000"}), 403,
                    "permission_error", "admin_loopback_only")
    # a web page posting to the local gateway (no key needed here) is refused
    assert_envelope(httpx.post(gw.url + "/admin/backends/up/drain", headers={"Origin": "https://attacker.example"}),
                    403, "permission_error", "cross_site_request")
    assert_envelope(httpx.post(gw.url + "/admin/backends/up/drain", headers={"Sec-Fetch-Site": "cross-site"}),
                    403, "permission_error", "cross_site_request")
    assert httpx.get(gw.url + "/readyz").json()["backends"] == {"up": "ready"}
    assert httpx.post(gw.v1 + "/chat/completions", json=CHAT).headers["x-llm-gateway-backend"] == "up"
    for path in ("/docs", "/redoc", "/openapi.json"):  # a local open gateway keeps its console
        assert httpx.get(gw.url + path).status_code == 200, path


def local_non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def serve_on_all_interfaces(spawn: Spawner, config: dict, name: str) -> tuple[Gateway, str]:
    port = free_port()
    path = spawn.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    p = spawn.proc([sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", str(port),
                    "--config", str(path)], name)
    gw = Gateway(p, port)
    p.wait_http(gw.url + "/healthz")
    return gw, p.output()


def test_a_gateway_beyond_loopback_without_keys_warns_loudly(spawn: Spawner) -> None:
    up = spawn.double("up", "m")
    backends = [{"name": "up", "kind": "vllm", "url": up.url}]
    gw, log = serve_on_all_interfaces(spawn, {"backends": backends}, "exposed")
    warning = [ln for ln in log.splitlines() if "ANYONE WHO CAN REACH THIS PORT" in ln]
    assert len(warning) == 1 and "WARNING" in warning[0] and "0.0.0.0" in warning[0], log
    # the admin endpoints of this open gateway answer loopback clients only
    ip = local_non_loopback_ip()
    if ip is not None:
        r = httpx.get(f"http://{ip}:{gw.port}/admin/backends")
        assert_envelope(r, 403, "permission_error", "admin_loopback_only")
        assert httpx.post(f"http://{ip}:{gw.port}/admin/backends/up/drain").status_code == 403
    assert httpx.get(gw.url + "/admin/backends").status_code == 200
    # with a key, or on loopback, no warning
    _, keyed_log = serve_on_all_interfaces(spawn, {"backends": backends, "auth": {"api_keys": [CLIENT]}}, "keyed")
    assert "ANYONE WHO CAN REACH" not in keyed_log and "admin endpoints: disabled" in keyed_log
    local = spawn.gateway({"backends": backends})
    assert "ANYONE WHO CAN REACH" not in local.proc.output()
    assert "admin endpoints: open to loopback clients only" in local.proc.output()


def test_a_non_ascii_key_matches_on_every_path(spawn: Spawner) -> None:
    client, admin = "schlüssel-für-das-team-äöü", "verwaltungs-schlüssel-ßßß"
    up = spawn.double("up", "m")
    gw = spawn.gateway({"auth": {"api_keys": [client], "admin_keys": [admin]},
                        "backends": [{"name": "up", "kind": "vllm", "url": up.url}]})
    raw = {"authorization": b"Bearer " + client.encode()}
    assert httpx.post(gw.v1 + "/chat/completions", json=CHAT, headers=raw).status_code == 200  # raw ASGI
    r = httpx.get(gw.v1 + "/models", headers=raw)  # FastAPI
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["m"]
    assert httpx.get(gw.v1 + "/models", headers={"x-api-key": client.encode()}).status_code == 200
    assert httpx.get(gw.url + "/admin/backends", headers={"authorization": b"Bearer " + admin.encode()}
                     ).status_code == 200
    # the latin-1 reading of the same bytes is a different key
    mangled = {"authorization": b"Bearer " + client.encode().decode("latin-1").encode()}
    assert_envelope(httpx.get(gw.v1 + "/models", headers=mangled), 401, "authentication_error")


def check_config(tmp: Path, config: dict) -> subprocess.CompletedProcess[str]:
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


BACKEND = {"name": "a", "kind": "vllm", "url": "http://127.0.0.1:8000"}


@pytest.mark.parametrize("config, expected, secret", [
    ({"auth": {"api_keys": ["short-key"]}}, "auth.api_keys: a key must be at least 16 characters", "short-key"),
    ({"auth": {"admin_keys": ["changeme"]}}, "auth.admin_keys: an API key is a placeholder value", None),
    ({"auth": {"admin_keys": [" padded-admin-key-123 "]}}, "auth.admin_keys: a key may not contain control", None),
    ({"auth": {"api_keys": [CLIENT], "admin_keys": [CLIENT]}},
     "auth: admin_keys: a key is also in api_keys", CLIENT),
    ({"backends": [{**BACKEND, "url": "http://svcuser:svcpass@127.0.0.1:8000"}]},
     "backends[0].url: credentials in a backend URL are not supported", "svcpass"),
    ({"backends": [{**BACKEND, "api_key": "upstream-key\r\nX-Injected: 1"}]},
     "backends[0].api_key: api_key may not contain control characters", "X-Injected"),
])
def test_unsafe_key_and_url_settings_are_refused(tmp_path: Path, config: dict, expected: str,
                                                 secret: str | None) -> None:
    r = check_config(tmp_path, config)
    assert r.returncode == 2 and expected in r.stderr, r.stdout + r.stderr
    if secret is not None:
        assert secret not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_summarises_auth(tmp_path: Path) -> None:
    r = check_config(tmp_path, {"auth": {"api_keys": [CLIENT], "admin_keys": [ADMIN]}, "backends": [BACKEND]})
    assert r.returncode == 0 and "auth: 1 client key(s), 1 admin key(s)" in r.stdout, r.stderr
    assert CLIENT not in r.stdout and ADMIN not in r.stdout
