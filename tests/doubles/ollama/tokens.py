"""Text, tokens and embeddings: deterministic token pieces, stop/num_predict cuts, embedding vectors."""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any

from .gojson import F32, _f32


# ---------------------------------------------------------------------------------------------------
# Text, tokens, embeddings
# ---------------------------------------------------------------------------------------------------

def count_tokens(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text or ""))


def token_id(piece: str, vocab: int) -> int:
    return int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=4).digest(), "big") % vocab


def pieces(text: str, n: int | None) -> list[str]:
    words = text.split(" ")
    toks = [w if i == 0 else " " + w for i, w in enumerate(words)]
    toks = [t for t in toks if t]
    if n is None or n >= len(toks):
        return toks
    out = toks[: n - 1]
    out.append("".join(toks[n - 1:]))
    return out


def generate_tokens(text: str, n_chunks: int | None, num_predict: int | None,
                    stops: list[str]) -> tuple[list[str], str]:
    """Tokens as a runner emits them: cut before a stop string ("stop"; the runner holds back partial
    matches, so no part of the stop string is sent) or after num_predict tokens ("length")."""
    toks = pieces(text, n_chunks)
    if num_predict is not None and num_predict < 0:
        num_predict = None
    acc = ""
    for i, tok in enumerate(toks):
        if num_predict is not None and i >= num_predict:
            return toks[:i], "length"
        acc += tok
        hits = [acc.find(s) for s in stops if s and s in acc]
        if hits:
            cut, out, pos = min(hits), [], 0
            for t in toks[: i + 1]:
                if pos + len(t) <= cut:
                    out.append(t)
                elif cut > pos:
                    out.append(t[: cut - pos])
                pos += len(t)
            return out, "stop"
    return toks, "stop"


def embed_vector(text: str, dims: int, want: int | None) -> list[F32]:
    rnd = random.Random(hashlib.sha256(text.encode()).digest())
    vec = [rnd.gauss(0.0, 1.0) for _ in range(dims)]
    if want and 0 < want < dims:
        vec = vec[:want]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [F32(_f32(v / norm)) for v in vec]


def schema_instance(schema: Any) -> Any:
    """A small value that satisfies a JSON schema (object/array/string/number/integer/boolean/enum/const)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0])
    t = schema.get("type")
    t = t[0] if isinstance(t, list) and t else t
    if t == "object" or "properties" in schema:
        return {k: schema_instance(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return [schema_instance(schema.get("items") or {"type": "string"})] * max(int(schema.get("minItems") or 1), 1)
    return {"integer": 7, "number": 1.5, "boolean": True, "null": None}.get(t, "text")
