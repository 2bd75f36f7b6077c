"""Config: the documented schema, env overrides, and errors that name the key (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config_loader import ConfigError, load_settings
from gateway.runtime import Gateway
from tests.procs import ROOT

ISSUE_EXAMPLE = """\
backends:
  - name: gpu1-vllm
    kind: vllm            # kinds: openai, llamacpp, vllm, tgi, fastchat, rwkv-runner, ollama
    url: http://127.0.0.1:8000
  - name: gpu2-llama
    kind: llamacpp
    url: http://127.0.0.1:8080
models:                   # optional: public names, aliases, pools; otherwise discovered
  - name: qwen2.5-7b
    aliases: [qwen]
    backends: [gpu1-vllm, gpu2-llama]
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env={**os.environ, **(env or {})})


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "gw.yaml"
    p.write_text(text)
    return str(p)


def test_check_config_prints_the_routing_table(tmp_path: Path) -> None:
    r = cli("check-config", write(tmp_path, ISSUE_EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert "qwen2.5-7b  aliases: qwen" in r.stdout
    assert "-> gpu1-vllm" in r.stdout and "-> gpu2-llama" in r.stdout
    assert "gpu2-llama               llamacpp     http://127.0.0.1:8080" in r.stdout


def test_example_config_in_deploy_is_valid() -> None:
    settings = load_settings(ROOT / "deploy" / "gateway.example.yaml")
    table = Gateway(settings).table
    route = table.resolve("qwen")
    assert [(d.backend.name, d.upstream_model) for d in route.deployments] == [
        ("gpu1-vllm", "Qwen/Qwen2.5-7B-Instruct"), ("gpu2-llama", "qwen2.5-7b-instruct-q4_k_m.gguf")]
    assert cli("check-config", str(ROOT / "deploy" / "gateway.example.yaml")).returncode == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("backends: [{name: a, kind: nope, url: 'http://x'}]", "backends[0].kind: unknown backend kind 'nope'"),
    ("backends: [{name: a, kind: vllm, url: 'ftp://x'}]", "backends[0].url:"),
    ("backends: [{name: a, kind: vllm}]", "backends[0].url: Field required"),
    ("backends: [{name: a, kind: vllm, url: 'http://x', colour: red}]", "backends[0].colour: unknown key"),
    ("backends: [{name: a, kind: vllm, url: 'http://x'}, {name: a, kind: tgi, url: 'http://y'}]",
     "backends[1].name: duplicate backend name 'a'"),
    ("backends: [{name: a, kind: vllm, url: 'http://x'}]\nmodels: [{name: m, backends: [b]}]",
     "models[0].backends[0]: unknown backend 'b'"),
    ("backends: [{name: a, kind: vllm, url: 'http://x'}]\n"
     "models: [{name: m, backends: [a]}, {name: n, aliases: [m], backends: [a]}]",
     "models[1].aliases[0]: 'm' is already used by models[0].name"),
    ("server: {port: 99999}", "server.port: Input should be less than or equal to 65535"),
    ("auth: {api_keys: [changeme]}", "auth.api_keys: an API key is a placeholder value"),
    ("backends: [{name: a, kind: vllm, url: 'http://x'\n", "invalid YAML at line"),
    ("- just\n- a list\n", "the top level must be a mapping"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert expected in str(exc.value)
    for cmd in (["check-config", path], ["serve", "--config", path, "--port", "1"]):
        r = cli(*cmd)
        assert r.returncode == 2
        assert expected in r.stderr
        assert "Traceback" not in r.stderr + r.stdout


def test_missing_file(tmp_path: Path) -> None:
    r = cli("check-config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr and "Traceback" not in r.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server: {port: 5000, max_body_bytes: 2048}\n" + ISSUE_EXAMPLE)
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "6000")
    monkeypatch.setenv("GATEWAY_AUTH__API_KEYS", '["a-real-key-0123456789"]')
    s = load_settings(path)
    assert s.server.port == 6000 and s.server.max_body_bytes == 2048
    assert [k.get_secret_value() for k in s.auth.api_keys] == ["a-real-key-0123456789"]
    assert "a-real-key-0123456789" not in repr(s)
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert "server.port" in str(exc.value)
