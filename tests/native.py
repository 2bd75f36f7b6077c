"""The C limits store (gateway/auth/_admission.c) in tests: required in CI, where .ci/run installs a compiler."""

from __future__ import annotations

import os

import pytest

from gateway.auth.limits_native import AVAILABLE


def require_native() -> None:
    """Skip without the built extension; in CI its absence is a failure (the build must not silently vanish)."""
    if AVAILABLE:
        return
    if os.environ.get("CI"):
        pytest.fail("gateway.auth._admission is not built: `pip install -e .` needs a C compiler (gcc)")
    pytest.skip("gateway.auth._admission is not built (no C compiler at install time)")
