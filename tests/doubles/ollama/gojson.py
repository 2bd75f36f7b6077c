"""Go's encoding/json as the double writes it: float32/float64 shortest form, `<>&` escaping,
RFC3339Nano timestamps."""

from __future__ import annotations

import json
import math
import struct
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any


# ---------------------------------------------------------------------------------------------------
# Go encoding/json
# ---------------------------------------------------------------------------------------------------

class F32(float):
    """A float that Go holds as float32 (embeddings, GGUF metadata): shortest float32 digits."""


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def go_float(x: float, bits: int = 64) -> str:
    if math.isnan(x) or math.isinf(x):
        raise ValueError("json: unsupported value")
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    if bits == 32:
        x32 = _f32(x)
        for p in range(1, 10):
            s = f"{x32:.{p}g}"
            if _f32(float(s)) == x32:
                break
        a = abs(x32)
    else:
        s, a = repr(x), abs(x)
    d = Decimal(s).normalize()
    if a < 1e-6 or a >= 1e21:  # Go switches to exponent form outside [1e-6, 1e21)
        sign, digits, exp = d.as_tuple()
        mant = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        e = len(digits) - 1 + exp
        return ("-" if sign else "") + mant + ("e-" if e < 0 else "e+") + (f"{abs(e):02d}" if e >= 0 else str(abs(e)))
    return format(d, "f")


def go_str(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    return (out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def go_json(o: Any) -> str:
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, F32):
        return go_float(o, 32)
    if isinstance(o, int):
        return str(o)
    if isinstance(o, float):
        return go_float(o, 64)
    if isinstance(o, str):
        return go_str(o)
    if isinstance(o, dict):
        return "{" + ",".join(go_str(str(k)) + ":" + go_json(v) for k, v in o.items()) + "}"
    if isinstance(o, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in o) + "]"
    raise TypeError(f"cannot encode {type(o)}")


def rfc3339nano(ns: int, utc: bool = True) -> str:
    """Go's time.Time MarshalJSON (RFC3339Nano, trailing zeros trimmed); utc=False: local offset."""
    sec, frac = divmod(ns, 1_000_000_000)
    if utc:
        dt = datetime.fromtimestamp(sec, timezone.utc)
    else:
        dt = datetime.fromtimestamp(sec).astimezone()
    s = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        s += "." + f"{frac:09d}".rstrip("0")
    off = dt.utcoffset()
    if not off:
        return s + "Z"
    mins = int(off.total_seconds()) // 60
    sign = "+" if mins >= 0 else "-"
    return s + f"{sign}{abs(mins) // 60:02d}:{abs(mins) % 60:02d}"


def now_ns() -> int:
    return time.time_ns()
