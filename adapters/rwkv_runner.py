"""RWKV-Runner's backend-python (backends.md part B §2).

Foundation level: its OpenAI-like routes. It serves one generation at a time (a global lock),
has no `n`, no logprobs and never streams usage. `/status` states, `/switch-model`, its
`\\r\\n\\r\\n` framing fix-ups, fake model entries and stop-list quirks come with issue 5.
"""

from __future__ import annotations

from typing import ClassVar

from adapters.base import Capabilities
from adapters.openai_compatible import OpenAICompatibleAdapter


class RWKVRunnerAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "rwkv-runner"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    capabilities: ClassVar[Capabilities] = Capabilities(
        n=False, logprobs=False, stream_usage=False, max_concurrency=1)
