"""Build or install the real backends the tests run, once per machine: `python -m tests.backends.prepare`.

CI runs this before the test command so the suite's own time is the tests'. On a machine where a
backend cannot be had, this says why; with CI=true it then exits 1 (CI must not go green without
the real backends), otherwise the tests of that backend skip with the same reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.backends.availability import in_ci

Step = tuple[str, Callable[[], Path], type[Exception]]


def steps() -> Sequence[Step]:
    from tests.backends import cuda_toolkit, fastchat_env, frameworks_env, llamacpp, vllm_cpu

    return (("llama-server", llamacpp.ensure_llama_server, llamacpp.LlamaServerUnavailable),
            ("llama-server (CUDA)", cuda_toolkit.ensure_cuda_llama_server, llamacpp.LlamaServerUnavailable),
            ("vLLM (CPU)", vllm_cpu.ensure_vllm_venv, vllm_cpu.VllmUnavailable),
            ("FastChat", fastchat_env.ensure_fastchat_venv, fastchat_env.FastChatUnavailable),
            ("framework clients", frameworks_env.ensure_frameworks_venv, frameworks_env.FrameworksUnavailable))


def main(todo: Sequence[Step] | None = None) -> int:
    missing = []
    for name, ensure, unavailable in todo if todo is not None else steps():
        started = time.monotonic()
        try:
            where = ensure()
        except unavailable as exc:
            print(f"prepare: {name} NOT AVAILABLE on this machine: {exc}", flush=True)
            missing.append(name)
            continue
        print(f"prepare: {name} ready at {where} ({time.monotonic() - started:.0f} s)", flush=True)
    if not missing:
        return 0
    if in_ci():
        print(f"prepare: FAILED (CI=true): {', '.join(missing)} could not be prepared", flush=True)
        return 1
    print(f"prepare: WARNING: the tests of {', '.join(missing)} will skip (they fail under CI=true)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
