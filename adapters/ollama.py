"""Ollama (backends.md part B §3).

Foundation level: Ollama's OpenAI layer (`/v1/...`). It has no `n`, and `/v1/models` may answer
`"data": null` when nothing is installed (handled by the shared model parser). The native API
(`/api/chat` NDJSON, `/api/ps` residency, `keep_alive`) comes with issue 5.
"""

from __future__ import annotations

from typing import ClassVar

from adapters.base import Capabilities
from adapters.openai_compatible import OpenAICompatibleAdapter


class OllamaAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "ollama"
    default_ports: ClassVar[tuple[int, ...]] = (11434,)
    capabilities: ClassVar[Capabilities] = Capabilities(n=False)
