"""llama.cpp `llama-server` (backends.md part A §1).

Foundation level: the OpenAI-compatible routes (`/v1/...`), loading state from the 503
"Loading model" every route answers while the model loads, context size from `/v1/models`
`meta.n_ctx`. Native `/health`, `/slots`, `/metrics` load figures and `/completion` come with the
native adapter work (issue 4).
"""

from __future__ import annotations

from typing import Any, ClassVar

from adapters.base import Capabilities
from adapters.openai_compatible import OpenAICompatibleAdapter


class LlamaCppAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "llamacpp"
    default_ports: ClassVar[tuple[int, ...]] = (8080,)
    # Embeddings only when started with --embeddings (else 501, mapped to a clear error).
    capabilities: ClassVar[Capabilities] = Capabilities()

    def context_length(self, card: dict[str, Any]) -> int | None:
        meta = card.get("meta")
        n_ctx = meta.get("n_ctx") if isinstance(meta, dict) else None
        return n_ctx if isinstance(n_ctx, int) else None
