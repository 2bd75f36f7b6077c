"""The backends the conformance module runs against, each started once per test session."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendUnderTest:
    name: str
    kind: str
    url: str
    model: str  # the upstream model name to route to
    stream_usage: bool = True  # reports usage in streams when asked


# Each name has a session fixture `backend_<name with _>` in tests/conftest.py. The real ones carry
# their marker: `-m "not vllm"` deselects them, and under CI=true their skip is a failure.
BACKENDS = ["vllm-double", "openai-double", "tgi-double", "ollama-double", "rwkv-double", "llamacpp", "vllm",
            "fastchat"]
REAL = {"llamacpp", "vllm", "fastchat"}  # each is also the name of its pytest marker
