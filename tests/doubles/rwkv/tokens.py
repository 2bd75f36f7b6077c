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


def byte_tokens(text: str) -> list[bytes]:
    """The answer as the RWKV World tokenizer (a byte-level trie) may split it: as `tokenize`, but a
    character beyond the BMP (emoji; 4 UTF-8 bytes), which its vocabulary lacks, becomes two tokens of
    two bytes each. Decoding the first alone gives U+FFFD. (Cyrillic, CJK and the like stay whole, as
    the recordings of the real tokenizer show for "министра".)"""
    out: list[bytes] = []
    for tok in tokenize(text):
        run = b""
        for ch in tok:
            b = ch.encode()
            if len(b) < 4:
                run += b
                continue
            if run:
                out.append(run)
                run = b""
            out += [b[:2], b[2:]]
        if run:
            out.append(run)
    return out
