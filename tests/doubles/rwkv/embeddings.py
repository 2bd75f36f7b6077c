"""POST /embeddings (and its aliases): fake, deterministic unit vectors; takes the generation lock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct

from aiohttp import web

from .hooks import record
from .responses import detail, json_response
from .schemas import EMBEDDINGS_BODY, parse_body
from .state import State, acquire_lock
from .tokens import tokenize


def fake_embedding(text: str, dim: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    vec = [(digest[i % len(digest)] - 127.5) / 127.5 + 0.01 * (i + 1) for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec]


def nest(vec: list[float], shape: list[int]) -> list:
    """get_embedding returns model_state[-11].tolist(): flat for v4 models, but for v5+ (every World model
    since) that state slot is a layer's (heads, head_size, head_size) matrix, so the answer is nested."""
    for size in reversed(shape[1:]):
        vec = [vec[i:i + size] for i in range(0, len(vec), size)]
    return vec


async def embeddings(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    data, body, bad = await parse_body(request, EMBEDDINGS_BODY)
    record(st, request, data)
    if bad:
        return bad
    m = st.model
    if m is None:
        return detail(400, "model not loaded")
    if m.kind != "rwkv":
        return detail(400, "model not support embedding")
    inp = body["input"]
    if inp is None or inp == "" or inp == [] or inp == [[]]:
        return detail(400, "input not found")
    try:
        await acquire_lock(st)
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        texts = [inp] if isinstance(inp, str) else inp
        out, prompt_tokens = [], 0
        for item in texts:
            if isinstance(item, list):  # token ids: the real server decodes them with tiktoken
                text, n = " ".join(str(t) for t in item), len(item)
            else:
                text, n = item, len(tokenize(item))
            shape = st.args.embedding_shape or [st.args.embedding_dim]
            vec = fake_embedding(text, math.prod(shape))
            prompt_tokens += n
            if body["encoding_format"] == "base64":  # np.array(nested).astype(np.float32): flattened
                out.append(base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode())
            else:
                out.append(nest(vec, shape))
        st.completed += 1
        data_ = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(out)]
        return json_response({"object": "list", "data": data_, "model": m.name,
                              "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
    finally:
        st.in_flight -= 1
        st.locked = False
