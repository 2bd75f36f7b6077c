"""Go-style errors and request binding: gin ShouldBindJSON / json.Unmarshal messages, api.Duration,
the request structs' field types and api.Options.FromMap."""

from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal
from typing import Any

MAX_INT64 = (1 << 63) - 1


# ---------------------------------------------------------------------------------------------------
# Errors and request binding (gin ShouldBindJSON / Go json.Unmarshal messages)
# ---------------------------------------------------------------------------------------------------

class Reply(Exception):
    """An answer decided before any streaming: status + Go-style error message, or a ready object."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _jkind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _type_err(v: Any, where: str, gotype: str) -> Reply:
    kind = _jkind(v)
    if kind == "number" and gotype in ("int", "[]int") and isinstance(v, float):
        kind = f"number {v}"
    return Reply(400, f"json: cannot unmarshal {kind} into Go struct field {where} of type {gotype}")


def _check(v: Any, gotype: str, where: str) -> None:
    if v is None:
        return
    if gotype == "string" and not isinstance(v, str):
        raise _type_err(v, where, gotype)
    if gotype == "bool" and not isinstance(v, bool):
        raise _type_err(v, where, gotype)
    if gotype in ("int", "float32", "float64"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _type_err(v, where, gotype)
        if gotype == "int" and isinstance(v, float):
            raise _type_err(v, where, gotype)
    if gotype.startswith("map[") and not isinstance(v, dict):
        raise _type_err(v, where, gotype)
    if (gotype.startswith("[]") or gotype == "api.Tools") and not isinstance(v, list):
        raise _type_err(v, where, gotype)
    if gotype.startswith("*openai.") and not isinstance(v, dict):
        raise _type_err(v, where, gotype[1:])


def parse_duration_ns(v: Any) -> int:
    """api.Duration.UnmarshalJSON: seconds (number) or a Go duration string; negative = forever."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        go = {list: "[]interface {}", dict: "map[string]interface {}", bool: "bool"}.get(type(v), type(v).__name__)
        raise Reply(400, f"Unsupported type: '{go}'")
    if isinstance(v, (int, float)):
        return MAX_INT64 if v < 0 else int(v * 1_000_000_000)
    d = go_parse_duration(v)
    return MAX_INT64 if d < 0 else d


_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


def go_parse_duration(s: str) -> int:
    q = json.dumps(s)
    neg = False
    if s and s[0] in "+-":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise Reply(400, f"time: invalid duration {q}")
    total = 0
    while s:
        m = re.match(r"(\d*)(\.\d*)?", s)
        if not m or (m.group(1) == "" and (m.group(2) in (None, "."))):
            raise Reply(400, f"time: invalid duration {q}")
        s = s[m.end():]
        u = re.match(r"[^\d.]*", s).group(0)
        if not u:
            raise Reply(400, f"time: missing unit in duration {q}")
        if u not in _UNITS:
            raise Reply(400, f"time: unknown unit {json.dumps(u)} in duration {q}")
        s = s[len(u):]
        total += int(Decimal(m.group(1) or "0") * _UNITS[u] + Decimal("0" + (m.group(2) or ".0")) * _UNITS[u])
    return -total if neg else total


def _b64_error(s: str) -> str | None:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for i, ch in enumerate(s):
        if ch in "\r\n":
            continue
        if ch == "=":
            break
        if ch not in alphabet:
            return f"illegal base64 data at input byte {i}"
    try:
        base64.b64decode(s, validate=False)
        if len(s.replace("\n", "").replace("\r", "")) % 4:
            return f"illegal base64 data at input byte {len(s)}"
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {len(s)}"
    return None


def _check_images(imgs: Any, where: str) -> list[int]:
    _check(imgs, "[]api.ImageData", where)
    sizes = []
    for img in imgs or []:
        if img is None:
            sizes.append(0)
            continue
        if not isinstance(img, str):
            raise _type_err(img, where, "[]uint8")
        err = _b64_error(img)
        if err:
            raise Reply(400, err)
        sizes.append(len(base64.b64decode(img)))
    return sizes


def bind_body(raw: bytes, struct_name: str, fields: dict[str, str], eof_message: str = "missing request body") -> dict:
    if not raw.strip():
        raise Reply(400, eof_message)
    try:
        body = json.loads(raw)
    except ValueError as e:
        msg = getattr(e, "msg", "")
        pos = getattr(e, "pos", 0)
        if "Expecting value" in msg and pos < len(raw.decode(errors="replace").rstrip()):
            ch = raw.decode(errors="replace")[pos]
            raise Reply(400, f"invalid character {ch!r} looking for beginning of value") from None
        raise Reply(400, "unexpected EOF") from None
    if not isinstance(body, dict):
        raise Reply(400, f"json: cannot unmarshal {_jkind(body)} into Go value of type {struct_name}")
    for k, v in body.items():
        gotype = fields.get(k)
        if gotype is None or v is None:
            continue
        where = f"{struct_name.split('.')[-1]}.{k}"
        if gotype == "Duration":
            parse_duration_ns(v)
        elif gotype == "Think":
            if not isinstance(v, bool):
                if isinstance(v, str):
                    if v not in ("high", "medium", "low", "max"):
                        raise Reply(400, f'invalid think value: {json.dumps(v)} (must be "high", "medium", '
                                         f'"low", "max", true, or false)')
                else:
                    raise Reply(400, 'think must be a boolean or string ("high", "medium", "low", "max", '
                                     'true, or false)')
        elif gotype == "[]api.Message":
            _check(v, gotype, where)
            for m in v:
                if m is None:
                    continue
                if not isinstance(m, dict):
                    raise _type_err(m, where, "api.Message")
                for mk, mt in (("role", "string"), ("content", "string"), ("thinking", "string"),
                               ("tool_name", "string"), ("tool_call_id", "string"), ("tool_calls", "[]api.ToolCall")):
                    _check(m.get(mk), mt, f"{where}.{mk}")
                _check_images(m.get("images"), f"{where}.images")
        elif gotype == "[]api.ImageData":
            _check_images(v, where)
        elif gotype != "any":
            _check(v, gotype, where)
    return body


CHAT_FIELDS = {"model": "string", "messages": "[]api.Message", "stream": "bool", "format": "any",
               "keep_alive": "Duration", "tools": "api.Tools", "options": "map[string]interface {}",
               "think": "Think", "truncate": "bool", "shift": "bool", "logprobs": "bool", "top_logprobs": "int"}
GENERATE_FIELDS = {"model": "string", "prompt": "string", "suffix": "string", "system": "string",
                   "template": "string", "context": "[]int", "stream": "bool", "raw": "bool", "format": "any",
                   "keep_alive": "Duration", "images": "[]api.ImageData", "options": "map[string]interface {}",
                   "think": "Think", "truncate": "bool", "shift": "bool", "logprobs": "bool",
                   "top_logprobs": "int"}
EMBED_FIELDS = {"model": "string", "input": "any", "keep_alive": "Duration", "truncate": "bool",
                "dimensions": "int", "options": "map[string]interface {}"}
EMBEDDINGS_FIELDS = {"model": "string", "prompt": "string", "keep_alive": "Duration",
                     "options": "map[string]interface {}"}
SHOW_FIELDS = {"model": "string", "system": "string", "template": "string", "verbose": "bool",
               "options": "map[string]interface {}", "name": "string"}
OAI_CHAT_FIELDS = {"model": "string", "messages": "[]openai.Message", "stream": "bool",
                   "stream_options": "*openai.StreamOptions", "max_tokens": "int", "seed": "int", "stop": "any",
                   "temperature": "float64", "frequency_penalty": "float64", "presence_penalty": "float64",
                   "top_p": "float64", "response_format": "*openai.ResponseFormat", "tools": "[]api.Tool",
                   "reasoning": "*openai.Reasoning", "reasoning_effort": "string", "logprobs": "bool",
                   "top_logprobs": "int"}
OAI_COMPLETION_FIELDS = {"model": "string", "prompt": "string", "frequency_penalty": "float32",
                         "max_tokens": "int", "presence_penalty": "float32", "seed": "int", "stop": "any",
                         "stream": "bool", "stream_options": "*openai.StreamOptions", "temperature": "float32",
                         "top_p": "float32", "suffix": "string", "logprobs": "int"}
OAI_EMBED_FIELDS = {"input": "any", "model": "string", "dimensions": "int", "encoding_format": "string"}

# api.Options field types (api/types.go Options + Runner), for Options.FromMap
OPTION_TYPES = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string", "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "*int",
    "use_mmap": "*bool", "num_thread": "int", "draft_num_predict": "int",
}


def options_from_map(opts: dict | None) -> dict:
    """api.Options.FromMap: unknown keys ignored, wrong types -> error (a 500 from scheduleRunner)."""
    out: dict[str, Any] = {}
    for k, v in (opts or {}).items():
        t = OPTION_TYPES.get(k)
        if t is None or v is None:
            continue
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        if t in ("int", "*int"):
            if not num:
                raise Reply(500, f'option "{k}" must be of type integer')
            out[k] = int(v)
        elif t == "float32":
            if not num:
                raise Reply(500, f'option "{k}" must be of type float32')
            out[k] = float(v)
        elif t == "*bool":
            if not isinstance(v, bool):
                raise Reply(500, f'option "{k}" must be of type boolean')
            out[k] = v
        elif t == "[]string":
            if not isinstance(v, list):
                raise Reply(500, f'option "{k}" must be of type array')
            if not all(isinstance(s, str) for s in v):
                raise Reply(500, f'option "{k}" must be of an array of strings')
            out[k] = list(v)
    return out
