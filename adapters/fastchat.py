"""FastChat (backends.md part B §1).

Foundation level: FastChat's own `openai_api_server` as an OpenAI-compatible upstream (no tools,
no logprobs, no streamed usage; its flat always-400 error bodies are parsed by the shared error
parser). Speaking to the controller and workers directly, without that server, is issue 5.
"""

from __future__ import annotations

from typing import ClassVar

from adapters.base import Capabilities
from adapters.openai_compatible import OpenAICompatibleAdapter


class FastChatAdapter(OpenAICompatibleAdapter):
    kind: ClassVar[str] = "fastchat"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    capabilities: ClassVar[Capabilities] = Capabilities(tools=False, logprobs=False, stream_usage=False)
