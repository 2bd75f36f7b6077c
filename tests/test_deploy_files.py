"""Deploy files are validated (Docker is not available here): compose schema, config, image."""

from __future__ import annotations

import hashlib
import json
import re

import jsonschema
import pytest
import yaml

from gateway.config_loader import load_settings
from tests.procs import ROOT

# The Compose schema, vendored so a clone validates on its own; the workspace keeps the reference
# copy beside the checkout (shared/), and the vendored one must stay identical to it.
SPEC = ROOT / "tests" / "fixtures" / "compose-spec.json"
SHARED_SPEC = ROOT.parent / "shared" / "compose-spec.json"


def test_compose_file_matches_the_compose_spec() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    schema = json.loads(SPEC.read_text())
    # the spec names draft-07 by an id jsonschema does not know; validate with draft 7 explicitly
    jsonschema.Draft7Validator.check_schema(schema)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(compose))
    assert not errors, [e.message for e in errors]
    gw = compose["services"]["gateway"]
    assert gw["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / gw["build"]["dockerfile"]).exists()
    services = compose["services"]
    for vol in gw["volumes"] + services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (ROOT / vol.split(":")[0]).exists(), vol


def test_compose_gateway_config_points_at_compose_services() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    settings = load_settings(ROOT / "deploy" / "gateway.compose.yaml")
    for b in settings.backends:
        host_port = b.url.split("://")[1]
        assert host_port.split(":")[0] in compose["services"], b.url
    assert settings.server.port == 4000 and "4000:4000" in compose["services"]["gateway"]["ports"]


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (the forms compose.yaml uses)."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise LookupError(f"{name}: {arg}")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", one, value)


def test_compose_gateway_requires_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    env = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["gateway"]["environment"]
    with pytest.raises(LookupError, match="LLM_GATEWAY_API_KEY"):  # `docker compose up` without a key stops
        {k: interpolate(v, {}) for k, v in env.items()}
    key = "0123456789abcdef0123456789abcdef"
    for k, v in env.items():
        monkeypatch.setenv(k, interpolate(v, {"LLM_GATEWAY_API_KEY": key}))
    settings = load_settings(ROOT / "deploy" / "gateway.compose.yaml")
    assert [k.get_secret_value() for k in settings.auth.api_keys] == [key]
    assert settings.auth.admin_keys == []  # admin stays off unless an admin key is given
    monkeypatch.setenv("GATEWAY_AUTH__ADMIN_KEYS", interpolate(env["GATEWAY_AUTH__ADMIN_KEYS"], {
        "LLM_GATEWAY_ADMIN_KEYS": '["admin-0123456789abcdef"]'}))
    assert len(load_settings(ROOT / "deploy" / "gateway.compose.yaml").auth.admin_keys) == 1


def test_dockerfile_runs_the_console_script_non_root() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001" in text and 'ENTRYPOINT ["llm-gateway"]' in text
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:4000"]


# sha256 of compose-spec/compose-spec schema/compose-spec.json at commit 170098ba (shared/compose-spec.json):
# pinned, so the vendored copy is checked even where no shared/ lies beside the clone.
SPEC_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"


def test_vendored_spec_is_the_compose_spec() -> None:
    schema = json.loads(SPEC.read_text())
    assert schema["$id"] == "compose_spec.json" and schema["title"] == "Compose Specification"
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == SPEC_SHA256
    if SHARED_SPEC.exists():  # in the workspace: the copy must not drift from the reference either
        assert SPEC.read_bytes() == SHARED_SPEC.read_bytes()
