"""A small real Ollama server (native /api and its OpenAI layer) for the gateway's tests.

Run: python -m tests.doubles.ollama_server --port P --models llama3.2,qwen2.5:0.5b [--loaded llama3.2]
         [--load-seconds S] [--max-queue N] [--num-parallel N] [--embed-models nomic-embed-text]
         [--thinking-models M] [--vision-models M] [--keep-alive 5m] [--context-length 4096]
         [--max-loaded 3] [--host-guard] [--name ollama] [--version 0.33.0]

Wire format follows ollama/ollama at commit fb30760 (v0.33.0-rc2): server/routes.go, server/sched.go,
api/types.go, openai/openai.go, middleware/openai.go (backends.md part B §3). JSON is written the way Go's
encoding/json writes it: struct field order, `omitempty`, `<>&` escaped as \\u003c…, float32 shortest
form, RFC3339Nano timestamps, durations in integer nanoseconds.

Behaviour per request comes from a knob object, read from the body field "x_double", else from
options.x_double (the ollama client passes unknown option keys through; real Ollama ignores them),
else from an "X-Double: <json>" header:
  {"text": "...", "chunks": N, "delay": s, "hold": true, "error_after": N, "error": "msg",
   "status": 500, "message": "msg", "truncate": true, "thinking": "...",
   "tool_call": {"name": "get_weather", "arguments": {"city": "Tokyo"}}   (or a list of them)}
Test hooks (never behind the Host guard): GET /_requests (bodies received), GET /_stats, POST /_release
(let held requests go on), POST /_reset.

Scheduling model: installed models come from --models/--embed-models; a request for a model that is
not resident "loads" it (--load-seconds before the first byte; it shows in /api/ps from the start of the
load), keep_alive sets how long it stays after its last request (0: unload when idle, negative: forever,
expires_at ~292 years ahead as in Go), a num_ctx different from the resident runner's reloads it.
Each resident model has --num-parallel slots; a request that has to wait (for a load or a slot) when
--max-queue requests are already waiting gets 503 "server busy…". (Real Ollama bounds its scheduler's
pending channel, OLLAMA_MAX_QUEUE, and lets requests for an already loaded model wait on the runner's
slots unbounded; this double bounds every wait, which is the observable behaviour tests need.)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import functools
import hashlib
import ipaddress
import json
import math
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, AsyncIterator

from aiohttp import web

MAX_INT64 = (1 << 63) - 1
ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_HOST, DEFAULT_NS, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
JSON_CT = "application/json; charset=utf-8"  # gin's c.JSON
NDJSON_CT = "application/x-ndjson"


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


# ---------------------------------------------------------------------------------------------------
# Model names (types/model/name.go) and the installed-model catalogue
# ---------------------------------------------------------------------------------------------------

def _valid_part(kind: str, s: str) -> bool:
    if not (1 <= len(s) <= (350 if kind == "host" else 80)):
        return False
    for i, ch in enumerate(s):
        alnum = ch.isascii() and (ch.isalnum() or ch == "_")
        if i == 0:
            if not alnum:
                return False
            continue
        if ch in "_-":
            continue
        if ch == ".":
            if kind == "namespace":
                return False
            continue
        if ch == ":":
            if kind != "host":
                return False
            continue
        if not alnum:
            return False
    return True


@dataclass(frozen=True)
class Name:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        return self.full.lower()

    @property
    def shortest(self) -> str:
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NS:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def valid(self) -> bool:
        return all(_valid_part(k, p) for k, p in (("host", self.host), ("namespace", self.namespace),
                                                  ("model", self.model), ("tag", self.tag)))


def parse_name(s: str) -> Name:
    """model.ParseName: [host/][namespace/]model[:tag] with defaults registry.ollama.ai/library/…:latest."""
    s = s.strip()
    tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
        tag = tag or "!MISSING!"
        s = s or "!MISSING!"
    parts = s.split("/")
    model = parts[-1]
    ns = parts[-2] if len(parts) >= 2 else ""
    host = "/".join(parts[:-2]) if len(parts) >= 3 else ""
    if "://" in host:
        host = host.split("://", 1)[1]
    return Name(host or DEFAULT_HOST, ns or DEFAULT_NS, model, tag or DEFAULT_TAG)


# Published facts of a few library models (sizes/digests as `ollama list` shows them); unknown names get
# plausible derived values.
CATALOG: dict[str, dict[str, Any]] = {
    "llama3.2:latest": dict(arch="llama", parameter_size="3.2B", quant="Q4_K_M", file_type=15, size=2019393189,
                            digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                            ctx=131072, emb=3072, params=3212749888, blocks=28, heads=24, kv_heads=8,
                            vocab=128256, ffn=8192, rope=500000.0, eps=1e-5, tokenizer="gpt2", pre="llama-bpe",
                            bos=128000, eos=128009, license="LLAMA 3.2 COMMUNITY LICENSE AGREEMENT"),
    "qwen2.5:0.5b": dict(arch="qwen2", parameter_size="494.03M", quant="Q4_K_M", file_type=15, size=397821319,
                         digest="a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67",
                         ctx=32768, emb=896, params=494032768, blocks=24, heads=14, kv_heads=2, vocab=151936,
                         ffn=4864, rope=1000000.0, eps=1e-6, tokenizer="gpt2", pre="qwen2", bos=151643,
                         eos=151645, license="Apache License Version 2.0"),
    "nomic-embed-text:latest": dict(arch="nomic-bert", parameter_size="137M", quant="F16", file_type=1,
                                    size=274302450,
                                    digest="0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
                                    ctx=2048, emb=768, params=136727040, blocks=12, heads=12, kv_heads=12,
                                    vocab=30522, ffn=3072, rope=1000.0, eps=1e-12, tokenizer="bert", pre="",
                                    bos=101, eos=102, license="Apache License Version 2.0"),
}

TEMPLATES = {
    "llama": ('<|start_header_id|>system<|end_header_id|>\n\n{{ if .System }}{{ .System }}{{ end }}'
              '<|eot_id|>{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
              '{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n'),
    "qwen2": ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{- range .Messages }}'
              '<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'),
    "nomic-bert": "{{ .Prompt }}",
}
STOPS = {"llama": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "qwen2": ["<|im_start|>", "<|im_end|>"]}


@dataclass
class ModelInfo:
    name: Name
    caps: list[str]
    modified_ns: int
    facts: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.facts["arch"]

    def details(self, with_lengths: bool) -> dict:
        d = {"parent_model": "", "format": "gguf", "family": self.arch, "families": [self.arch],
             "parameter_size": self.facts["parameter_size"], "quantization_level": self.facts["quant"]}
        if with_lengths:
            d["context_length"] = self.facts["ctx"]
            d["embedding_length"] = self.facts["emb"]
        return d

    def kv_bytes_per_token(self) -> int:
        f = self.facts
        return f["blocks"] * f["kv_heads"] * (f["emb"] // max(f["heads"], 1)) * 2 * 2


def model_facts(name: Name, embed: bool) -> dict[str, Any]:
    short = name.shortest.lower()
    if short in CATALOG:
        return dict(CATALOG[short])
    low = name.model.lower()
    arch = ("nomic-bert" if embed else "qwen2" if "qwen" in low else "gemma3" if "gemma" in low
            else "phi3" if "phi" in low else "llama")
    m = re.search(r"(\d+(?:\.\d+)?)([bm])", name.tag.lower())
    billions = (float(m.group(1)) / (1000 if m.group(2) == "m" else 1)) if m else 1.0
    psize = (f"{m.group(1)}{m.group(2).upper()}" if m else "1B")
    digest = hashlib.sha256(name.full.encode()).hexdigest()
    return dict(arch=arch, parameter_size=psize, quant="F16" if embed else "Q4_K_M", file_type=1 if embed else 15,
                size=int(billions * 0.6e9) + 1_000_000, digest=digest, ctx=2048 if embed else 8192,
                emb=768 if embed else 2048, params=int(billions * 1e9), blocks=16, heads=16, kv_heads=8,
                vocab=32000, ffn=8192, rope=10000.0, eps=1e-5, tokenizer="gpt2", pre="default", bos=1, eos=2,
                license="")


# ---------------------------------------------------------------------------------------------------
# Scheduler: resident runners, keep_alive, slots, queue
# ---------------------------------------------------------------------------------------------------

@dataclass
class Runner:
    info: ModelInfo
    num_ctx: int
    ctx_auto: bool
    session_ns: int
    slots: asyncio.Semaphore
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)
    refcount: int = 0
    expires_ns: int | None = None
    timer: asyncio.TimerHandle | None = None
    load_task: asyncio.Task | None = None


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.name = a.name
        self.version = a.version
        self.load_seconds = a.load_seconds
        self.max_queue = a.max_queue
        self.num_parallel = max(a.num_parallel, 1)
        self.max_loaded = a.max_loaded
        self.default_ctx = a.context_length
        self.default_keep_ns = parse_duration_ns(_num_or_str(a.keep_alive))
        self.host_guard = a.host_guard
        self.models: dict[str, ModelInfo] = {}
        start = now_ns()
        thinking = {parse_name(m).key for m in _split(a.thinking_models)}
        vision = {parse_name(m).key for m in _split(a.vision_models)}
        all_names = [(m, False) for m in _split(a.models)] + [(m, True) for m in _split(a.embed_models)]
        for i, (m, embed) in enumerate(all_names):
            n = parse_name(m)
            caps = ["embedding"] if embed else ["completion", "tools"]
            if n.key in vision:
                caps.append("vision")
            if n.key in thinking:
                caps.append("thinking")
            self.models[n.key] = ModelInfo(n, caps, start - (i + 1) * 60_000_000_000 - 123_456_789,
                                           model_facts(n, embed))
        self.runners: dict[str, Runner] = {}
        self.waiting = 0
        self.running = 0
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.cancelled = self.completed = self.rejected = self.loads = self.unloads = 0
        self.release = asyncio.Event()

    def lookup(self, name: Name, exact: bool = False) -> ModelInfo | None:
        info = self.models.get(name.key)
        if info is not None and exact and info.name.full != name.full:
            return None  # /api/embeddings opens the manifest path as given: case-sensitive on Linux
        return info

    # --- runners ---------------------------------------------------------------------------------
    def effective_ctx(self, info: ModelInfo, requested: int | None) -> int:
        n = requested if requested is not None else self.default_ctx
        n = max(n, 4)
        if "vision" in info.caps:
            n = max(n, 2048)
        return min(n, info.facts["ctx"])

    def needs_reload(self, r: Runner, requested: int | None) -> bool:
        if r.ctx_auto and requested is None:
            return False
        return r.num_ctx != self.effective_ctx(r.info, requested)

    def unload(self, r: Runner) -> None:
        if self.runners.get(r.info.name.key) is r:
            del self.runners[r.info.name.key]
            self.unloads += 1
        if r.timer:
            r.timer.cancel()
            r.timer = None
        if r.load_task and not r.load_task.done():
            r.load_task.cancel()
        r.unloaded.set()

    def expire(self, r: Runner) -> None:
        """sched.expireRunner: expire now, unload as soon as it is idle."""
        r.expires_ns = now_ns()
        if r.timer:
            r.timer.cancel()
            r.timer = None
        r.session_ns = 0
        if r.refcount <= 0:
            self.unload(r)

    def release_ref(self, r: Runner) -> None:
        r.refcount -= 1
        if r.refcount > 0 or r.unloaded.is_set():
            return
        if r.session_ns <= 0:
            self.unload(r)
            return
        r.expires_ns = now_ns() + r.session_ns
        if r.timer:
            r.timer.cancel()
            r.timer = None
        if r.session_ns < (1 << 62):
            r.timer = asyncio.get_running_loop().call_later(r.session_ns / 1e9, self._timer_expired, r)

    def _timer_expired(self, r: Runner) -> None:
        r.timer = None
        if r.refcount <= 0:
            self.unload(r)

    def start_load(self, info: ModelInfo, requested_ctx: int | None, keep_ns: int | None,
                   seconds: float) -> Runner:
        r = Runner(info, self.effective_ctx(info, requested_ctx), requested_ctx is None,
                   keep_ns if keep_ns is not None else self.default_keep_ns, asyncio.Semaphore(self.num_parallel))
        self.runners[info.name.key] = r

        async def load() -> None:
            if seconds > 0:
                await asyncio.sleep(seconds)
            r.loaded.set()
            self.loads += 1

        r.load_task = asyncio.get_running_loop().create_task(load())
        return r

    async def get_runner(self, info: ModelInfo, keep_ns: int | None, requested_ctx: int | None) -> Runner:
        while True:
            r = self.runners.get(info.name.key)
            if r is not None:
                if self.needs_reload(r, requested_ctx):
                    self.expire(r)
                    await r.unloaded.wait()
                    continue
                r.refcount += 1
                if r.timer:
                    r.timer.cancel()
                    r.timer = None
                if keep_ns is not None:
                    r.session_ns = keep_ns
                try:
                    if not r.loaded.is_set():
                        await asyncio.shield(r.load_task)
                except asyncio.CancelledError:
                    self.release_ref(r)
                    if not r.loaded.is_set() and r.refcount <= 0:
                        self.unload(r)  # the load is abandoned with its last requester, as WaitUntilRunning(ctx)
                    raise
                return r
            if self.max_loaded > 0 and len(self.runners) >= self.max_loaded:
                victims = sorted(self.runners.values(), key=lambda x: x.session_ns)
                idle = [v for v in victims if v.refcount <= 0]
                victim = (idle or victims)[0]
                self.expire(victim)
                await victim.unloaded.wait()
                continue
            self.start_load(info, requested_ctx, keep_ns, self.load_seconds)


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _num_or_str(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


@dataclass
class Lease:
    st: State
    runner: Runner | None = None
    slot: bool = False
    waiting: bool = False
    loaded_ns: int = 0

    def close(self) -> None:
        if self.waiting:
            self.st.waiting -= 1
            self.waiting = False
        if self.slot and self.runner:
            self.runner.slots.release()
            self.st.running -= 1
            self.slot = False
        if self.runner:
            r, self.runner = self.runner, None
            self.st.release_ref(r)


async def schedule(st: State, lease: Lease, info: ModelInfo, keep_ns: int | None, requested_ctx: int | None,
                   need_slot: bool) -> None:
    r = st.runners.get(info.name.key)
    ready = r is not None and r.loaded.is_set() and not st.needs_reload(r, requested_ctx)
    would_wait = not ready or (need_slot and r is not None and r.slots.locked())
    if would_wait:
        if st.waiting >= st.max_queue:
            st.rejected += 1
            raise Reply(503, ERR_MAX_QUEUE)
        st.waiting += 1
        lease.waiting = True
    lease.runner = await st.get_runner(info, keep_ns, requested_ctx)
    lease.loaded_ns = time.monotonic_ns()
    if need_slot:
        await lease.runner.slots.acquire()
        lease.slot = True
        st.running += 1
    if lease.waiting:
        st.waiting -= 1
        lease.waiting = False


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


# ---------------------------------------------------------------------------------------------------
# Native responses (api.ChatResponse / api.GenerateResponse as Go marshals them)
# ---------------------------------------------------------------------------------------------------

METRIC_KEYS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
               "eval_duration")


def chat_obj(model: str, created: int, content: str = "", done: bool = False, done_reason: str = "",
             thinking: str = "", tool_calls: list | None = None, metrics: dict | None = None) -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        msg["thinking"] = thinking
    if tool_calls:
        msg["tool_calls"] = tool_calls
    o: dict[str, Any] = {"model": model, "created_at": rfc3339nano(created), "message": msg, "done": done}
    if done_reason:
        o["done_reason"] = done_reason
    for k in METRIC_KEYS:
        if metrics and metrics.get(k):
            o[k] = metrics[k]
    return o


def generate_obj(model: str, created: int, response: str = "", done: bool = False, done_reason: str = "",
                 thinking: str = "", context: list[int] | None = None, metrics: dict | None = None) -> dict:
    o: dict[str, Any] = {"model": model, "created_at": rfc3339nano(created), "response": response}
    if thinking:
        o["thinking"] = thinking
    o["done"] = done
    if done_reason:
        o["done_reason"] = done_reason
    if context:
        o["context"] = context
    for k in METRIC_KEYS:
        if metrics and metrics.get(k):
            o[k] = metrics[k]
    return o


def tool_call_id() -> str:
    return "call_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))


@dataclass
class Job:
    """One inference request after validation: what the writers turn into bytes."""
    kind: str                       # "chat" | "generate"
    model: str                      # as sent
    info: ModelInfo
    stream: bool
    tokens: list[str]
    done_reason: str
    thinking: list[str]
    tool_calls: list[dict]
    has_tools: bool
    prompt_tokens: int
    raw: bool
    ctl: dict
    start_mono: int
    lease: Lease


async def produce(st: State, job: Job) -> AsyncIterator[dict]:
    """The handler's channel: native response objects, or a final {"error": …} (mid-stream failure)."""
    ctl = job.ctl
    delay = float(ctl.get("delay", 0) or 0)
    error_after = None if ctl.get("error_after") is None else int(ctl["error_after"])
    err_msg = ctl.get("error", "an error was encountered while running the model: unexpected EOF")
    gen_start = time.monotonic_ns()
    chat = job.kind == "chat"

    def obj(content: str = "", thinking: str = "", tool_calls: list | None = None) -> dict:
        if chat:
            return chat_obj(job.model, now_ns(), content=content, thinking=thinking, tool_calls=tool_calls)
        return generate_obj(job.model, now_ns(), response=content, thinking=thinking)

    steps: list[dict] = [{"thinking": t} for t in job.thinking]
    calls = job.tool_calls if (chat and job.has_tools) else []
    steps += [{"tool_calls": calls}] if calls else [{"content": t} for t in job.tokens]
    for i, step in enumerate(steps):
        if error_after == i:
            yield {"error": err_msg}
            return
        if delay:
            await asyncio.sleep(delay)
        yield obj(**step)
        if i == 0 and ctl.get("hold"):
            await st.release.wait()
    if error_after == len(steps):
        yield {"error": err_msg}
        return
    if not steps and ctl.get("hold"):
        await st.release.wait()
    end = time.monotonic_ns()
    eval_count = len(job.thinking) + (8 * len(calls) if calls else len(job.tokens))
    prompt_ns = job.prompt_tokens * 250_000 + 1_000_000
    eval_ns = max(end - gen_start, eval_count * 1_000_000) if eval_count else 0
    load_ns = max(job.lease.loaded_ns - job.start_mono, 1)
    total_ns = max(end - job.start_mono, load_ns + prompt_ns + eval_ns)
    metrics = {"total_duration": total_ns, "load_duration": load_ns, "prompt_eval_count": job.prompt_tokens,
               "prompt_eval_duration": prompt_ns, "eval_count": eval_count, "eval_duration": eval_ns}
    if chat:
        yield chat_obj(job.model, now_ns(), done=True, done_reason=job.done_reason, metrics=metrics)
    else:
        vocab = job.info.facts["vocab"]
        ctx = None if job.raw else [token_id(f"p{i}", vocab) for i in range(job.prompt_tokens)] + [
            token_id(t, vocab) for t in job.tokens]
        yield generate_obj(job.model, now_ns(), done=True, done_reason=job.done_reason, context=ctx,
                           metrics=metrics)


def aggregate(job: Job, items: list[dict]) -> dict:
    """Non-stream: concatenated content/thinking, tool calls, the final object's fields."""
    last = dict(items[-1])
    key = "message" if job.kind == "chat" else "response"
    content = "".join((i["message"]["content"] if job.kind == "chat" else i["response"]) for i in items)
    thinking = "".join(((i["message"].get("thinking", "") if job.kind == "chat" else i.get("thinking", ""))
                        for i in items))
    if job.kind == "chat":
        calls = [c for i in items for c in i["message"].get("tool_calls", [])] if job.has_tools else []
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            msg["thinking"] = thinking
        if calls:
            msg["tool_calls"] = calls
        last[key] = msg
        return last
    out: dict[str, Any] = {}
    for k, v in last.items():
        if k == "response":
            out[k] = content
            if thinking:
                out["thinking"] = thinking
        elif k != "thinking":
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------
# Shared request handling (ChatHandler / GenerateHandler)
# ---------------------------------------------------------------------------------------------------

def knobs(request: web.Request, body: dict) -> dict:
    ctl = body.get("x_double")
    if not isinstance(ctl, dict):
        opts = body.get("options")
        ctl = opts.get("x_double") if isinstance(opts, dict) else None
    if not isinstance(ctl, dict):
        try:
            ctl = json.loads(request.headers.get("X-Double", "{}"))
        except ValueError:
            ctl = {}
    return ctl if isinstance(ctl, dict) else {}


def record(st: State, request: web.Request, body: Any, **extra: Any) -> dict:
    entry = {"path": request.path, "body": body, "host": request.headers.get("Host"),
             "authorization": request.headers.get("Authorization"),
             "user_agent": request.headers.get("User-Agent"), **extra}
    st.requests.append(entry)
    return entry


def default_answer(st: State, ctl: dict) -> str:
    return ctl["text"] if "text" in ctl else f"Hello from {st.name}, this is a streamed answer"


async def prepare_inference(st: State, request: web.Request, kind: str, body: dict, entry: dict,
                            lease: Lease) -> Job | dict:
    """Validate, schedule (load / queue / slot). Returns a Job, or a ready single object (load/unload)."""
    start = time.monotonic_ns()
    ctl = knobs(request, body)
    if ctl.get("status"):
        raise Reply(int(ctl["status"]), ctl.get("message", f"injected {ctl['status']}"))
    top = body.get("top_logprobs") or 0
    if top < 0 or top > 20:
        raise Reply(400, "top_logprobs must be between 0 and 20")
    model = body.get("model") or ""
    if not model.strip():
        raise Reply(400, "model is required") if kind == "chat" else Reply(404, f"model '{model}' not found")
    name = parse_name(model)
    if not name.valid():
        raise Reply(400, "invalid model name")
    info = st.lookup(name)
    if info is None:
        raise Reply(404, f"model '{model}' not found")
    keep_ns = parse_duration_ns(body["keep_alive"]) if body.get("keep_alive") is not None else None
    messages = body.get("messages") or []
    prompt = body.get("prompt") or ""
    empty = not messages if kind == "chat" else prompt == ""
    if empty and keep_ns == 0:
        r = st.runners.get(info.name.key)
        if r is not None:
            st.expire(r)
        return (chat_obj(model, now_ns(), done=True, done_reason="unload") if kind == "chat"
                else generate_obj(model, now_ns(), done=True, done_reason="unload"))
    if kind == "generate" and body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise Reply(400, "raw mode does not support template, system, or context")
    think = body.get("think")
    if "thinking" in info.caps:
        if think is None:
            think = True
    elif think is True or isinstance(think, str):
        raise Reply(400, f"{json.dumps(model)} does not support thinking")
    tools = body.get("tools") or []
    want = ["completion"] + (["tools"] if tools else []) + (["insert"] if body.get("suffix") else [])
    missing = [c for c in want if c not in info.caps]
    if missing:
        if "completion" in missing:
            raise Reply(400, f"{json.dumps(model)} does not support {'chat' if kind == 'chat' else 'generate'}")
        raise Reply(400, f"{info.name.full} does not support {' '.join(missing)}")
    opts = options_from_map(body.get("options"))
    entry["options"] = opts
    entry["knobs"] = ctl
    await schedule(st, lease, info, keep_ns, opts.get("num_ctx"), need_slot=not empty)
    entry["num_ctx"] = lease.runner.num_ctx if lease.runner else None
    if empty:
        return (chat_obj(model, now_ns(), done=True, done_reason="load") if kind == "chat"
                else generate_obj(model, now_ns(), done=True, done_reason="load"))
    # the answer
    stops = list(opts.get("stop") or [])
    budget = opts.get("num_predict")
    budget = None if budget is None or budget < 0 else budget  # -1: up to 10 x num_ctx, i.e. unbounded here
    thinking: list[str] = []
    if "thinking" in info.caps and think not in (False, None):
        thinking = pieces(ctl.get("thinking", "Let me think about this."), None)
    if budget is not None and len(thinking) >= budget:  # num_predict covers thinking tokens too
        thinking, tokens, reason = thinking[:budget], [], "length"
    else:
        rest = None if budget is None else budget - len(thinking)
        tokens, reason = generate_tokens(default_answer(st, ctl), ctl.get("chunks"), rest, stops)
    calls_spec = ctl.get("tool_call")
    calls: list[dict] = []
    if calls_spec and tools:
        for i, c in enumerate(calls_spec if isinstance(calls_spec, list) else [calls_spec]):
            calls.append({"id": tool_call_id(), "function": {"index": i, "name": c["name"],
                                                             "arguments": c.get("arguments", {})}})
    if kind == "chat":
        ptoks = 3 + sum(count_tokens(m.get("content") or "") + 4 for m in messages if isinstance(m, dict))
        ptoks += 10 * len(tools)
    else:
        ptoks = (3 if body.get("raw") else 8) + count_tokens(prompt) + count_tokens(body.get("system") or "")
    return Job(kind, model, info, body.get("stream") is not False, tokens, reason, thinking, calls, bool(tools),
               ptoks, bool(body.get("raw")), ctl, start, lease)


def inflight(st: State) -> None:
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)


def gin_json(status: int, obj: Any, ctype: str = JSON_CT, newline: bool = False) -> web.Response:
    return web.Response(status=status, body=(go_json(obj) + ("\n" if newline else "")).encode(),
                        headers={"Content-Type": ctype})


async def native_inference(request: web.Request, kind: str) -> web.StreamResponse:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "api.ChatRequest" if kind == "chat" else "api.GenerateRequest",
                             CHAT_FIELDS if kind == "chat" else GENERATE_FIELDS)
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body, images=_image_sizes(body, kind))
        job = await prepare_inference(st, request, kind, body, entry, lease)
        if isinstance(job, dict):
            st.completed += 1
            return gin_json(200, job)
        it = produce(st, job)
        if not job.stream:
            items = []
            async for item in it:
                if "error" in item:
                    return gin_json(item.get("status", 500), {"error": item["error"]})
                items.append(item)
            st.completed += 1
            return gin_json(200, aggregate(job, items))
        first = await it.__anext__()
        if "error" in first:  # before any byte: a plain JSON error with its status
            return gin_json(first.get("status", 500), {"error": first["error"]}, ctype="application/json")
        resp = web.StreamResponse(headers={"Content-Type": NDJSON_CT})
        await resp.prepare(request)
        await resp.write((go_json(first) + "\n").encode())
        n = 1
        async for item in it:
            if "error" in item:
                await resp.write((go_json({"error": item["error"]}) + "\n").encode())
                break
            await resp.write((go_json(item) + "\n").encode())
            n += 1
            if job.ctl.get("truncate") and n == max(len(job.tokens) // 2, 1):
                request.transport.close()
                return resp
        else:
            st.completed += 1
        await resp.write_eof()
        return resp
    except Reply as e:
        return gin_json(e.status, {"error": e.message})
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


def _image_sizes(body: dict, kind: str) -> list:
    if kind == "generate":
        return [len(base64.b64decode(i)) for i in body.get("images") or [] if isinstance(i, str)]
    out = []
    for idx, m in enumerate(body.get("messages") or []):
        if isinstance(m, dict) and m.get("images"):
            out.append({"message": idx, "role": m.get("role"),
                        "bytes": [len(base64.b64decode(i)) for i in m["images"] if isinstance(i, str)]})
    return out


async def chat(request: web.Request) -> web.StreamResponse:
    return await native_inference(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await native_inference(request, "generate")


# ---------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------

async def run_embed(st: State, request: web.Request, body: dict, entry: dict, lease: Lease) -> dict:
    """EmbedHandler: returns the api.EmbedResponse object (raises Reply for errors)."""
    start = time.monotonic_ns()
    ctl = knobs(request, body)
    entry["knobs"] = ctl
    if ctl.get("status"):
        raise Reply(int(ctl["status"]), ctl.get("message", f"injected {ctl['status']}"))
    model = body.get("model") or ""
    if not model.strip():
        raise Reply(404, f"model '{model}' not found")
    name = parse_name(model)
    if not name.valid():
        raise Reply(400, "invalid model name")
    inp = body.get("input")
    inputs: list[str] = []
    if isinstance(inp, str):
        if inp:
            inputs.append(inp)
    elif isinstance(inp, list):
        for v in inp:
            if not isinstance(v, str):
                raise Reply(400, "invalid input type")
            inputs.append(v)
    elif inp is not None:
        raise Reply(400, "invalid input type")
    info = st.lookup(name)
    if info is None:  # getModel fails -> handleScheduleError's wording
        raise Reply(404, f"model {json.dumps(model)} not found, try pulling it first")
    keep_ns = parse_duration_ns(body["keep_alive"]) if body.get("keep_alive") is not None else None
    opts = options_from_map(body.get("options"))
    entry["options"] = opts
    await schedule(st, lease, info, keep_ns, opts.get("num_ctx"), need_slot=bool(inputs))
    loaded = lease.loaded_ns
    if not inputs:
        return {"model": model, "embeddings": []}
    if ctl.get("delay"):
        await asyncio.sleep(float(ctl["delay"]))
    if ctl.get("hold"):
        await st.release.wait()
    limit = lease.runner.num_ctx if lease.runner else info.facts["ctx"]
    total = 0
    vecs = []
    for text in inputs:
        n = count_tokens(text) + 2
        if body.get("truncate") is False and n > limit:
            raise Reply(400, "the input length exceeds the context length")
        total += min(n, limit)
        vecs.append(embed_vector(text, info.facts["emb"], body.get("dimensions")))
    end = time.monotonic_ns()
    out: dict[str, Any] = {"model": model, "embeddings": vecs}
    out["total_duration"] = max(end - start, 1)
    out["load_duration"] = max(loaded - start, 1)
    if total:
        out["prompt_eval_count"] = total
    return out


async def embed(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "api.EmbedRequest", EMBED_FIELDS)
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        out = await run_embed(st, request, body, entry, lease)
        st.completed += 1
        return gin_json(200, out)
    except Reply as e:
        return gin_json(e.status, {"error": e.message})
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


async def embeddings_legacy(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "api.EmbeddingRequest", EMBEDDINGS_FIELDS)
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        ctl = knobs(request, body)
        if ctl.get("status"):
            raise Reply(int(ctl["status"]), ctl.get("message", f"injected {ctl['status']}"))
        model = body.get("model") or ""
        if not model.strip():
            raise Reply(400, "model is required")
        name = parse_name(model)
        if not name.valid():
            raise Reply(400, "invalid model name")
        info = st.lookup(name, exact=True)
        if info is None:
            raise Reply(404, f"model {json.dumps(model)} not found, try pulling it first")
        keep_ns = parse_duration_ns(body["keep_alive"]) if body.get("keep_alive") is not None else None
        opts = options_from_map(body.get("options"))
        entry["options"] = opts
        prompt = body.get("prompt") or ""
        await schedule(st, lease, info, keep_ns, opts.get("num_ctx"), need_slot=bool(prompt))
        if not prompt:
            return gin_json(200, {"embedding": []})
        vec = [float(v) for v in embed_vector(prompt, info.facts["emb"], None)]
        st.completed += 1
        return gin_json(200, {"embedding": vec})
    except Reply as e:
        return gin_json(e.status, {"error": e.message})
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


# ---------------------------------------------------------------------------------------------------
# Listing and inspection
# ---------------------------------------------------------------------------------------------------

def sorted_models(st: State) -> list[ModelInfo]:
    return sorted(st.models.values(), key=lambda m: -(m.modified_ns // 1_000_000_000))


async def tags(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    out = []
    for m in sorted_models(st):
        out.append({"name": m.name.shortest, "model": m.name.shortest, "modified_at": rfc3339nano(m.modified_ns, False),
                    "size": m.facts["size"], "digest": m.facts["digest"], "details": m.details(True),
                    "capabilities": m.caps})
    return gin_json(200, {"models": out})


async def ps(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    rows = []
    now = now_ns()
    for r in st.runners.values():
        m = r.info
        exp = r.expires_ns if r.expires_ns is not None else now + r.session_ns
        size = m.facts["size"] + r.num_ctx * m.kv_bytes_per_token() * st.num_parallel
        rows.append((exp, {"name": m.name.shortest, "model": m.name.shortest, "size": size,
                           "digest": m.facts["digest"], "details": m.details(False),
                           "expires_at": rfc3339nano(exp, False), "size_vram": size, "context_length": r.num_ctx}))
    rows.sort(key=lambda x: -(x[0] // 1_000_000_000))
    return gin_json(200, {"models": [r for _, r in rows]})


def show_object(m: ModelInfo) -> dict:
    f = m.facts
    arch = m.arch
    info: dict[str, Any] = {
        "general.architecture": arch, "general.file_type": f["file_type"], "general.parameter_count": f["params"],
        "general.quantization_version": 2, f"{arch}.attention.head_count": f["heads"],
        f"{arch}.attention.head_count_kv": f["kv_heads"], f"{arch}.attention.layer_norm_rms_epsilon": F32(f["eps"]),
        f"{arch}.block_count": f["blocks"], f"{arch}.context_length": f["ctx"],
        f"{arch}.embedding_length": f["emb"], f"{arch}.feed_forward_length": f["ffn"],
        f"{arch}.rope.freq_base": F32(f["rope"]), "tokenizer.ggml.bos_token_id": f["bos"],
        "tokenizer.ggml.eos_token_id": f["eos"], "tokenizer.ggml.merges": [], "tokenizer.ggml.model": f["tokenizer"],
        "tokenizer.ggml.pre": f["pre"], "tokenizer.ggml.token_type": [], "tokenizer.ggml.tokens": [],
    }
    if "embedding" in m.caps:
        info[f"{arch}.pooling_type"] = 1
    info = dict(sorted(info.items()))
    stops = STOPS.get(arch, [])
    params = "\n".join(f"{'stop':<30} {json.dumps(s)}" for s in stops)
    template = TEMPLATES.get(arch, "{{ .Prompt }}")
    modelfile = ('# Modelfile generated by "ollama show"\n'
                 '# To build a new Modelfile based on this, replace FROM with:\n'
                 f"# FROM {m.name.shortest}\n\nFROM /root/.ollama/models/blobs/sha256-{f['digest']}\n"
                 f'TEMPLATE """{template}"""\n' + "".join(f"PARAMETER stop {json.dumps(s)}\n" for s in stops)
                 + (f'LICENSE """{f["license"]}"""\n' if f["license"] else ""))
    out: dict[str, Any] = {}
    if f["license"]:
        out["license"] = f["license"]
    out["modelfile"] = modelfile
    if params:
        out["parameters"] = params
    out["template"] = template
    out["details"] = m.details(False)
    out["model_info"] = info
    out["tensors"] = [{"name": "token_embd.weight", "type": "Q6_K" if f["quant"] != "F16" else "F16",
                       "shape": [f["emb"], f["vocab"]]},
                      {"name": "blk.0.attn_norm.weight", "type": "F32", "shape": [f["emb"]]},
                      {"name": "output_norm.weight", "type": "F32", "shape": [f["emb"]]}]
    out["capabilities"] = m.caps
    out["modified_at"] = rfc3339nano(m.modified_ns, False)
    return out


async def show(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    try:
        body = bind_body(await request.read(), "api.ShowRequest", SHOW_FIELDS)
        model = body.get("model") or body.get("name") or ""
        if not model:
            raise Reply(400, "model is required")
        name = parse_name(model)
        if not name.valid():
            raise Reply(400, "invalid model name")
        info = st.lookup(name)
        if info is None:
            raise Reply(404, f"model '{name.shortest}' not found")
        return gin_json(200, show_object(info))
    except Reply as e:
        return gin_json(e.status, {"error": e.message})


async def root(request: web.Request) -> web.Response:
    return web.Response(body=b"Ollama is running", headers={"Content-Type": "text/plain; charset=utf-8"})


async def version(request: web.Request) -> web.Response:
    return gin_json(200, {"version": request.app["state"].version})


# ---------------------------------------------------------------------------------------------------
# OpenAI layer (middleware/openai.go + openai/openai.go)
# ---------------------------------------------------------------------------------------------------

def oai_error(status: int, message: str) -> web.Response:
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return gin_json(status, {"error": {"message": message, "type": etype, "param": None, "code": None}},
                    ctype="application/json", newline=True)


def decode_image_url(url: str) -> bytes:
    if url.startswith("http://") or url.startswith("https://"):
        raise Reply(400, "image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        url = url[len("data:;base64,"):]
    else:
        for t in ("jpeg", "jpg", "png", "webp"):
            p = f"data:image/{t};base64,"
            if url.startswith(p):
                url = url[len(p):]
                break
        else:
            raise Reply(400, "invalid image input")
    try:
        return base64.b64decode(url, validate=True)
    except (binascii.Error, ValueError):
        raise Reply(400, "invalid image input") from None


def from_chat_request(r: dict) -> dict:
    """openai.FromChatRequest -> an api.ChatRequest body."""
    messages = []
    for msg in r.get("messages") or []:
        if not isinstance(msg, dict):
            raise Reply(400, "json: cannot unmarshal " + _jkind(msg) + " into Go struct field "
                        "ChatCompletionRequest.messages of type openai.Message")
        role = msg.get("role") or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = msg.get("name") or ""
            if not tool_name and msg.get("tool_call_id"):
                for prev in reversed(r["messages"]):
                    for tc in (prev.get("tool_calls") or []) if isinstance(prev, dict) else []:
                        if tc.get("id") == msg["tool_call_id"]:
                            tool_name = (tc.get("function") or {}).get("name", "")
        calls = []
        for tc in msg.get("tool_calls") or []:
            try:
                args = json.loads((tc.get("function") or {}).get("arguments") or "")
            except ValueError:
                raise Reply(400, "invalid tool call arguments") from None
            c = {"function": {"index": 0, "name": (tc.get("function") or {}).get("name", ""), "arguments": args}}
            if tc.get("id"):
                c = {"id": tc["id"], **c}
            calls.append(c)
        content = msg.get("content")
        base = {"role": role}
        if isinstance(content, str):
            m = {**base, "content": content}
            if msg.get("reasoning"):
                m["thinking"] = msg["reasoning"]
            if calls:
                m["tool_calls"] = calls
            if tool_name:
                m["tool_name"] = tool_name
            if msg.get("tool_call_id"):
                m["tool_call_id"] = msg["tool_call_id"]
            messages.append(m)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise Reply(400, "invalid message format")
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        raise Reply(400, "invalid message format")
                    messages.append({**base, "content": part["text"]})
                elif part.get("type") == "image_url":
                    iu = part.get("image_url")
                    url = iu.get("url") if isinstance(iu, dict) else iu
                    if not isinstance(url, str):
                        raise Reply(400, "invalid message format")
                    img = decode_image_url(url)
                    messages.append({**base, "content": "", "images": [base64.b64encode(img).decode()]})
                elif part.get("type") == "input_audio":
                    au = part.get("input_audio")
                    if not isinstance(au, dict):
                        raise Reply(400, "invalid input_audio format")
                    if not isinstance(au.get("data"), str):
                        raise Reply(400, "invalid input_audio format: missing data")
                    messages.append({**base, "content": "", "images": [au["data"]]})
                else:
                    raise Reply(400, "invalid message format")
            if messages and calls:
                messages[-1]["tool_calls"] = calls
        else:
            if msg.get("tool_calls") is None:
                raise Reply(400, "invalid message content type: " + ("<nil>" if content is None else
                                                                      {bool: "bool", dict: "map[string]interface {}"}
                                                                      .get(type(content), "float64")))
            messages.append({**base, "content": "", "tool_calls": calls})
    options: dict[str, Any] = {}
    stop = r.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if r.get("max_tokens") is not None:
        options["num_predict"] = r["max_tokens"]
    options["temperature"] = r["temperature"] if r.get("temperature") is not None else 1.0
    if r.get("seed") is not None:
        options["seed"] = r["seed"]
    for k in ("frequency_penalty", "presence_penalty"):
        if r.get(k) is not None:
            options[k] = r[k]
    options["top_p"] = r["top_p"] if r.get("top_p") is not None else 1.0
    out: dict[str, Any] = {"model": r.get("model") or "", "messages": messages}
    fmt = r.get("response_format")
    if isinstance(fmt, dict):
        t = str(fmt.get("type", "")).strip().lower()
        if t == "json_object":
            out["format"] = "json"
        elif t == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            out["format"] = fmt["json_schema"].get("schema")
    out["options"] = options
    out["stream"] = bool(r.get("stream"))
    if r.get("tools"):
        out["tools"] = r["tools"]
    effort = ((r.get("reasoning") or {}).get("effort") if isinstance(r.get("reasoning"), dict)
              else r.get("reasoning_effort"))
    if effort:
        m = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
             "xhigh": "max", "ultra": "max"}
        if effort not in m:
            raise Reply(400, f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", '
                             '"high", "xhigh", "ultra", "max", or "none")')
        out["think"] = m[effort]
    if r.get("logprobs"):
        out["logprobs"] = True
    if r.get("top_logprobs"):
        out["top_logprobs"] = r["top_logprobs"]
    return out


def from_complete_request(r: dict) -> dict:
    options: dict[str, Any] = {}
    stop = r.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        for s in stop:
            if not isinstance(s, str):
                gt = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}.get(type(s), "float64")
                raise Reply(400, f"invalid type for 'stop' field: {gt if s is not None else '<nil>'}")
        options["stop"] = list(stop)
    if r.get("max_tokens") is not None:
        options["num_predict"] = r["max_tokens"]
    options["temperature"] = r["temperature"] if r.get("temperature") is not None else 1.0
    if r.get("seed") is not None:
        options["seed"] = r["seed"]
    options["frequency_penalty"] = r.get("frequency_penalty") or 0
    options["presence_penalty"] = r.get("presence_penalty") or 0
    options["top_p"] = r["top_p"] if r.get("top_p") else 1.0
    out: dict[str, Any] = {"model": r.get("model") or "", "prompt": r.get("prompt") or "", "options": options,
                           "stream": bool(r.get("stream"))}
    if r.get("suffix"):
        out["suffix"] = r["suffix"]
    if isinstance(r.get("logprobs"), int) and r["logprobs"] > 0:
        out["logprobs"], out["top_logprobs"] = True, r["logprobs"]
    return out


def _unix(created_at: str) -> int:
    return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")[:19] + "+00:00").timestamp())


def oai_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": c.get("id", ""), "index": c["function"].get("index", 0), "type": "function",
             "function": {"name": c["function"]["name"], "arguments": go_json(c["function"]["arguments"])}}
            for c in calls]


def usage_of(r: dict) -> dict:
    p, c = r.get("prompt_eval_count", 0), r.get("eval_count", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def to_chat_completion(cid: str, r: dict) -> dict:
    msg = r.get("message") or {}
    calls = oai_tool_calls(msg.get("tool_calls") or [])
    reason = r.get("done_reason", "")
    if reason == "stop" and calls:
        reason = "tool_calls"
    m: dict[str, Any] = {"role": msg.get("role", ""), "content": msg.get("content", "")}
    if msg.get("thinking"):
        m["reasoning"] = msg["thinking"]
    if calls:
        m["tool_calls"] = calls
    return {"id": cid, "object": "chat.completion", "created": _unix(r["created_at"]) if r.get("created_at") else 0,
            "model": r.get("model", ""), "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": m, "finish_reason": reason or None}], "usage": usage_of(r)}


class ChatWriter:
    """middleware.ChatWriter for stream=true: native objects in, SSE events out."""

    def __init__(self, cid: str, include_usage: bool) -> None:
        self.cid, self.include_usage = cid, include_usage
        self.created: int | None = None
        self.first_sent = False
        self.tool_call_sent = False

    def _chunk(self, model: str, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": model,
                "system_fingerprint": "fp_ollama", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def write(self, r: dict) -> bytes:
        """One native object (or an {"error"} line, which Go decodes as an empty ChatResponse)."""
        if "error" in r:
            r = {}
        if self.created is None:
            self.created = _unix(r["created_at"]) if r.get("created_at") else int(time.time())
        msg = r.get("message") or {}
        done = bool(r.get("done"))
        content, thinking, calls = msg.get("content", ""), msg.get("thinking", ""), msg.get("tool_calls") or []
        model = r.get("model", "")
        out = b""
        trailer = done and self.first_sent and not content and not thinking and not calls
        if not trailer:
            role = {} if self.first_sent else {"role": "assistant"}
            deltas = []
            if thinking and (content or calls):
                deltas.append({**role, "reasoning": thinking})
                d: dict[str, Any] = {"content": content}
                if calls:
                    d["tool_calls"] = oai_tool_calls(calls)
                deltas.append(d)
            else:
                d = {**role, "content": content}
                if calls:
                    d["tool_calls"] = oai_tool_calls(calls)
                if thinking:
                    d["reasoning"] = thinking
                deltas.append(d)
            for d in deltas:
                if d.get("tool_calls"):
                    self.tool_call_sent = True
                out += b"data: " + go_json(self._chunk(model, d)).encode() + b"\n\n"
            self.first_sent = True
        if done:
            reason = r.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            out += b"data: " + go_json(self._chunk(model, {}, reason)).encode() + b"\n\n"
            if self.include_usage:
                u = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": model,
                     "system_fingerprint": "fp_ollama", "choices": [], "usage": usage_of(r)}
                out += b"data: " + go_json(u).encode() + b"\n\n"
            out += b"data: [DONE]\n\n"
        return out


def complete_chunk(cid: str, r: dict, include_usage: bool) -> dict:
    reason = r.get("done_reason") or None
    c: dict[str, Any] = {"id": cid, "object": "text_completion", "created": int(time.time()),
                         "choices": [{"text": r.get("response", ""), "index": 0, "finish_reason": reason}],
                         "model": r.get("model", ""), "system_fingerprint": "fp_ollama"}
    if include_usage:
        c["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return c


def complete_write(cid: str, r: dict, include_usage: bool) -> bytes:
    if "error" in r:
        r = {}
    c = complete_chunk(cid, r, include_usage)
    out = b"data: " + go_json(c).encode() + b"\n\n"
    if r.get("done"):
        if include_usage:
            c["usage"] = usage_of(r)
            c["choices"] = []
            out += b"data: " + go_json(c).encode() + b"\n\n"
        out += b"data: [DONE]\n\n"
    return out


def to_completion(cid: str, r: dict) -> dict:
    return {"id": cid, "object": "text_completion", "created": _unix(r["created_at"]) if r.get("created_at") else 0,
            "model": r.get("model", ""), "system_fingerprint": "fp_ollama",
            "choices": [{"text": r.get("response", ""), "index": 0, "finish_reason": r.get("done_reason") or None}],
            "usage": usage_of(r)}


async def v1_inference(request: web.Request, kind: str) -> web.StreamResponse:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    cid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{random.randrange(999)}"
    try:
        try:
            body = bind_body(raw, "openai.ChatCompletionRequest" if kind == "chat" else "openai.CompletionRequest",
                             OAI_CHAT_FIELDS if kind == "chat" else OAI_COMPLETION_FIELDS, eof_message="EOF")
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        if kind == "chat" and not body.get("messages"):
            raise Reply(400, "[] is too short - 'messages'")
        native = from_chat_request(body) if kind == "chat" else from_complete_request(body)
        if "x_double" in body:
            native["x_double"] = body["x_double"]
        entry["native"] = native
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        job = await prepare_inference(st, request, kind, native, entry, lease)
        if isinstance(job, dict):  # load/unload (only reachable through /v1/completions with prompt "")
            st.completed += 1
            if not stream:
                return gin_json(200, to_chat_completion(cid, job) if kind == "chat" else to_completion(cid, job),
                                ctype="application/json", newline=True)
            data = (ChatWriter(cid, include_usage).write(job) if kind == "chat"
                    else complete_write(cid, job, include_usage))
            return web.Response(body=data, headers={"Content-Type": "text/event-stream"})
        it = produce(st, job)
        if not stream:
            items = []
            async for item in it:
                if "error" in item:
                    return oai_error(item.get("status", 500), item["error"])
                items.append(item)
            st.completed += 1
            agg = aggregate(job, items)
            return gin_json(200, to_chat_completion(cid, agg) if kind == "chat" else to_completion(cid, agg),
                            ctype="application/json", newline=True)
        first = await it.__anext__()
        if "error" in first:
            return oai_error(first.get("status", 500), first["error"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        writer = ChatWriter(cid, include_usage) if kind == "chat" else None

        def enc(item: dict) -> bytes:
            return writer.write(item) if writer else complete_write(cid, item, include_usage)

        await resp.write(enc(first))
        n = 1
        async for item in it:
            await resp.write(enc(item))
            if "error" in item:
                break
            n += 1
            if job.ctl.get("truncate") and n == max(len(job.tokens) // 2, 1):
                request.transport.close()
                return resp
        else:
            st.completed += 1
        await resp.write_eof()
        return resp
    except Reply as e:
        return oai_error(e.status, e.message or "")
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


async def v1_chat(request: web.Request) -> web.StreamResponse:
    return await v1_inference(request, "chat")


async def v1_completions(request: web.Request) -> web.StreamResponse:
    return await v1_inference(request, "generate")


async def v1_embeddings(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    raw = await request.read()
    inflight(st)
    lease = Lease(st)
    try:
        try:
            body = bind_body(raw, "openai.EmbedRequest", OAI_EMBED_FIELDS, eof_message="EOF")
        except Reply:
            record(st, request, raw.decode(errors="replace"))
            raise
        entry = record(st, request, body)
        fmt = body.get("encoding_format") or ""
        if fmt and fmt.lower() not in ("float", "base64"):
            raise Reply(400, f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].")
        inp = body.get("input")
        if inp == "":
            inp = [""]
        if inp is None or (isinstance(inp, list) and not inp):
            raise Reply(400, "invalid input")
        native: dict[str, Any] = {"model": body.get("model") or "", "input": inp}
        if body.get("dimensions"):
            native["dimensions"] = body["dimensions"]
        if "x_double" in body:
            native["x_double"] = body["x_double"]
        entry["native"] = native
        out = await run_embed(st, request, native, entry, lease)
        data = []
        for i, vec in enumerate(out["embeddings"]):
            e: Any = vec
            if fmt.lower() == "base64":
                e = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "embedding": e, "index": i})
        n = out.get("prompt_eval_count", 0)
        st.completed += 1
        return gin_json(200, {"object": "list", "data": data or None, "model": body.get("model") or "",
                              "usage": {"prompt_tokens": n, "total_tokens": n}}, ctype="application/json", newline=True)
    except Reply as e:
        return oai_error(e.status, e.message or "")
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    finally:
        lease.close()
        st.in_flight -= 1


async def v1_models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    data = [{"id": m.name.shortest, "object": "model", "created": m.modified_ns // 1_000_000_000,
             "owned_by": m.name.namespace} for m in sorted_models(st)]
    return gin_json(200, {"object": "list", "data": data or None}, ctype="application/json", newline=True)


async def v1_model(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    model = request.match_info["model"]
    name = parse_name(model)
    if not model or not name.valid():
        return oai_error(400, "invalid model name")
    info = st.lookup(name)
    if info is None:
        return oai_error(404, f"model '{name.shortest}' not found")
    return gin_json(200, {"id": model, "object": "model", "created": info.modified_ns // 1_000_000_000,
                          "owned_by": name.namespace}, ctype="application/json", newline=True)


# ---------------------------------------------------------------------------------------------------
# Host guard (allowedHostsMiddleware when bound to loopback), gin's 404/405, test hooks
# ---------------------------------------------------------------------------------------------------

_GO_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


@functools.lru_cache(maxsize=1)
def _local_ips() -> frozenset[str]:
    ips: set[str] = set()
    try:
        for *_rest, addr in socket.getaddrinfo(socket.gethostname(), None):
            ips.add(addr[0])
    except OSError:
        pass
    return frozenset(ips)


def host_allowed(host_header: str) -> bool:
    h = host_header
    m = re.fullmatch(r"\[([^\]]*)\]:(\d*)", h) or re.fullmatch(r"([^:\[\]]*):(\d*)", h)
    host = m.group(1) if m else h
    try:
        ip = ipaddress.ip_address(host)
        if ip.is_loopback or ip.is_unspecified or any(ip in n for n in _GO_PRIVATE if n.version == ip.version) \
                or str(ip) in _local_ips():
            return True
    except ValueError:
        pass
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return any(host.endswith("." + tld) for tld in ("localhost", "local", "internal"))


@web.middleware
async def gin_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    st: State = request.app["state"]
    if not request.path.startswith("/_"):
        if st.host_guard and not host_allowed(request.headers.get("Host", "")):
            return web.Response(status=403)
        if st.host_guard and request.method == "OPTIONS":
            return web.Response(status=204)
    exc = request.match_info.http_exception
    if exc is not None and exc.status == 404:
        return web.Response(status=404, body=b"404 page not found", headers={"Content-Type": "text/plain"})
    if exc is not None and exc.status == 405:
        return web.Response(status=405, body=b"405 method not allowed", headers={"Content-Type": "text/plain"})
    return await handler(request)


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return web.json_response(st.requests)
    if what == "stats":
        return web.json_response({"in_flight": st.in_flight, "max_in_flight": st.max_in_flight,
                                  "running": st.running, "waiting": st.waiting, "cancelled": st.cancelled,
                                  "completed": st.completed, "received": len(st.requests),
                                  "rejected": st.rejected, "loads": st.loads, "unloads": st.unloads,
                                  "resident": sorted(r.info.name.shortest for r in st.runners.values())})
    if what == "release":
        st.release.set()
        return web.json_response({"released": True})
    if what == "reset":
        st.requests.clear()
        st.release = asyncio.Event()
        st.max_in_flight = st.in_flight
        st.cancelled = st.completed = st.rejected = st.loads = st.unloads = 0
        return web.json_response({"reset": True})
    raise web.HTTPNotFound()


async def preload(app: web.Application) -> None:
    st: State = app["state"]
    for m in app["preload"]:
        info = st.lookup(parse_name(m))
        if info is None:
            raise SystemExit(f"--loaded {m}: not in --models/--embed-models")
        r = st.start_load(info, None, None, 0)
        await r.load_task
        r.expires_ns = now_ns() + r.session_ns
        if r.session_ns < (1 << 62):
            r.timer = asyncio.get_running_loop().call_later(r.session_ns / 1e9, st._timer_expired, r)


def make_app(a: argparse.Namespace) -> web.Application:
    app = web.Application(middlewares=[gin_middleware], client_max_size=64 * 1024 * 1024)
    app["state"] = State(a)
    app["preload"] = _split(a.loaded)
    app.on_startup.append(preload)
    r = app.router
    r.add_get("/", root)  # GET and HEAD
    r.add_get("/api/version", version)
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps, allow_head=False)
    r.add_post("/api/show", show)
    r.add_post("/api/chat", chat)
    r.add_post("/api/generate", generate)
    r.add_post("/api/embed", embed)
    r.add_post("/api/embeddings", embeddings_legacy)
    r.add_post("/v1/chat/completions", v1_chat)
    r.add_post("/v1/completions", v1_completions)
    r.add_post("/v1/embeddings", v1_embeddings)
    r.add_get("/v1/models", v1_models, allow_head=False)
    r.add_get("/v1/models/{model}", v1_model, allow_head=False)
    r.add_route("*", "/_{what}", hooks)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description="Ollama test double")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="ollama", help="appears in the default answer text")
    p.add_argument("--models", default="llama3.2", help="installed chat models, comma separated ('' = none)")
    p.add_argument("--embed-models", default="", help="installed embedding-only models")
    p.add_argument("--thinking-models", default="", help="models (of --models) with the thinking capability")
    p.add_argument("--vision-models", default="", help="models (of --models) with the vision capability")
    p.add_argument("--loaded", default="", help="models resident at start (as after a preload)")
    p.add_argument("--load-seconds", type=float, default=0.0, help="time a cold load takes")
    p.add_argument("--max-queue", type=int, default=512, help="OLLAMA_MAX_QUEUE")
    p.add_argument("--num-parallel", type=int, default=1, help="OLLAMA_NUM_PARALLEL (slots per model)")
    p.add_argument("--max-loaded", type=int, default=3, help="OLLAMA_MAX_LOADED_MODELS (0 = unlimited)")
    p.add_argument("--keep-alive", default="5m", help="OLLAMA_KEEP_ALIVE")
    p.add_argument("--context-length", type=int, default=4096, help="default num_ctx of a load")
    p.add_argument("--host-guard", action="store_true", help="reject non-local Host headers with 403")
    p.add_argument("--version", default="0.33.0")
    a = p.parse_args()
    web.run_app(make_app(a), host=a.host, port=a.port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
