"""Without the C extension (no compiler at install) the gateway runs the Python limits store and says so."""

from __future__ import annotations

import logging

import pytest

import gateway.auth.enforce as enforce
from gateway.auth.limits_memory import MemoryLimitStore
from gateway.auth.limits_native import NativeLimitStore
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings
from tests.native import require_native


def gatekeeper(**state: object) -> enforce.Gatekeeper:
    return enforce.Gatekeeper(GatewaySettings(state=state), Metrics())


def test_without_the_extension_the_python_store_runs_and_the_log_says_how_to_build_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(enforce, "NATIVE", False)
    with caplog.at_level(logging.WARNING, "gateway.limits"):
        gk = gatekeeper()
    assert type(gk.store) is MemoryLimitStore and gk.local
    assert "was not built" in caplog.text and "install gcc" in caplog.text


def test_the_c_store_is_the_default_and_native_limits_false_chooses_python(caplog: pytest.LogCaptureFixture) -> None:
    require_native()
    assert type(gatekeeper().store) is NativeLimitStore
    with caplog.at_level(logging.WARNING, "gateway.limits"):
        gk = gatekeeper(native_limits=False)
    assert type(gk.store) is MemoryLimitStore and caplog.text == ""  # chosen: nothing to warn about
