"""JSON in and out of the hot path: orjson, with a stdlib fallback for what orjson refuses.

orjson rejects integers beyond 64 bits, which are valid JSON; a request must not be refused (or
altered) for that, so those rare bodies take the slow path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)  # raises ValueError (JSONDecodeError) for truly malformed input
        except RecursionError:  # nesting orjson refused too: bad input, not a gateway bug (no traceback)
            raise ValueError("JSON nested too deeply") from None


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads_or_none(data: bytes) -> Any:
    """Parsed JSON, or None when the bytes are not JSON (an adapter reading a backend's answer)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
