"""The fake tokenizer, the default answer text and RWKV-Runner's default stop list."""

from __future__ import annotations

import re


DEFAULT_TEXT = "Hello there.\n\nA second paragraph follows."
DEFAULT_STOP = [
    "\n\nUser",
    "\n\nQuestion",
    "\n\nQ",
    "\n\nHuman",
    "\n\nBob",
    "\n\nAssistant",
    "\n\nAnswer",
    "\n\nA",
    "\n\nBot",
    "\n\nAlice",
    "\n\nObservation",
]
TOKEN_RE = re.compile(r"\n+|[ ]?[^\s]+|\s")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)
