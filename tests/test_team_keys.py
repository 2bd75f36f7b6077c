"""Named keys (auth.keys): made by `llm-gateway keys new`, stored as HMACs, scoped to models, admin or not;
CORS for browser clients. Real gateway processes in front of the OpenAI-compatible double."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
import yaml

from tests.procs import Double, Gateway, Spawner

SECRET = "test-secret-" + "9" * 40
BOB = "bob-plaintext-key-0123456789"
OPS = "ops-admin-key-0123456789abcdef"
LEGACY = "legacy-client-key-0123456789"
ORIGIN = "https://chat.example.org"


def keys_new(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"} | ({"GATEWAY_KEY_SECRET": secret} if secret else {})
    return subprocess.run([sys.executable, "-m", "gateway", "keys", "new", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    sp = Spawner(tmp_path_factory.mktemp("team-keys"))
    try:
        made = keys_new("alice", "--team", "research", "--models", "model-*")
        assert made.returncode == 0, made.stderr
        lines = made.stdout.splitlines()
        alice = lines[1]
        entry = yaml.safe_load("\n".join(lines[3:]))
        dbl = sp.double("dbl", "model-a,tiny-b1")
        cfg = {"auth": {"api_keys": [LEGACY], "keys": [*entry,
                        {"name": "bob", "key": BOB, "models": ["tiny-*"]},
                        {"name": "ops", "key": OPS, "admin": True}]},
               "cors": {"allow_origins": [ORIGIN]},
               "backends": [{"name": "dbl", "kind": "openai", "url": dbl.url}]}
        gw = sp.gateway(cfg, env={"GATEWAY_KEY_SECRET": SECRET})
        yield {"gw": gw, "dbl": dbl, "alice": alice, "entry": entry, "cfg": cfg, "sp": sp}
    finally:
        sp.stop_all()


def chat(gw: Gateway, key: str | None, model: str, **headers: str) -> httpx.Response:
    h = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gw.url + "/v1/chat/completions", headers=h | headers, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def models(gw: Gateway, key: str) -> list[str]:
    r = httpx.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return sorted(m["id"] for m in r.json()["data"])


def test_keys_new_prints_a_key_once_and_an_entry_holding_only_its_hash(setup: dict[str, Any]) -> None:
    alice, entry = setup["alice"], setup["entry"]
    assert alice.startswith("sk-") and len(alice) >= 40
    assert entry == [{"name": "alice", "hash": entry[0]["hash"], "team": "research", "models": ["model-*"]}]
    assert entry[0]["hash"].startswith("hmac-sha256:") and alice not in yaml.safe_dump(entry)
    again = keys_new("alice")
    assert again.stdout.splitlines()[1] != alice           # a fresh key each time
    missing = keys_new("alice", secret=None)
    assert missing.returncode == 2 and "GATEWAY_KEY_SECRET is not set" in missing.stderr and not missing.stdout
    bad = keys_new("no spaces allowed")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_each_key_reaches_only_its_models(setup: dict[str, Any]) -> None:
    gw, alice = setup["gw"], setup["alice"]
    assert chat(gw, alice, "model-a").status_code == 200
    r = chat(gw, alice, "tiny-b1")
    assert r.status_code == 403, r.text
    assert r.json()["error"] == {"message": "This key may not use the model 'tiny-b1'.", "type": "permission_error",
                                 "param": "model", "code": "model_not_allowed"}
    assert chat(gw, BOB, "tiny-b1").status_code == 200 and chat(gw, BOB, "model-a").status_code == 403
    assert models(gw, alice) == ["model-a"] and models(gw, BOB) == ["tiny-b1"]
    assert models(gw, LEGACY) == models(gw, OPS) == ["model-a", "tiny-b1"]     # flat and admin keys: all
    one = httpx.get(gw.url + "/v1/models/tiny-b1", headers={"Authorization": f"Bearer {alice}"})
    assert one.status_code == 403 and one.json()["error"]["code"] == "model_not_allowed"


def test_missing_or_wrong_keys_are_401_and_admin_needs_an_admin_key(setup: dict[str, Any]) -> None:
    gw, alice = setup["gw"], setup["alice"]
    for key in (None, "sk-not-a-key-of-this-gateway", alice[:-1], setup["entry"][0]["hash"]):
        r = chat(gw, key, "model-a")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", (key, r.text)
    assert httpx.get(gw.url + "/admin/backends", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    assert httpx.get(gw.url + "/admin/backends", headers={"Authorization": f"Bearer {OPS}"}).status_code == 200
    assert httpx.get(gw.url + "/admin/backends", headers={"X-Api-Key": OPS}).status_code == 200


def test_no_key_in_logs_metrics_or_errors(setup: dict[str, Any]) -> None:
    gw, alice = setup["gw"], setup["alice"]
    chat(gw, alice, "tiny-b1")
    chat(gw, alice + "x", "model-a")
    text = httpx.get(gw.url + "/metrics").text + gw.proc.output()
    for secret in (alice, BOB, OPS, LEGACY, SECRET, alice + "x"):
        assert secret not in text


def test_hashed_keys_without_their_secret_stop_the_gateway_with_one_line(setup: dict[str, Any]) -> None:
    sp: Spawner = setup["sp"]
    gw = sp.gateway(setup["cfg"], env={"GATEWAY_KEY_SECRET": ""}, wait=False)
    assert gw.proc.popen.wait(30) == 2
    out = gw.proc.output()
    assert "auth.keys has hashed keys but $GATEWAY_KEY_SECRET is not set" in out and "Traceback" not in out


def test_a_browser_preflight_is_answered_without_a_key_and_answers_carry_cors(setup: dict[str, Any]) -> None:
    gw, alice = setup["gw"], setup["alice"]
    pre = httpx.options(gw.url + "/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == "authorization,content-type"
    r = chat(gw, alice, "model-a", Origin=ORIGIN)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"]
    denied = chat(gw, None, "model-a", Origin=ORIGIN)           # errors carry it too: the page can read why
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {alice}",
                      "Origin": ORIGIN}, json={"model": "model-a", "stream": True,
                                               "messages": [{"role": "user", "content": "hi"}]}) as s:
        assert s.headers["access-control-allow-origin"] == ORIGIN
        assert "data: [DONE]" in "".join(s.iter_text())
    # another origin gets nothing to read with; admin endpoints never open to other origins
    other = httpx.options(gw.url + "/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    adm = httpx.get(gw.url + "/admin/backends", headers={"Authorization": f"Bearer {OPS}", "Origin": ORIGIN})
    assert adm.status_code == 403 and "access-control-allow-origin" not in adm.headers


def test_without_cors_config_no_cors_headers(spawn: Spawner) -> None:
    dbl: Double = spawn.double("plain", "model-a")
    gw = spawn.gateway({"backends": [{"name": "plain", "kind": "openai", "url": dbl.url}]})
    pre = httpx.options(gw.url + "/v1/chat/completions", headers={"Origin": ORIGIN,
                                                                  "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers


def test_the_key_ring_remembers_only_verified_headers_and_stays_bounded() -> None:
    from gateway.auth import keys as keymod
    from gateway.settings import AuthSettings
    ring = keymod.KeyRing(AuthSettings(keys=[{"name": "bob", "key": BOB}]), environ={})
    for i in range(10_000):                                  # guesses: refused, never remembered
        assert ring.identify(f"Bearer guess-{i:06d}-0123456789".encode()) is None
    assert len(ring._seen) == 0
    assert ring.identify(f"Bearer {BOB}".encode()).name == "bob"
    assert ring.identify(f"bearer {BOB}".encode()).name == "bob"      # another spelling of the same key
    assert len(ring._seen) == 2
    for i in range(keymod.SEEN_MAX + 10):                    # many spellings: cleared when full, never above
        ring.identify(f"Bearer {BOB}{' ' * (i % 50)}".encode() + b" " * (i // 50))
        assert len(ring._seen) <= keymod.SEEN_MAX
