"""One policy for a real backend (llama-server, vLLM CPU, FastChat) that cannot be had on this machine.

In CI (`CI=true`, as every CI service sets it) a real backend that cannot be prepared is a failure:
a green run must mean the README's "real backends" claims were checked. Locally it is a skip, but a
loud one: the reason is in the skip message and the terminal summary ends with a warning naming it
(tests/conftest.py `pytest_terminal_summary`).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

# The markers of the tests that run a real backend; in CI a skip of such a test is a failure.
REAL_MARKERS = ("llamacpp", "vllm", "fastchat")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(what: str, reason: object) -> NoReturn:
    """Skip (locally) or fail (in CI) the current test because the real backend `what` cannot run."""
    message = f"REAL {what} NOT TESTED: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a real backend that cannot be prepared fails the run)", pytrace=False)
    pytest.skip(message)
