"""Request validation with pydantic 2.4's error shapes (FastAPI 0.109 wraps them as {"detail":[...]}).

Generic validators only; RWKV-Runner's request bodies built from them are in schemas.py.
"""

from __future__ import annotations

import math
from typing import Any, Callable


PYDANTIC_URL = "https://errors.pydantic.dev/2.4/v/"


Loc = tuple
Validator = Callable[[Any, Loc], tuple[Any, list]]
MISSING = object()


def perr(type_: str, loc: Loc, msg: str, value: Any, ctx: dict | None = None) -> dict:
    e: dict[str, Any] = {"type": type_, "loc": list(loc), "msg": msg, "input": value}
    if ctx is not None:
        e["ctx"] = ctx
    e["url"] = PYDANTIC_URL + type_
    return e


def v_str(v: Any, loc: Loc) -> tuple[Any, list]:
    if isinstance(v, str):
        return v, []
    return None, [perr("string_type", loc, "Input should be a valid string", v)]


def v_int(v: Any, loc: Loc) -> tuple[Any, list]:
    if isinstance(v, bool):
        return int(v), []
    if isinstance(v, int):
        return v, []
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer():
            return int(v), []
        return None, [perr("int_from_float", loc, "Input should be a valid integer, got a number with a "
                                                  "fractional part", v)]
    if isinstance(v, str):
        try:
            return int(v.strip()), []
        except ValueError:
            return None, [perr("int_parsing", loc, "Input should be a valid integer, unable to parse string "
                                                   "as an integer", v)]
    return None, [perr("int_type", loc, "Input should be a valid integer", v)]


def v_float(v: Any, loc: Loc) -> tuple[Any, list]:
    if isinstance(v, (bool, int, float)):
        return float(v), []
    if isinstance(v, str):
        try:
            return float(v.strip()), []
        except ValueError:
            return None, [perr("float_parsing", loc, "Input should be a valid number, unable to parse string "
                                                     "as a number", v)]
    return None, [perr("float_type", loc, "Input should be a valid number", v)]


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def v_bool(v: Any, loc: Loc) -> tuple[Any, list]:
    if isinstance(v, bool):
        return v, []
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v), []
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE, []
    if isinstance(v, (int, float, str)):
        return None, [perr("bool_parsing", loc, "Input should be a valid boolean, unable to interpret input",
                           v)]
    return None, [perr("bool_type", loc, "Input should be a valid boolean", v)]


def opt(fn: Validator) -> Validator:
    """Optional[...] / Union[..., None]: null allowed."""
    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        return (None, []) if v is None else fn(v, loc)
    return check


def bounded(fn: Validator, **limits: tuple[Any, Any]) -> Validator:
    """Field(gt=, ge=, le=): each limit is (shown in msg, value in ctx)."""
    words = {"gt": ("greater_than", "greater than"), "ge": ("greater_than_equal", "greater than or equal to"),
             "le": ("less_than_equal", "less than or equal to")}
    tests = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "le": lambda a, b: a <= b}

    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        value, errs = fn(v, loc)
        if errs:
            return value, errs
        for kind, (shown, ctxv) in limits.items():
            if not tests[kind](value, ctxv):
                type_, phrase = words[kind]
                return None, [perr(type_, loc, f"Input should be {phrase} {shown}", v, {kind: ctxv})]
        return value, []
    return check


def min_len1(fn: Validator) -> Validator:
    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        value, errs = fn(v, loc)
        if not errs and len(value) < 1:
            return None, [perr("string_too_short", loc, "String should have at least 1 characters", v,
                               {"min_length": 1})]
        return value, errs
    return check


def literal(*choices: str) -> Validator:
    expected = " or ".join([", ".join(f"'{c}'" for c in choices[:-1]), f"'{choices[-1]}'"]) \
        if len(choices) > 1 else f"'{choices[0]}'"

    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        if v in choices and isinstance(v, str):
            return v, []
        return None, [perr("literal_error", loc, f"Input should be {expected}", v, {"expected": expected})]
    return check


def list_of(fn: Validator) -> Validator:
    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        if not isinstance(v, list):
            return None, [perr("list_type", loc, "Input should be a valid list", v)]
        out, errs = [], []
        for i, item in enumerate(v):
            value, e = fn(item, loc + (i,))
            out.append(value)
            errs += e
        return out, errs
    return check


def union(*members: tuple[str, Validator]) -> Validator:
    """Smart-mode union: the first member that validates wins, else every member's errors, tagged."""
    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        errs: list = []
        for tag, fn in members:
            value, e = fn(v, loc + (tag,))
            if not e:
                return value, []
            errs += e
        return None, errs
    return check


Field = tuple  # (name, validator, default or MISSING)


def model(fields: list[Field]) -> Validator:
    def check(v: Any, loc: Loc) -> tuple[Any, list]:
        if not isinstance(v, dict):
            return None, [perr("model_attributes_type", loc,
                               "Input should be a valid dictionary or object to extract fields from", v)]
        out: dict[str, Any] = {}
        errs: list = []
        for name, fn, default in fields:
            if name not in v:
                if default is MISSING:
                    errs.append(perr("missing", loc + (name,), "Field required", v))
                else:
                    out[name] = list(default) if isinstance(default, list) else default
                continue
            value, e = fn(v[name], loc + (name,))
            out[name] = value
            errs += e
        return out, errs
    return check


def v_dict(v: Any, loc: Loc) -> tuple[Any, list]:
    if isinstance(v, dict):
        return v, []
    return None, [perr("dict_type", loc, "Input should be a valid dictionary", v)]
