"""Backend adapters: one module per backend protocol, registered here by kind name."""

from __future__ import annotations

from adapters.base import Adapter
from adapters.fastchat import FastChatAdapter
from adapters.llamacpp import LlamaCppAdapter
from adapters.ollama import OllamaAdapter
from adapters.openai_compatible import OpenAICompatibleAdapter
from adapters.rwkv_runner import RWKVRunnerAdapter
from adapters.tgi import TGIAdapter
from adapters.vllm import VLLMAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.kind: cls
    for cls in (OpenAICompatibleAdapter, LlamaCppAdapter, VLLMAdapter, TGIAdapter, FastChatAdapter,
                RWKVRunnerAdapter, OllamaAdapter)
}


def get_adapter(kind: str) -> type[Adapter]:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise KeyError(f"unknown backend kind {kind!r}; expected one of: {', '.join(ADAPTERS)}") from None
