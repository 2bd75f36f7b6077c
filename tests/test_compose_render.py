"""`llm-gateway compose` (gateway/recipes/compose_file.py) and the root compose.yaml it generates from
deploy/gateway.compose.yaml. Docker cannot run here: the files are checked against the Compose schema, each
backend service against what its recipe renders, and ports, healthchecks, the gateway config's backend URLs and
Prometheus targets against each other; the generated config is served by a real gateway, and the image's
HEALTHCHECK command is run against it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from gateway.config_loader import ConfigError, load_settings
from gateway.recipes.catalog import kinds
from gateway.recipes.plan import LaunchParams, build
from gateway.recipes.render import compose_services
from tests.procs import ROOT, Spawner

CONFIG = ROOT / "deploy" / "gateway.compose.yaml"
SPEC = json.loads((ROOT / "tests" / "fixtures" / "compose-spec.json").read_text())
COMPOSE_ONLY = ("profiles", "start", "idle_timeout", "group")   # launch keys that are not recipe parameters


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "compose", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _valid(doc: dict[str, Any]) -> None:
    errors = list(jsonschema.Draft7Validator(SPEC).iter_errors(doc))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _launched() -> list[dict[str, Any]]:
    return [b for b in yaml.safe_load(CONFIG.read_text())["backends"] if "launch" in b]


def test_compose_yaml_is_what_the_renderer_makes_of_the_example_config() -> None:
    r = _cli("--config", "deploy/gateway.compose.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "compose.yaml").read_text(), \
        "compose.yaml is stale: llm-gateway compose --config deploy/gateway.compose.yaml --out compose.yaml"


def test_compose_yaml_validates_and_each_backend_service_is_its_recipe() -> None:
    compose = _compose()
    _valid(compose)
    services = compose["services"]
    for b in _launched():
        launch = {k: v for k, v in b["launch"].items() if k not in COMPOSE_ONLY}
        params = LaunchParams(**launch, port=urlsplit(b["url"]).port, name=b["name"])
        expected = compose_services(build(b["kind"], params, "container"))
        for name, svc in expected["services"].items():
            got = dict(services[name])
            assert got.pop("profiles", []) == b["launch"].get("profiles", []), name
            assert got == svc, name          # image, command, env, ports, volumes, healthcheck, GPUs
        for vol in expected.get("volumes", {}):
            assert vol in compose["volumes"]


def test_every_kind_is_a_profile_or_the_default_and_cpu_runs_llamacpp_without_gpus() -> None:
    services = _compose()["services"]
    by_profile: dict[str, set[str]] = {}
    for b in _launched():
        for p in b["launch"].get("profiles") or ["(default)"]:
            by_profile.setdefault(p, set()).add(b["kind"])
    assert by_profile["(default)"] == {"vllm"}
    for kind in kinds():
        assert kind == "vllm" or by_profile.get(kind) == {kind}, kind
    assert by_profile["cpu"] == {"llamacpp"}
    cpu = [b for b in _launched() if "cpu" in b["launch"].get("profiles", [])]
    for b in cpu:
        svc = services[b["name"]]
        assert b["launch"]["gpus"] == [] and "deploy" not in svc and svc["image"].endswith(":server")
        assert svc["command"][svc["command"].index("-ngl") + 1] == "0"
        assert b["launch"]["model"].endswith(".gguf")
    for name, svc in services.items():           # GPUs are reserved for every GPU backend, never for CPU
        if name not in ("gateway", "prometheus", "grafana") and "deploy" in svc:
            dev = svc["deploy"]["resources"]["reservations"]["devices"][0]
            assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["device_ids"]


def _port_in(svc: dict[str, Any], port: int) -> None:
    words = [str(w) for w in svc.get("command", [])] + list(svc.get("environment", {}).values())
    assert any(w == str(port) or w.endswith(f":{port}") for w in words), (port, words)
    assert f"127.0.0.1:{port}:{port}" in svc["ports"]
    test = " ".join(svc["healthcheck"]["test"])
    # Ollama's check is the `ollama list` client, which reaches the server at OLLAMA_HOST
    assert f"127.0.0.1:{port}/" in test or (test == "CMD ollama list"
                                            and svc["environment"]["OLLAMA_HOST"] == f"0.0.0.0:{port}")


def test_backend_urls_ports_healthchecks_and_dependencies_agree() -> None:
    compose = _compose()
    services = compose["services"]
    settings = load_settings(CONFIG)
    gw = services["gateway"]
    for b in settings.backends:
        assert b.launch is not None
        host, port = urlsplit(b.url).hostname, urlsplit(b.url).port
        assert host in services and port is not None, b.url
        _port_in(services[host], port)
        assert gw["depends_on"][host] == {"condition": "service_healthy", "required": False}
    for name, svc in services.items():           # post-start steps and workers wait for their server
        for dep, cond in svc.get("depends_on", {}).items() if isinstance(svc.get("depends_on"), dict) else []:
            assert cond["condition"] == "service_healthy" and "healthcheck" in services[dep], (name, dep)
    published = [p.rsplit(":", 2)[-2] for svc in services.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), published   # every profile can run at once
    port = settings.server.port
    assert gw["ports"] == [f"{port}:{port}"] and gw["command"][-1] == str(port)
    assert f"127.0.0.1:{port}/healthz" in " ".join(gw["healthcheck"]["test"])
    assert gw["volumes"] == [f"./deploy/gateway.compose.yaml:{gw['command'][2]}:ro"]


def test_prometheus_scrapes_the_gateway_and_vllm_tgi_but_not_llamacpp(tmp_path: Path) -> None:
    compose = _compose()
    prom_svc = compose["services"]["prometheus"]
    cfg = {c["source"]: c["target"] for c in prom_svc["configs"]}
    assert cfg["prometheus-config"] == "/etc/prometheus/prometheus.yml" and prom_svc["command"][0].endswith(
        cfg["prometheus-config"])
    text = compose["configs"]["prometheus-config"]["content"]
    prom = yaml.safe_load(text)
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    settings = load_settings(CONFIG)
    expected = {"llm-gateway": [f"gateway:{settings.server.port}"]}
    for b in settings.backends:
        if b.kind in ("vllm", "tgi"):
            expected[b.name] = [b.url.removeprefix("http://")]
    assert targets == expected and "llamacpp" not in targets and "llamacpp-cpu" not in targets
    base = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prom["rule_files"] == base["rule_files"] and prom["global"] == base["global"]
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in prom_svc["volumes"])
    for rule in prom["rule_files"]:
        assert mounts[f"./deploy/prometheus/{rule}"] == f"/etc/prometheus/{rule}"
        shutil.copy(ROOT / "deploy" / "prometheus" / rule, tmp_path / rule)
    if shutil.which("promtool") is None:
        pytest.fail("promtool is needed: install Debian's `prometheus` package (.ci/run does)")
    (tmp_path / "prometheus.yml").write_text(text)
    r = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _write(tmp: Path, config: dict[str, Any]) -> Path:
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


HOST_CONFIG = {"backends": [
    {"name": "tiny", "kind": "llamacpp", "url": "http://127.0.0.1:8089",
     "launch": {"model": "/models/tiny.gguf", "context": 2048, "gpus": [], "args": ["--chat-template-file=$T"]}},
    {"name": "chat", "kind": "fastchat", "url": "http://127.0.0.1:21001", "launch": {"model": "org/m"}},
    {"name": "remote", "kind": "vllm", "url": "http://gpu9:8000"}]}


def test_host_urls_are_rewritten_to_services_in_a_config_copy(tmp_path: Path) -> None:
    out = tmp_path / "stack" / "compose.yaml"
    out.parent.mkdir()
    r = _cli("--config", str(_write(tmp_path, HOST_CONFIG)), "--out", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    doc = yaml.safe_load(out.read_text())
    _valid(doc)
    gw = doc["services"]["gateway"]
    assert "volumes" not in gw and gw["configs"] == [{"source": "gateway-config",
                                                      "target": "/etc/llm-gateway/gateway.yaml"}]
    content = doc["configs"]["gateway-config"]["content"]
    # compose interpolates `$` in the copy as elsewhere: a literal one is written `$$`
    assert "--chat-template-file=$$T" in content and "=$T" not in content.replace("$$", "")
    copy = yaml.safe_load(content.replace("$$", "$"))
    assert copy["backends"][0]["launch"]["args"] == ["--chat-template-file=$T"]
    urls = {b["name"]: b["url"] for b in copy["backends"]}
    assert urls == {"tiny": "http://tiny:8089", "chat": "http://chat-controller:21001", "remote": "http://gpu9:8000"}
    assert set(gw["depends_on"]) == {"tiny", "chat-controller", "chat-worker"}
    assert "--port" in doc["services"]["tiny"]["command"] and "8089" in doc["services"]["tiny"]["command"]
    # paths are relative to the compose file's directory
    assert (out.parent / gw["build"]["context"]).resolve() == ROOT
    assert (out.parent / doc["services"]["grafana"]["volumes"][0].split(":")[0]).resolve() == \
        ROOT / "deploy" / "grafana" / "provisioning"
    assert [j["job_name"] for j in yaml.safe_load(doc["configs"]["prometheus-config"]["content"])[
        "scrape_configs"]] == ["llm-gateway"]     # neither llama.cpp nor FastChat is scraped


def test_a_rewritten_copy_never_carries_keys(tmp_path: Path) -> None:
    config = {**HOST_CONFIG, "auth": {"api_keys": ["k-0123456789abcdef-secret"]}}
    r = _cli("--config", str(_write(tmp_path, config)))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "auth.api_keys" in r.stderr and "LLM_GATEWAY_API_KEY" in r.stderr
    assert "k-0123456789abcdef-secret" not in r.stderr
    named = {**HOST_CONFIG, "auth": {"keys": [{"name": "alice", "key": "k-0123456789abcdef-named"}]}}
    r = _cli("--config", str(_write(tmp_path, named)))
    assert r.returncode == 2 and "auth.keys[0].key" in r.stderr and "k-0123456789abcdef-named" not in r.stderr


@pytest.mark.parametrize(("backend", "words"), [
    ({"kind": "fastchat", "url": "http://x:21001", "launch": {"model": "m", "context": 4096}},
     ["backends[0]", "launch", "fastchat has no context parameter"]),
    ({"kind": "llamacpp", "url": "http://x:8080", "launch": {"model": "m.gguf", "contxt": 1}},
     ["backends[0].launch.contxt", "unknown key"]),
    ({"kind": "vllm", "url": "http://x:8000", "launch": {"model": "m", "gpus": [0, 0]}},
     ["backends[0].launch.gpus", "distinct"]),
    ({"kind": "vllm", "url": "http://x", "launch": {"model": "m"}}, ["backends[0]", "url", "no port"]),
    ({"kind": "openai", "url": "http://x:1", "launch": {"model": "m"}}, ["backends[0]", "no launch recipe"]),
    ({"kind": "llamacpp", "url": "http://x:8080", "launch": {"model": "m", "dtype": "bf16"}},
     ["backends[0]", "llamacpp has no dtype parameter"]),
    ({"kind": "vllm", "url": "http://x:8000", "launch": {"model": "m", "start": "later"}},
     ["backends[0].launch.start"]),
])
def test_bad_launch_blocks_name_the_key_in_one_line(tmp_path: Path, backend: dict[str, Any],
                                                   words: list[str]) -> None:
    path = _write(tmp_path, {"backends": [{"name": "b", **backend}]})
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    for w in words:
        assert w in str(exc.value)
    r = _cli("--config", str(path))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("llm-gateway compose: ") and all(w in r.stderr for w in words)


def test_other_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = [(["--config", str(tmp_path / "missing.yaml")], "config file not found"),
             (["--config", str(_write(tmp_path, {"backends": [HOST_CONFIG["backends"][2]]}))],
              "no backend has a launch"),
             ([], "--config"),
             (["--config", str(CONFIG), "--out", str(tmp_path / "no" / "dir" / "c.yaml")], "cannot write")]
    for args, words in cases:
        r = _cli(*args)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (args, r.stderr)
        assert words in r.stderr, (args, r.stderr)
    taken = {"backends": [{"name": "grafana", "kind": "vllm", "url": "http://grafana:8000", "launch": {"model": "m"}}]}
    r = _cli("--config", str(_write(tmp_path, taken)))
    assert r.returncode == 2 and "'grafana' is taken" in r.stderr


def test_supervisor_keys_are_accepted_and_service_names_are_compose_safe(tmp_path: Path) -> None:
    config = {"backends": [{"name": "gpu1/qwen@a", "kind": "vllm", "url": "http://127.0.0.1:8000", "launch": {
        "model": "m", "start": "on_demand", "idle_timeout": 300, "group": "big"}}]}
    settings = load_settings(_write(tmp_path, config))
    launch = settings.backends[0].launch
    assert launch is not None and (launch.start, launch.idle_timeout, launch.group) == ("on_demand", 300, "big")
    r = _cli("--config", str(tmp_path / "gw.yaml"))
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    _valid(doc)
    assert "gpu1-qwen-a" in doc["services"]
    copy = yaml.safe_load(doc["configs"]["gateway-config"]["content"])
    assert copy["backends"][0]["url"] == "http://gpu1-qwen-a:8000" and copy["backends"][0]["name"] == "gpu1/qwen@a"


def test_dockerfile_is_slim_non_root_and_its_healthcheck_probes_a_real_gateway(spawn: Spawner) -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:[0-9.]+-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "COPY deploy/recipes ./deploy/recipes" in text    # launch: blocks validate in the image
    m = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", text, re.M)
    assert m, "HEALTHCHECK missing"
    check = json.loads(m.group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))   # type: ignore[union-attr]
    assert f"127.0.0.1:{cmd[cmd.index('--port') + 1]}/healthz" in check[-1]
    # the generated compose config (all six launched backends, unreachable here) is served by a real gateway,
    # and the image's health check command passes against it and fails once it is gone
    env = _compose()["services"]["gateway"]["environment"]
    assert env["GATEWAY_SUPERVISOR__ENABLED"] == "false"   # compose runs the backends, the gateway must not
    gw = spawn.gateway(yaml.safe_load(CONFIG.read_text()), env={"GATEWAY_SUPERVISOR__ENABLED": "false"})
    probe = [sys.executable if check[0] == "python3" else check[0], *check[1:-1],
             check[-1].replace("127.0.0.1:4000", f"127.0.0.1:{gw.port}")]
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    gw.proc.stop()
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


def test_readme_documents_every_launch_key() -> None:
    from gateway.settings import LaunchSettings
    readme = (ROOT / "README.md").read_text()
    table = readme.split("#### `backends[].launch`", 1)[1].split("\n### ", 1)[0]
    documented = {k for row in re.findall(r"^\| (`[^|]+) \|", table, re.M) for k in re.findall(r"`(\w+)`", row)}
    assert documented == set(LaunchSettings.model_fields)
    assert "llm-gateway compose --config deploy/gateway.compose.yaml --out compose.yaml" in readme


def test_gpu_memory_sizes_every_launch_and_refuses_one_that_will_not_fit(tmp_path: Path) -> None:
    config = {"backends": [
        {"name": "big", "kind": "vllm", "url": "http://big:8000",
         "launch": {"model": "Qwen/Qwen2.5-7B-Instruct", "context": 32768, "gpus": [0]}},
        {"name": "cpu", "kind": "llamacpp", "url": "http://cpu:8080", "launch": {"model": "/m/x.gguf", "gpus": []}}]}
    path = str(_write(tmp_path, config))
    r = _cli("--config", path, "--gpu-memory", "8GiB")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "backends big:" in r.stderr and "will not fit" in r.stderr and "--force" in r.stderr
    r = _cli("--config", path, "--gpu-memory", "8GiB", "--force")
    assert r.returncode == 0 and "big" in yaml.safe_load(r.stdout)["services"]
    assert "warning: backends big:" in r.stderr and "fit not checked: CPU only" in r.stderr
    r = _cli("--config", path, "--gpu-memory", "80GiB")
    assert r.returncode == 0 and "big" not in r.stderr, r.stderr
    assert _cli("--config", path).stderr == ""       # the target box's GPUs are not this machine's: no NVML
    r = _cli("--config", path, "--gpu-memory", "lots")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--gpu-memory" in r.stderr
