"""The generated Grafana dashboards: up to date with their generator, valid against Grafana's dashboard
model (the foundation SDK's JSON schemas, tests/fixtures/grafana-schema/SOURCE.md), reading only metrics
a running gateway exports (by name and type), counters only through rate(), SLO choices only at bucket
bounds; and compose's Grafana provisioned to load them. That each query returns data from a real
Prometheus is tests/test_prometheus_live.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import ROOT, Gateway, Spawner

GRAFANA = ROOT / "deploy" / "grafana"
SCHEMAS = ROOT / "tests" / "fixtures" / "grafana-schema"
BOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
METRIC = re.compile(r"\bllm_gateway_[a-z_]+")
SUFFIX = {"_bucket": "histogram", "_count": "histogram", "_sum": "histogram", "_total": "counter"}


def schema(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    doc = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    if definition is not None:
        doc = {**doc, "$ref": f"#/definitions/{definition}"}
    jsonschema.Draft7Validator.check_schema(doc)
    return jsonschema.Draft7Validator(doc)


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_committed_dashboards_are_what_the_generator_makes() -> None:
    assert [p.stem for p in BOARDS] == ["llm-gateway-backend", "llm-gateway-keys", "llm-gateway-model",
                                       "llm-gateway-overview"]
    r = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr  # run `python3 deploy/grafana/generate.py` after changing it


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_dashboard_matches_grafanas_dashboard_model(path: Path) -> None:
    board = load(path)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema("dashboard").iter_errors(board)]
    assert not errors, errors
    target = schema("prometheus")
    for p in panels(board):
        assert not [e.message for e in schema(p["type"], "Options").iter_errors(p["options"])], p["title"]
        if p["type"] == "timeseries":
            custom = p["fieldConfig"]["defaults"]["custom"]
            assert not [e.message for e in schema("timeseries", "FieldConfig").iter_errors(custom)], p["title"]
        for t in p["targets"]:
            assert not [e.message for e in target.iter_errors(t)], (p["title"], t)
            assert t["datasource"] == p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in re.findall(r"\$(\w+)", " ".join(exprs(board))):  # every variable a query uses is defined
        assert name == "__rate_interval" or name in variables, name


def test_the_schema_check_can_fail() -> None:
    board = load(BOARDS[0])
    board["panels"][1]["gridPos"]["w"] = 30  # wider than Grafana's 24 columns
    board["templating"]["list"][0]["type"] = "dropdown"
    assert len(list(schema("dashboard").iter_errors(board))) == 2
    assert list(schema("prometheus").iter_errors({"refId": "A"}))  # a target without expr


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_panels_do_not_overlap(path: Path) -> None:
    cells: set[tuple[int, int]] = set()
    for p in load(path)["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_counters_and_histograms_are_read_only_through_rate() -> None:
    """Never a lifetime counter averaged (production-stack's `avg(..._sum)/avg(..._count)`)."""
    for expr in [e for path in BOARDS for e in exprs(load(path))] + rule_exprs():
        for m in METRIC.finditer(expr):
            if m.group().endswith(tuple(SUFFIX)):
                assert re.search(r"(rate|increase)\($", expr[:m.start()]), expr
                assert re.match(r"(\{[^}]*\})?\[", expr[m.end():]), expr  # a range: rate(x[...])
            else:  # a gauge is never rated
                assert not re.search(r"(rate|increase)\($", expr[:m.start()]), expr


# -- against a running gateway that served traffic ---------------------------------------------------
@pytest.fixture(scope="module")
def gateway(module_spawn: Spawner) -> Gateway:
    """A gateway that served plain and streamed answers (through its limiter: max_concurrency)."""
    up = module_spawn.double("dash-up", "m")
    gw = module_spawn.gateway({"backends": [{"name": "up", "kind": "vllm", "url": up.url, "max_concurrency": 4}]})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.v1 + "/chat/completions", json=body, timeout=30).status_code == 200
    r = httpx.post(gw.v1 + "/chat/completions", json={**body, "stream": True}, timeout=30)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    return gw


def families(gw: Gateway) -> list:  # type: ignore[type-arg]
    return list(text_string_to_metric_families(httpx.get(gw.url + "/metrics", timeout=10).text))


@pytest.fixture(scope="module")
def exposition(gateway: Gateway) -> dict[str, str]:
    """Family name -> type."""
    return {f.name: f.type for f in families(gateway)}


def test_every_metric_a_panel_or_rule_names_is_exported_with_that_type(exposition: dict[str, str]) -> None:
    named = {m for path in BOARDS for e in exprs(load(path)) for m in METRIC.findall(e)}
    named |= {m for e in rule_exprs() for m in METRIC.findall(e)}
    missing = []
    for name in sorted(named):
        suffix = next((s for s in SUFFIX if name.endswith(s)), "")
        family, kind = (name.removesuffix(suffix), SUFFIX[suffix]) if suffix else (name, "gauge")
        if exposition.get(family) != kind:
            missing.append(f"{name} ({kind} {family}: exported as {exposition.get(family)})")
    assert not missing, missing


def test_slo_choices_are_the_exported_bucket_bounds(gateway: Gateway) -> None:
    les: dict[str, list[str]] = {}
    for fam in families(gateway):
        for s in fam.samples:
            if s.name.endswith("_bucket") and s.labels.get("model") == "m" and s.labels["le"] != "+Inf":
                les.setdefault(fam.name, [])
                if s.labels["le"] not in les[fam.name]:
                    les[fam.name].append(s.labels["le"])
    for path in BOARDS:
        for v in load(path)["templating"]["list"]:
            if v["name"] in ("ttft_slo", "itl_slo"):
                family = {"ttft_slo": "llm_gateway_time_to_first_token_seconds",
                          "itl_slo": "llm_gateway_time_per_output_token_seconds"}[v["name"]]
                assert [o["value"] for o in v["options"]] == les[family] == v["query"].split(","), path.name
                assert v["current"]["value"] in les[family]


def test_compose_grafana_loads_the_dashboards_from_the_provisioned_data_source() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in compose["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert provider["providers"][0]["type"] == "file" and mounts["./deploy/grafana/dashboards"] == path
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).relative_to(path)).exists()
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [d["type"] for d in ds] == ["prometheus"] and ds[0]["isDefault"]
    host, port = ds[0]["url"].removeprefix("http://").split(":")
    assert host in compose and f"{port}:{port}" in compose[host]["ports"]
    assert "GF_SECURITY_ADMIN_PASSWORD" in compose["grafana"]["environment"]


def test_compose_grafana_requires_an_admin_password() -> None:
    from tests.test_deploy_files import interpolate
    env = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["grafana"]["environment"]
    with pytest.raises(LookupError, match="GRAFANA_ADMIN_PASSWORD"):  # no admin/admin on first start
        interpolate(env["GF_SECURITY_ADMIN_PASSWORD"], {})
    assert interpolate(env["GF_SECURITY_ADMIN_PASSWORD"], {"GRAFANA_ADMIN_PASSWORD": "s3cret-x"}) == "s3cret-x"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"  # anonymous visitors view, never edit
