"""Framework clients teams use, pointed at the gateway as an OpenAI-compatible server (issue 17): LangChain's
`ChatOpenAI` (invoke, stream, tools plain and streamed), LlamaIndex's `OpenAILike` (chat, stream_chat,
complete) and the `litellm` SDK (`openai/<model>` with the gateway as api_base, plain and streamed), against a
real llama-server and the vLLM and TGI doubles (tests/conftest.py `fronts_gateway`). They run in their own
cached virtualenv (tests/backends/frameworks_env.py: they pin an older `openai` than the suite's), through
tests/framework_clients_run.py."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from tests.backends.availability import unavailable
from tests.backends.frameworks_env import VENV, FrameworksUnavailable, ensure_frameworks_venv
from tests.backends.venv_cache import venv_python
from tests.procs import ROOT

CALL = {"x_double": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}}


@pytest.fixture(scope="module")
def python() -> str:
    try:
        return str(venv_python(ensure_frameworks_venv()))
    except FrameworksUnavailable as exc:
        unavailable("framework clients", str(exc))
        raise


def run(python: str, base: str, model: str, *extra: str) -> dict[str, Any]:
    r = subprocess.run([python, str(ROOT / "tests" / "framework_clients_run.py"), base, model, *extra],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **VENV.env})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["llamacpp", "vllm", "tgi"])
def test_langchain_llamaindex_and_litellm(fronts_gateway: dict[str, Any], python: str, kind: str) -> None:
    gw, model = fronts_gateway["gw"], fronts_gateway["models"][kind]
    got = run(python, gw.v1, model, *([json.dumps(CALL)] if kind == "vllm" else []))
    lc = got["langchain"]
    assert lc["text"] and lc["usage"]["output_tokens"] > 0 and lc["chunks"] > 1
    assert lc["streamed"] == lc["text"]  # greedy: the same answer, streamed
    li = got["llamaindex"]
    assert li["text"] and li["streamed"] == li["text"] and li["complete"]
    ll = got["litellm"]
    assert ll["text"] and ll["completion_tokens"] > 0 and ll["streamed"] == ll["text"]
    if kind == "vllm":
        assert got["langchain_tools"] == {"invoke": [["get_weather", {"city": "Paris"}]],
                                          "stream": [["get_weather", {"city": "Paris"}]]}
        with_tools = [r["body"] for r in fronts_gateway["vllm"].requests() if "tools" in r["body"]]
        assert len(with_tools) >= 2 and all(b["tool_choice"] == "required" and b["tools"][0]["function"]["name"]
                                            == "get_weather" for b in with_tools[-2:])
