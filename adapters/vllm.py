"""vLLM's OpenAI-compatible server (backends.md part A §2).

Foundation level: pass-through on `/v1/...`; served names and `max_model_len` from `/v1/models`.
vLLM validates the request `model` (unknown -> 404), which is why the gateway always substitutes
the deployment's upstream name. `/health`, `/metrics` load and `/version` come with issue 4.
"""

from __future__ import annotations

from typing import Any, ClassVar

from adapters.base import Capabilities
from adapters.openai_compatible import OpenAICompatibleAdapter


class VLLMAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "vllm"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    capabilities: ClassVar[Capabilities] = Capabilities()

    def context_length(self, card: dict[str, Any]) -> int | None:
        n = card.get("max_model_len")
        return n if isinstance(n, int) else None
