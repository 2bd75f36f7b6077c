"""Hugging Face TGI's Messages API (backends.md part A §3).

Foundation level: pass-through on `/v1/chat/completions` and `/v1/completions`. TGI has no
embeddings route (that is TEI) and ignores `n`. `/info` limits, native `/generate_stream`, its
quirks (`top_p: 1.0`, empty ids, `stop_sequence`) and in-stream errors come with issue 4.
"""

from __future__ import annotations

from typing import ClassVar

from adapters.base import Capabilities
from adapters.openai_compatible import OpenAICompatibleAdapter


class TGIAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "tgi"
    default_ports: ClassVar[tuple[int, ...]] = (3000, 8080)
    capabilities: ClassVar[Capabilities] = Capabilities(embeddings=False, n=False)
