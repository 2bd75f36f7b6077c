"""JSON in and out of the hot path: orjson, with a stdlib fallback for what orjson refuses or alters.

Integers beyond 64 bits are valid JSON. Older orjson refused them; 3.13 parses them as floats
(2**70 + 1 becomes 1.1805916207174113e+21), which would silently change a field the gateway
promises to forward untouched. So a request body holding a run of 19+ digits (the only way to write
such an integer) takes the stdlib parser (gateway/protocol.py parse_body), which keeps them exact.
The check is one C translate and one search: ~1 us per KiB of body. Request bodies are parsed in
gateway/protocol.py; this module holds the helpers the adapters share.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # digits -> "0", everything else -> " "
_LONG_NUMBER = b"0" * 19  # 2**63 has 19 digits: a shorter integer fits orjson's 64 bits


def may_hold_big_int(data: bytes) -> bool:
    """True when the bytes hold a run of 19+ digits: orjson would turn such an integer into a float."""
    return _LONG_NUMBER in data.translate(_DIGITS)


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
