"""serde-like type checking of parsed JSON (Node) against type specs, with serde's error texts and positions."""

from __future__ import annotations

import json
from typing import Any

from .defaults import U32, U64
from .json_parser import Node


class DeError(Exception):
    def __init__(self, path: str, msg: str, pos: int) -> None:
        super().__init__(msg)
        self.path, self.msg, self.pos = path, msg, pos


def _unexpected(n: Node) -> str:
    if n.kind == "null":
        return "null"
    if n.kind == "bool":
        return f"boolean `{'true' if n.value else 'false'}`"
    if n.kind == "int":
        return f"integer `{n.value}`"
    if n.kind == "float":
        v = n.value
        return f"floating point `{v!r}`" if not float(v).is_integer() else f"floating point `{v:.1f}`"
    if n.kind == "str":
        return "string " + json.dumps(n.value, ensure_ascii=False)
    return "sequence" if n.kind == "arr" else "map"


def _type_error(path: str, n: Node, expected: str) -> DeError:
    # peek_invalid_type consumes scalars but not `[`/`{`
    return DeError(
        path,
        f"invalid type: {_unexpected(n)}, expected {expected}",
        n.start if n.kind in ("arr", "obj") else n.end,
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# Type specs: "str" "f32" "u32" "u64" "usize" "i32" "bool" "any"; ("opt", T); ("vec", T);
# ("struct", Name, {field: (T, required)}, aliases); ("untagged", Name, [T...]); custom callables.


def check(n: Node, t: Any, path: str = "") -> Any:
    if callable(t):
        return t(n, path)
    if isinstance(t, tuple):
        kind = t[0]
        if kind == "opt":
            return None if n.kind == "null" else check(n, t[1], path)
        if kind == "vec":
            if n.kind != "arr":
                raise _type_error(path, n, "a sequence")
            return [check(x, t[1], f"{path}[{i}]") for i, x in enumerate(n.items)]
        if kind == "struct":
            return check_struct(n, t[1], t[2], path, t[3] if len(t) > 3 else {})
        if kind == "untagged":
            for variant in t[2]:
                try:
                    return check(n, variant, path)
                except DeError:
                    continue
            raise DeError(path, f"data did not match any variant of untagged enum {t[1]}", n.end)
        raise AssertionError(t)
    if t == "any":
        return n.py()
    if t == "str":
        if n.kind != "str":
            raise _type_error(path, n, "a string")
        return n.value
    if t == "bool":
        if n.kind != "bool":
            raise _type_error(path, n, "a boolean")
        return n.value
    if t == "f32":
        if n.kind not in ("int", "float"):
            raise _type_error(path, n, "f32")
        return float(n.value)
    if t in ("u32", "u64", "usize", "i32"):
        if n.kind == "float":
            raise _type_error(path, n, t)
        if n.kind != "int":
            raise _type_error(path, n, t)
        lo, hi = (-(2**31), 2**31 - 1) if t == "i32" else (0, U32 if t == "u32" else U64)
        if not lo <= n.value <= hi:
            if n.value > U64:  # serde_json reads it as f64
                raise DeError(
                    path, f"invalid type: floating point `{float(n.value):.1f}`, expected {t}", n.end
                )
            raise DeError(path, f"invalid value: integer `{n.value}`, expected {t}", n.end)
        return n.value
    raise AssertionError(t)


def check_struct(n: Node, name: str, fields: dict, path: str, aliases: dict) -> dict:
    if n.kind != "obj":
        raise _type_error(path, n, f"struct {name}")
    out: dict[str, Any] = {}
    for key, key_end, val in n.items:
        key = aliases.get(key, key)
        if key not in fields:
            continue
        if key in out:
            raise DeError(path, f"duplicate field `{key}`", key_end)
        out[key] = check(val, fields[key][0], _join(path, key))
    for key, (_, required) in fields.items():
        if required and key not in out:
            raise DeError(path, f"missing field `{key}`", n.end)
    return out


def tagged(name: str, tag: str, variants: dict[str, Any], content: str | None = None) -> Any:
    """serde internally (content=None) or adjacently tagged enum."""
    names = ", ".join(f"`{v}`" for v in variants)

    def run(n: Node, path: str) -> dict:
        if n.kind != "obj":
            raise _type_error(
                path,
                n,
                f"internally tagged enum {name}" if content is None else f"adjacently tagged " f"enum {name}",
            )
        items = {k: v for k, _, v in n.items}
        if tag not in items:
            raise DeError(path, f"missing field `{tag}`", n.end)
        tnode = items[tag]
        if tnode.kind != "str" or tnode.value not in variants:
            got = tnode.value if tnode.kind == "str" else _unexpected(tnode)
            raise DeError(path, f"unknown variant `{got}`, expected one of {names}", tnode.end)
        spec = variants[tnode.value]
        if content is None:
            body = check(n, spec, path) if spec else {}
            return {tag: tnode.value, **body}
        if content not in items:
            raise DeError(path, f"missing field `{content}`", n.end)
        return {tag: tnode.value, content: check(items[content], spec, _join(path, content))}

    return run


def prompt_spec(n: Node, path: str) -> list[str]:
    v = check(n, ("untagged", "PromptDeserializer", ["str", ("vec", "str")]), path)
    if isinstance(v, str):
        return [v]
    if not v:
        raise DeError(path, "Empty array detected. Do not use an empty array for the prompt.", n.end)
    return v
