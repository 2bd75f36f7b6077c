"""OpenAI stream chunks for answers translated from a native protocol (Ollama NDJSON, FastChat
worker streams, TGI /generate_stream): one id and one `created` per stream, chat or text shape."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from adapters.base import Endpoint

DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    __slots__ = ("chat", "head")

    def __init__(self, endpoint: Endpoint, model: str) -> None:
        self.chat = endpoint is Endpoint.CHAT
        self.head = {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}",
                     "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": int(time.time()), "model": model}

    def event(self, choices: list[Any], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**self.head, "choices": choices, **extra}) + b"\n\n"

    def piece(self, text: str = "", finish: str | None = None, **delta: Any) -> bytes:
        """One choice: a chat delta (`text` as content, plus any other delta fields) or a text piece."""
        if self.chat:
            d = {**delta, "content": text} if text else delta
            return self.event([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}])
        return self.event([{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}])

    def usage(self, prompt: int, completion: int) -> bytes:
        return self.event([], usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                     "total_tokens": prompt + completion})
