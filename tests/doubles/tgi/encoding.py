"""JSON output as TGI writes it (serde_json::to_vec)."""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(obj: Any) -> bytes:
    """serde_json::to_vec: compact, UTF-8 as is, NaN -> null (f32 NaN logprobs of prefill tokens)."""
    return json.dumps(_nan_to_none(obj), separators=(",", ":"), ensure_ascii=False).encode()


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
