"""The real-backend policy itself (tests/backends/availability.py, the hooks in tests/conftest.py):
under CI=true a real backend that cannot be prepared fails `prepare` and every test that needed it;
locally those tests skip, with a warning in the summary. Checked by running pytest on a small test
file whose vLLM is forced unavailable, so the policy cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.backends import prepare
from tests.procs import ROOT

PROBE = '''
import pytest
from tests.backends import vllm_cpu


def _refuse():
    raise vllm_cpu.VllmUnavailable("forced unavailable by the policy test")


vllm_cpu.ensure_vllm_venv = _refuse  # what a machine without the torch CPU wheel sees


@pytest.mark.vllm
def test_marked_real_backend(backend_vllm):
    pass


def test_unmarked_user_of_a_real_fixture(backend_vllm):  # like a conformance case
    pass


@pytest.mark.fastchat
def test_marked_test_skipping_for_another_reason():
    pytest.skip("skipped from inside the test")


def test_ordinary_skip():
    pytest.skip("nothing to do with real backends")
'''


def run_probe(tmp_path: Path, ci: bool) -> tuple[int, dict[str, str], str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    junit = tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(ROOT / "pyproject.toml"),
                          "--rootdir", str(tmp_path), "-p", "no:cacheprovider", f"--junitxml={junit}",
                          str(tmp_path / "test_probe.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return out.returncode, outcomes, out.stdout + out.stderr


def test_in_ci_an_unavailable_real_backend_fails_its_tests(tmp_path: Path) -> None:
    rc, outcomes, output = run_probe(tmp_path, ci=True)
    assert rc == 1, output
    assert outcomes == {"test_marked_real_backend": "error", "test_unmarked_user_of_a_real_fixture": "error",
                        "test_marked_test_skipping_for_another_reason": "failure",
                        "test_ordinary_skip": "skipped"}, output
    assert "REAL vLLM (CPU) NOT TESTED" in output and "forced unavailable by the policy test" in output


def test_locally_it_is_a_skip_with_a_warning_line(tmp_path: Path) -> None:
    rc, outcomes, output = run_probe(tmp_path, ci=False)
    assert rc == 0, output
    assert set(outcomes.values()) == {"skipped"}, output
    warnings = [ln for ln in output.splitlines() if ln.startswith("WARNING: REAL vLLM (CPU) NOT TESTED")]
    assert len(warnings) == 1 and "forced unavailable by the policy test" in warnings[0], output


class Refused(Exception):
    pass


def _ready() -> Path:
    return Path("/built")


def _refused() -> Path:
    raise Refused("no wheel for this platform")


@pytest.mark.parametrize("ci, expected", [(True, 1), (False, 0)])
def test_prepare_exits_non_zero_in_ci_when_a_backend_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                ci: bool, expected: int) -> None:
    monkeypatch.setenv("CI", "true") if ci else monkeypatch.delenv("CI", raising=False)
    assert prepare.main([("ok", _ready, Refused), ("missing", _refused, Refused)]) == expected
    out = capsys.readouterr().out
    assert "prepare: missing NOT AVAILABLE on this machine: no wheel for this platform" in out
    assert prepare.main([("ok", _ready, Refused)]) == 0  # nothing missing: fine either way
