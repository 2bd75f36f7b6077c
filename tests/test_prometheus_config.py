"""deploy/prometheus/ checked by Prometheus' own tool (Debian's `prometheus` package, installed by .ci/run):
the scrape config, the alert rules, and their unit tests (each alert fires when it should, stays silent
when it should not)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.backends.availability import unavailable
from tests.procs import ROOT

PROM = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        unavailable("promtool", "install Debian's `prometheus` package (.ci/run does)")
    return subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_scrape_config_and_finds_the_rules() -> None:
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout + r.stderr


def test_scrape_config_reads_the_gateway_and_never_llama_cpp() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["llm-gateway"]["static_configs"][0]["targets"] == ["gateway:4000"]
    # llama-server's /metrics gauges reset on every read: only the gateway reads it
    assert not [name for name in jobs if "llama" in name]
    assert cfg["rule_files"] == ["alerts.yml"]


def test_promtool_checks_the_rules() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in r.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    r = promtool("test", "rules", "alerts.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_runbook_and_cases_that_fire_and_stay_silent() -> None:
    cases: dict[str, list[list]] = {}
    for t in yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]:
        for case in t["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    names = [a["alert"] for a in alerts()]
    assert {"LLMBackendDown", "LLMModelNoReadyDeployment", "LLMErrorRatioHigh", "LLMTimeToFirstTokenHigh",
            "LLMStreamsTruncated", "LLMRequestsRejected"} <= set(names)
    for a in alerts():
        assert set(a["annotations"]) == {"summary", "description", "runbook"}, a["alert"]
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        expected = cases.get(a["alert"], [])
        assert any(expected), f"{a['alert']}: no case where it fires"
        assert [] in expected, f"{a['alert']}: no case where it stays silent"


@pytest.mark.parametrize("alert", ["LLMErrorRatioHigh", "LLMRequestsRejected"])
def test_a_broken_rule_fails_its_unit_test(alert: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The unit tests can fail: a rule whose threshold no longer matches its cases is caught."""
    text = (PROM / "alerts.yml").read_text()
    broken = text.replace("> 0.05", "> 0.5") if alert == "LLMErrorRatioHigh" else \
        text.replace("rate(llm_gateway_rejections_total[5m])) > 0", "rate(llm_gateway_rejections_total[5m])) > 1")
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROM / "alerts.test.yml", tmp_path / "alerts.test.yml")
    exe = shutil.which("promtool") or unavailable("promtool", "not installed")
    r = subprocess.run([exe, "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and alert in r.stdout + r.stderr
