"""Token generation: utils/rwkv.py and utils/llama.py generate() with a fixed answer instead of sampling."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from .state import State
from .tokens import tokenize


async def generate_rwkv(st: State, ctl: dict, text: str, max_tokens: int, stop: Any,
                        prompt_tokens: int) -> AsyncIterator[tuple[str, str, int, int]]:
    """utils/rwkv.py AbstractRWKV.generate, with a fixed answer instead of sampling."""
    toks = tokenize(text)
    fail_at = 0 if ctl.get("fail") or st.args.fail_generations else ctl.get("fail_at")
    delay = float(ctl.get("delay", st.args.token_delay))
    completion_tokens = 0
    response = ""
    for i in range(max_tokens):
        if delay:
            await asyncio.sleep(delay)
        if fail_at is not None and i >= fail_at:
            raise RuntimeError("x_double: injected failure during generation")
        if i >= len(toks):  # EOS sampled
            yield response, "", prompt_tokens, completion_tokens
            return
        completion_tokens += 1
        delta = toks[i]
        response += delta
        if stop is not None:
            if isinstance(stop, str):
                if stop in response:
                    response = response.split(stop)[0]
                    yield response, "", prompt_tokens, completion_tokens
                    return
            elif isinstance(stop, list):
                for s in stop:
                    if s in response:
                        response = response.split(s)[0]  # "" -> ValueError, caught by eval like the real one
                        yield response, "", prompt_tokens, completion_tokens
                        return
        yield response, delta, prompt_tokens, completion_tokens
        if i == 0 and ctl.get("hold"):
            await st.release.wait()


async def generate_llama(st: State, ctl: dict, text: str, max_tokens: int, stop: Any,
                         chat: bool) -> AsyncIterator[tuple[str, str, int, int]]:
    """utils/llama.py AbstractLlama.generate: llama.cpp applies the stops (text before the first
    one, nothing of it streamed); one chunk per token; prompt_tokens always 0."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    cut = min([text.index(s) for s in stops if s and s in text], default=len(text))
    toks = tokenize(text[:cut])
    fail_at = 0 if ctl.get("fail") or st.args.fail_generations else ctl.get("fail_at")
    delay = float(ctl.get("delay", st.args.token_delay))
    response = ""
    for i, tok in enumerate(toks[:max_tokens]):
        if delay:
            await asyncio.sleep(delay)
        if fail_at is not None and i >= fail_at:
            raise RuntimeError("x_double: injected failure during generation")
        response += tok
        yield response, tok, 0, i + 1
        if i == 0 and ctl.get("hold"):
            await st.release.wait()
