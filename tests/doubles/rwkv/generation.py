"""Token generation: utils/rwkv.py and utils/llama.py generate() with a fixed answer instead of sampling."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from .state import State
from .tokens import byte_tokens, tokenize


async def generate_rwkv(st: State, ctl: dict, text: str, max_tokens: int, stop: Any,
                        prompt_tokens: int) -> AsyncIterator[tuple[str, str, int, int]]:
    """utils/rwkv.py AbstractRWKV.generate (RR 64269f0 :316-424), with a fixed answer instead of sampling.

    As there, a token's delta is the decoding of every token since the last one that decoded cleanly
    (`delta_tokens = self.model_tokens[out_last:]`), and the chunk is yielded only when it holds no
    U+FFFD (`if "\\ufffd" not in delta:`, :371), so a character split over two tokens (tokens.byte_tokens)
    gives one chunk for two tokens; completion_tokens counts every token. A natural end (EOS, a stop
    string) yields an EMPTY delta; the max_tokens limit ends the loop without one."""
    # x_double.tokens: the answer's tokens as the real World tokenizer splits it (where chunking matters)
    toks = [t.encode() for t in ctl["tokens"]] if isinstance(ctl.get("tokens"), list) else byte_tokens(text)
    fail_at = 0 if ctl.get("fail") or st.args.fail_generations else ctl.get("fail_at")
    delay = float(ctl.get("delay", st.args.token_delay))
    completion_tokens = 0
    response = ""
    out_last = 0
    for i in range(max_tokens):
        if delay:
            await asyncio.sleep(delay)
        if fail_at is not None and i >= fail_at:
            raise RuntimeError("x_double: injected failure during generation")
        if i >= len(toks):  # EOS sampled
            yield response, "", prompt_tokens, completion_tokens
            return
        completion_tokens += 1
        delta = b"".join(toks[out_last:i + 1]).decode("utf-8", "replace")
        if "\ufffd" not in delta:  # avoid utf-8 display issues
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
            out_last = i + 1
            yield response, delta, prompt_tokens, completion_tokens
        if i == 0 and ctl.get("hold"):
            await st.release.wait()


async def generate_albatross(st: State, ctl: dict, text: str, max_tokens: int,
                             stop: Any) -> AsyncIterator[tuple[str, str, int, int]]:
    """albatross_engine/adapter.py AlbatrossRWKV.async_generate: one yield per token event, the delta
    as the engine decoded it (here: whole `tokenize` tokens); a stop string cuts the response and ends
    after yielding the delta that completed it; EOS and max_tokens just end: never an empty delta."""
    fail_at = 0 if ctl.get("fail") or st.args.fail_generations else ctl.get("fail_at")
    delay = float(ctl.get("delay", st.args.token_delay))
    stops = [stop] if isinstance(stop, str) else (stop or [])
    response = ""
    for i, delta in enumerate(tokenize(text)[:max_tokens]):
        if delay:
            await asyncio.sleep(delay)
        if fail_at is not None and i >= fail_at:
            raise RuntimeError("x_double: injected failure during generation")
        response += delta
        hit = next((s for s in stops if s and s in response), None)
        if hit is not None:
            response = response.split(hit)[0]
        yield response, delta, 0, i + 1
        if hit is not None:
            return
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
