"""A small real Hugging Face TGI server (text-generation-inference 3.3.x wire format) for the tests.

Run: python -m tests.doubles.tgi_server --port P --model-id ORG/NAME [--max-concurrent-requests N]
     [--max-input-tokens N] [--max-total-tokens N] [--api-key K] [--load-delay S] [--version V]
     [--docker-label L] [--token-delay S] [--legacy-sse]

Every detail below was read from TGI's source at db931fcf (2026-01-08, Cargo version 3.3.6-dev0,
the same router code as the v3.3.6/v3.3.7 images), mostly router/src/{server.rs, lib.rs, chat.rs,
validation.rs, infer/mod.rs}, and from the crates it locks: axum 0.7.9 (SSE framing, JSON
rejections), serde_json 1.0.140 (error texts and positions), serde_path_to_error (error paths),
metrics-exporter-prometheus 0.15.3 (/metrics text).

Behaviour that mirrors TGI:
* Nothing listens for --load-delay seconds (TGI binds only after shards are warm).
* Routes: POST / (compat: one-element array, or SSE with "stream": true), /generate,
  /generate_stream, /v1/chat/completions, /v1/completions, /invocations, /tokenize (API-key
  protected); GET / /health /ping, /info, /v1/models, /metrics and POST /chat_tokenize (public).
  With --api-key the protected routes need `Authorization: Bearer <key>` (compared
  case-insensitively, whole header) else 401 with an EMPTY body. Unknown route -> 404, wrong method
  -> 405, both empty (axum defaults). /vertex (Google feature) is not emulated.
* SSE: `data: <json>\n\n` -- axum 0.7 writes a space after `data:` (TGI >= 2.1; axum 0.6, used up
  to TGI 2.0.x, wrote none: --legacy-sse). OpenAI routes end with `data: [DONE]`, native routes do
  not. `:\n\n` keep-alive after 15 s without an event (axum KeepAlive::default()).
* Request bodies: `Content-Type: application/json` required (415), syntax errors -> 400 and type
  errors -> 422 with axum's text/plain bodies ("Failed to deserialize the JSON body into the target
  type: parameters.top_p: invalid type: string \"x\", expected f32 at line 1 column 37"); serde's
  line/column are reproduced for the common cases, unknown fields (like x_double) are ignored.
* The permit of --max-concurrent-requests is taken with try_acquire BEFORE validation: a request
  beyond the limit gets 429 {"error":"Model is overloaded","error_type":"overloaded"} (non-stream),
  or HTTP 200 and an in-band error (stream): /generate_stream (and POST / stream)
  `data: {"error":"Model is overloaded","error_type":"overloaded"}` then the end;
  chat/completions `data: {"error":{"message":"Model is overloaded","http_status_code":422}}` then
  `data: [DONE]`. Validation and generation errors behave the same way (422/424 non-stream,
  in-band on streams) -- only JSON rejections, completions' `suffix`/batch-size checks and chat
  tool errors fail before a stream starts.
* Validation as validation.rs: temperature <= 0, top_p/typical_p outside (0, 1) (1.0 is rejected),
  top_k <= 0, repetition_penalty <= 0, frequency_penalty outside [-2, 2], max_new_tokens == 0,
  more than 4 stop sequences, top_n_tokens > 5, best_of rules, empty inputs, truncate,
  `inputs` tokens + min(max_new_tokens, 1024) > max_total_tokens (TGI checks only the first
  1024-token chunk), inputs > max_input_tokens. Chat and completions map temperature 0 to greedy;
  chat maps presence_penalty p to repetition_penalty p + 2.
* Finish reasons: native `eos_token|length|stop_sequence`; chat and non-stream completions turn
  eos_token into "stop"; streamed /v1/completions keeps the raw name on its final chunk and sends
  finish_reason "" before it. The EOS token (id 2, "</s>", special) is the last generated token:
  chat deltas show it as content "", streamed completions show its text "</s>".
* /metrics: counters tgi_request_count (chat and completions count twice per request, as in TGI),
  tgi_request_success, tgi_request_failure{err=overloaded|validation|generation|incomplete|dropped};
  gauges tgi_queue_size, tgi_batch_current_size, tgi_batch_current_max_tokens (present once a request
  got that far, like TGI) and tgi_batch_max_total_tokens (from start). Histograms are omitted.

Simplifications (the double has no model):
* Tokens are whitespace-separated words: the prompt length of `inputs` / `prompt` is
  len(text.split()); chat prompts are templated as "<|role|>\\n<content>\\n" per message plus
  "<|assistant|>\\n" (so a message costs 1 + its words, plus 1), tools add the tool prompt and the
  tools' JSON. The answer is "Hello from tgi, this is a streamed answer" split per word (" from"
  keeps its leading space), then EOS; stop sequences are matched on the text as in TGI (and kept).
* Requests beyond 1024 new tokens are not re-queued in chunks; generation just stops at
  max_new_tokens (or max_total_tokens - input when omitted).
* Tool calls: with `tools` the "model" calls the first tool (or tool_choice's) with arguments
  sampled from its JSON schema; the stream goes through a port of chat.rs' ChatState.

Per-request behaviour comes from an extra body field (top level, or inside "parameters"):
"x_double": {"text": "...", "eos": false (no EOS; run to max_new_tokens), "delay": s per token,
"hold": true (wait for POST /_release before the first token, counted in tgi_queue_size),
"hold_after": N (wait after N tokens), "fail_after": N (TGI generation error after N tokens),
"message": "..." (its text), "incomplete": N (the backend stream ends after N tokens without an end:
TGI's "Incomplete generation"), "truncate": N (close the TCP connection after N tokens),
"tool": name / "no_tool", "arguments": {...}}.
Test hooks: GET /_requests (bodies received), GET /_stats, POST /_release (wake held requests),
POST /_control with an x_double object (default for every later request, for clients that cannot add
body fields; {} clears), POST /_unhealthy and /_healthy (health routes -> 503/200), POST /_reset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import time
import zlib
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiohttp import web

DEFAULT_GENERATION_LENGTH = 1024  # validation.rs: max_new_tokens are validated/scheduled in chunks of this
DEFAULT_TOOL_PROMPT = (
    "\nGiven the functions available, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt. Respond in the format {name: function "
    "name, parameters: dictionary of argument name and its value}.Do not use variables.\n"
)
DEFAULT_ANSWER = "Hello from tgi, this is a streamed answer"
DEFAULT_FAILURE = "Server error: CUDA out of memory. Tried to allocate 2.00 GiB"
KEEP_ALIVE = b":\n\n"
U32, U64 = 2**32 - 1, 2**64 - 1


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


# --------------------------------------------------------------------------------------------------
# JSON parsing with positions, so that body errors read like axum's Json rejection over serde_json.


class JsonSyntaxError(Exception):
    def __init__(self, msg: str, pos: int) -> None:
        super().__init__(msg)
        self.msg, self.pos = msg, pos


@dataclass
class Node:
    kind: str  # obj arr str int float bool null
    value: Any  # python value for scalars
    start: int  # index of the first byte
    end: int  # index after the last byte
    items: list = field(default_factory=list)  # obj: [(key, key_end, Node)]; arr: [Node]

    def py(self) -> Any:
        if self.kind == "obj":
            return {k: n.py() for k, _, n in self.items}
        if self.kind == "arr":
            return [n.py() for n in self.items]
        return self.value


_WS = b" \t\n\r"
_NUM = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.d, self.i = data, 0

    def ws(self) -> None:
        while self.i < len(self.d) and self.d[self.i] in _WS:
            self.i += 1

    def peek_err(self, msg: str) -> JsonSyntaxError:  # serde_json peek_error: column of the peeked byte
        return JsonSyntaxError(msg, min(len(self.d), self.i + 1))

    def document(self) -> Node:
        self.ws()
        node = self.value()
        self.ws()
        if self.i < len(self.d):
            raise self.peek_err("trailing characters")
        return node

    def value(self) -> Node:
        if self.i >= len(self.d):
            raise self.peek_err("EOF while parsing a value")
        c = self.d[self.i : self.i + 1]
        start = self.i
        if c == b"{":
            return self.obj()
        if c == b"[":
            return self.arr()
        if c == b'"':
            s = self.string()
            return Node("str", s, start, self.i)
        for lit, val in ((b"null", None), (b"true", True), (b"false", False)):
            if c == lit[:1]:
                if self.d[self.i : self.i + len(lit)] != lit:
                    raise self.peek_err("expected ident")
                self.i += len(lit)
                return Node("null" if val is None else "bool", val, start, self.i)
        m = _NUM.match(self.d, self.i)
        if m and (c == b"-" or c.isdigit()):
            self.i = m.end()
            text = m.group().decode()
            if m.group(1) or m.group(2):
                return Node("float", float(text), start, self.i)
            return Node("int", int(text), start, self.i)
        if c == b"-":
            self.i += 1
            raise self.peek_err("invalid number")
        raise self.peek_err("expected value")

    def string(self) -> str:
        j = self.i + 1
        while True:
            k = self.d.find(b'"', j)
            if k < 0:
                self.i = len(self.d)
                raise JsonSyntaxError("EOF while parsing a string", len(self.d))
            n = 0
            while self.d[k - 1 - n : k - n] == b"\\":
                n += 1
            if n % 2 == 0:
                break
            j = k + 1
        raw = self.d[self.i : k + 1]
        self.i = k + 1
        try:
            return json.loads(raw)
        except ValueError as e:
            raise JsonSyntaxError("invalid escape", self.i) from e

    def obj(self) -> Node:
        node = Node("obj", None, self.i, 0)
        self.i += 1
        self.ws()
        if self.d[self.i : self.i + 1] == b"}":
            self.i += 1
            node.end = self.i
            return node
        while True:
            self.ws()
            if self.i >= len(self.d):
                raise self.peek_err("EOF while parsing an object")
            if self.d[self.i : self.i + 1] != b'"':
                raise self.peek_err(
                    "trailing comma" if self.d[self.i : self.i + 1] == b"}" else "key must be a string"
                )
            key = self.string()
            key_end = self.i
            self.ws()
            if self.i >= len(self.d):
                raise self.peek_err("EOF while parsing an object")
            if self.d[self.i : self.i + 1] != b":":
                raise self.peek_err("expected `:`")
            self.i += 1
            self.ws()
            node.items.append((key, key_end, self.value()))
            self.ws()
            c = self.d[self.i : self.i + 1]
            if c == b",":
                self.i += 1
            elif c == b"}":
                self.i += 1
                node.end = self.i
                return node
            elif not c:
                raise self.peek_err("EOF while parsing an object")
            else:
                raise self.peek_err("expected `,` or `}`")

    def arr(self) -> Node:
        node = Node("arr", None, self.i, 0)
        self.i += 1
        self.ws()
        if self.d[self.i : self.i + 1] == b"]":
            self.i += 1
            node.end = self.i
            return node
        while True:
            self.ws()
            if self.d[self.i : self.i + 1] == b"]":
                raise self.peek_err("trailing comma")
            node.items.append(self.value())
            self.ws()
            c = self.d[self.i : self.i + 1]
            if c == b",":
                self.i += 1
            elif c == b"]":
                self.i += 1
                node.end = self.i
                return node
            elif not c:
                raise self.peek_err("EOF while parsing a list")
            else:
                raise self.peek_err("expected `,` or `]`")


def line_col(data: bytes, pos: int) -> tuple[int, int]:
    """serde_json position_of_index: 1-based line, column = bytes since the line start."""
    start = data.rfind(b"\n", 0, pos) + 1
    return data.count(b"\n", 0, start) + 1, pos - start


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


GRAMMAR = tagged(
    "GrammarType",
    "type",
    {
        "json": "any",
        "json_object": "any",
        "regex": "str",
        "json_schema": (
            "struct",
            "JsonSchemaConfig",
            {"name": (("opt", "str"), False), "schema": ("any", True)},
        ),
    },
    content="value",
)
GENERATE_PARAMETERS = (
    "struct",
    "GenerateParameters",
    {
        "best_of": (("opt", "usize"), False),
        "temperature": (("opt", "f32"), False),
        "repetition_penalty": (("opt", "f32"), False),
        "frequency_penalty": (("opt", "f32"), False),
        "top_k": (("opt", "i32"), False),
        "top_p": (("opt", "f32"), False),
        "typical_p": (("opt", "f32"), False),
        "do_sample": ("bool", False),
        "max_new_tokens": (("opt", "u32"), False),
        "return_full_text": (("opt", "bool"), False),
        "stop": (("vec", "str"), False),
        "truncate": (("opt", "usize"), False),
        "watermark": ("bool", False),
        "details": ("bool", False),
        "decoder_input_details": ("bool", False),
        "seed": (("opt", "u64"), False),
        "top_n_tokens": (("opt", "u32"), False),
        "grammar": (("opt", GRAMMAR), False),
        "adapter_id": (("opt", "str"), False),
    },
)
GENERATE_REQUEST = (
    "struct",
    "GenerateRequest",
    {"inputs": ("str", True), "parameters": (GENERATE_PARAMETERS, False)},
)
COMPAT_REQUEST = (
    "struct",
    "CompatGenerateRequest",
    {"inputs": ("str", True), "parameters": (GENERATE_PARAMETERS, False), "stream": ("bool", False)},
)
FUNCTION_DEFINITION = (
    "struct",
    "FunctionDefinition",
    {"description": (("opt", "str"), False), "name": ("str", True), "arguments": ("any", True)},
    {"parameters": "arguments"},
)
TOOL = ("struct", "Tool", {"type": ("str", True), "function": (FUNCTION_DEFINITION, True)})
TOOL_CALL = (
    "struct",
    "ToolCall",
    {"id": ("str", True), "type": ("str", True), "function": (FUNCTION_DEFINITION, True)},
)
MESSAGE_CHUNK = tagged(
    "MessageChunk",
    "type",
    {
        "text": ("struct", "Text", {"text": ("str", True)}),
        "image_url": ("struct", "ImageUrl", {"image_url": (("struct", "Url", {"url": ("str", True)}), True)}),
    },
)


def message_spec(n: Node, path: str) -> dict:
    # Message { role, #[serde(flatten)] body: untagged MessageBody { content | tool_calls }, name }
    # flatten buffers the whole object: serde reports any error after it, without a deeper path
    try:
        m = check_struct(n, "Message", {"role": ("str", True), "name": (("opt", "str"), False)}, path, {})
    except DeError as e:
        raise DeError(path, e.msg, n.end) from None
    items = {k: v for k, _, v in n.items}
    for key, spec in (
        ("content", ("untagged", "MessageContent", ["str", ("vec", MESSAGE_CHUNK)])),
        ("tool_calls", ("vec", TOOL_CALL)),
    ):
        if key in items:
            try:
                m[key] = check(items[key], spec, path)
                return m
            except DeError:
                pass
    raise DeError(path, "data did not match any variant of untagged enum MessageBody", n.end)


def tool_choice_spec(n: Node, path: str) -> Any:
    if n.kind == "null":
        return "auto"
    if n.kind == "str":
        return n.value
    try:
        v = check(
            n,
            tagged(
                "TypedChoice",
                "type",
                {
                    "function": (
                        "struct",
                        "Function",
                        {"function": (("struct", "FunctionName", {"name": ("str", True)}), True)},
                    )
                },
            ),
            path,
        )
        return {"function": v["function"]["name"]}
    except DeError:
        raise DeError(
            path, "data did not match any variant of untagged enum ToolTypeDeserializer", n.end
        ) from None


CHAT_REQUEST = (
    "struct",
    "ChatRequest",
    {
        "model": (("opt", "str"), False),
        "messages": (("vec", message_spec), True),
        "frequency_penalty": (("opt", "f32"), False),
        "logit_bias": (("opt", ("vec", "f32")), False),
        "logprobs": (("opt", "bool"), False),
        "top_logprobs": (("opt", "u32"), False),
        "max_tokens": (("opt", "u32"), False),
        "n": (("opt", "u32"), False),
        "presence_penalty": (("opt", "f32"), False),
        "stop": (("opt", ("vec", "str")), False),
        "stream": ("bool", False),
        "seed": (("opt", "u64"), False),
        "temperature": (("opt", "f32"), False),
        "top_p": (("opt", "f32"), False),
        "tools": (("opt", ("vec", TOOL)), False),
        "tool_prompt": (("opt", "str"), False),
        "tool_choice": (tool_choice_spec, False),
        "response_format": (("opt", GRAMMAR), False),
        "stream_options": (("struct", "StreamOptions", {"include_usage": ("bool", False)}), False),
    },
    {"max_completion_tokens": "max_tokens"},
)
COMPLETION_REQUEST = (
    "struct",
    "CompletionRequest",
    {
        "model": (("opt", "str"), False),
        "prompt": (prompt_spec, True),
        "max_tokens": (("opt", "u32"), False),
        "temperature": (("opt", "f32"), False),
        "top_p": (("opt", "f32"), False),
        "stream": ("bool", False),
        "seed": (("opt", "u64"), False),
        "suffix": (("opt", "str"), False),
        "repetition_penalty": (("opt", "f32"), False),
        "frequency_penalty": (("opt", "f32"), False),
        "stop": (("opt", ("vec", "str")), False),
    },
)


class Rejection(Exception):
    """An axum extractor rejection: plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=self.text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}
        )


def parse_body(st: "State", request: web.Request, raw: bytes, spec: Any) -> tuple[dict, Node]:
    ctype = request.headers.get("Content-Type", "")
    mime = ctype.split(";")[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise Rejection(415, "Expected request with `Content-Type: application/json`")
    if len(raw) > st.payload_limit:
        raise Rejection(413, "Failed to buffer the request body: length limit exceeded")
    try:
        node = _Parser(raw).document()
    except JsonSyntaxError as e:
        line, col = line_col(raw, e.pos)
        raise Rejection(
            400, f"Failed to parse the request body as JSON: {e.msg} at line {line} column {col}"
        ) from None
    try:
        value = check(node, spec)
    except DeError as e:
        line, col = line_col(raw, e.pos)
        prefix = f"{e.path}: " if e.path else ""
        raise Rejection(
            422,
            f"Failed to deserialize the JSON body into the target type: {prefix}{e.msg} at line "
            f"{line} column {col}",
        ) from None
    return value, node


# --------------------------------------------------------------------------------------------------
# Errors (router/src/infer/mod.rs InferError, server.rs From<InferError>)

STATUS = {
    "generation": 424,
    "overloaded": 429,
    "validation": 422,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "template_error": 422,
    "missing_template_variable": 422,
    "tool_error": 422,
    "stream_serialization_error": 500,
}
PREFIX = {
    "generation": "Request failed during generation: ",
    "validation": "Input validation error: ",
    "template_error": "Template error: ",
    "tool_error": "Tool error: ",
}


class InferError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        if kind == "overloaded":
            self.message = "Model is overloaded"
        elif kind == "incomplete_generation":
            self.message = "Incomplete generation"
        elif kind == "incomplete_generation_stream":
            self.message = "Incomplete generation stream"
        else:
            self.message = PREFIX.get(kind, "") + detail
        super().__init__(self.message)

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.kind}

    def response(self) -> web.Response:
        return json_response(self.body(), status=STATUS[self.kind])

    def openai_event(self) -> dict:  # into_openai_event: the status is hard-coded
        return {"error": {"message": self.message, "http_status_code": 422}}


def validation_error(detail: str) -> InferError:
    return InferError("validation", detail)


def json_response(doc: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status, body=dumps(doc), headers={"Content-Type": "application/json", **(headers or {})}
    )


# --------------------------------------------------------------------------------------------------
# State, metrics


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.model_id: str = a.model_id
        self.max_concurrent = a.max_concurrent_requests
        self.max_best_of = a.max_best_of
        self.max_stop_sequences = a.max_stop_sequences
        self.max_top_n_tokens = a.max_top_n_tokens
        self.max_input_tokens = a.max_input_tokens
        self.max_total_tokens = a.max_total_tokens
        self.max_client_batch_size = a.max_client_batch_size
        self.max_batch_total_tokens = a.max_batch_total_tokens
        self.payload_limit = a.payload_limit
        self.api_key = a.api_key
        self.version = a.version
        self.docker_label = None if a.docker_label in (None, "", "native") else a.docker_label
        self.sha = a.sha
        self.model_sha = a.model_sha
        self.pipeline_tag = a.pipeline_tag or None
        self.compute_type = a.compute_type
        self.token_delay = a.token_delay
        self.keep_alive = a.keep_alive
        self.legacy_sse = a.legacy_sse
        self.fingerprint = f"{self.version}-{self.docker_label or 'native'}"
        self.healthy = True
        self.default_ctl: dict = {}
        self.release = asyncio.Event()
        self.requests: list[dict] = []
        self.permits = 0
        self.max_in_flight = 0
        self.queued = 0
        self.batch = 0
        self.batch_tokens = 0
        self.held = 0
        self.completed = 0
        self.cancelled = 0
        self.overloaded = 0
        self.counters: dict[tuple[str, tuple], int] = {}
        self.gauges: dict[str, float] = {"tgi_batch_max_total_tokens": float(self.max_batch_total_tokens)}

    def count(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + 1

    def fail(self, err: str) -> None:
        self.count("tgi_request_failure", err=err)

    def sync_gauges(self) -> None:
        self.gauges["tgi_queue_size"] = float(self.queued)
        self.gauges["tgi_batch_current_size"] = float(self.batch)
        self.gauges["tgi_batch_current_max_tokens"] = float(self.batch_tokens)

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "model_sha": self.model_sha,
            "model_pipeline_tag": self.pipeline_tag,
            "max_concurrent_requests": self.max_concurrent,
            "max_best_of": self.max_best_of,
            "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": self.max_client_batch_size,
            "router": "text-generation-router",
            "version": self.version,
            "sha": self.sha,
            "docker_label": self.docker_label,
        }


HELP = {
    "tgi_request_count": "Total number of requests",
    "tgi_request_success": "Number of successful requests",
    "tgi_queue_size": "Current queue size",
    "tgi_batch_current_size": "Current batch size",
    "tgi_batch_current_max_tokens": "Maximum tokens for the current batch",
}


def render_metrics(st: State) -> str:
    """metrics-exporter-prometheus 0.15 render(): counters, then gauges; HELP only for described names
    (TGI describes "tgi_batch_total_tokens", not the tgi_batch_max_total_tokens it sets)."""
    out: list[str] = []
    by_name: dict[str, list[tuple[tuple, int]]] = {}
    for (name, labels), v in st.counters.items():
        by_name.setdefault(name, []).append((labels, v))
    for name, rows in by_name.items():
        if name in HELP:
            out.append(f"# HELP {name} {HELP[name]}")
        out.append(f"# TYPE {name} counter")
        for labels, v in rows:
            lab = "{" + ",".join(f'{k}="{val}"' for k, val in labels) + "}" if labels else ""
            out.append(f"{name}{lab} {v}")
        out.append("")
    for name, v in st.gauges.items():
        if name in HELP:
            out.append(f"# HELP {name} {HELP[name]}")
        out.append(f"# TYPE {name} gauge")
        out.append(f"{name} {int(v) if float(v).is_integer() else v}")  # Rust f64 Display: 3.0 -> "3"
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


# --------------------------------------------------------------------------------------------------
# The "model": tokens, stopping criteria, generation


@dataclass
class Tok:
    id: int
    text: str
    logprob: float
    special: bool = False

    def doc(self) -> dict:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


EOS = Tok(2, "</s>", -0.0625, True)
_LOGPROBS = (-0.125, -0.5, -0.25, -1.0, -0.375)


def word_tokens(text: str) -> list[str]:
    """Split an answer into tokens: words, every one after the first keeps its leading space."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


def tok_id(text: str) -> int:
    return 1000 + zlib.crc32(text.encode()) % 30000


def prompt_length(text: str) -> int:
    return len(text.split())


@dataclass
class GenReq:
    """A validated-to-be GenerateRequest: inputs + GenerateParameters (lib.rs)."""

    inputs: str
    params: dict
    ctl: dict


@dataclass
class Plan:
    tokens: list[tuple[Tok, list[Tok]]]
    finish_reason: str
    text: str
    seed: int | None
    input_length: int
    max_new_tokens: int


def make_plan(st: State, req: GenReq, input_length: int, max_total_new: int, seed: int | None) -> Plan:
    ctl = req.ctl
    p = req.params
    words = (
        word_tokens(str(ctl.get("text", DEFAULT_ANSWER)))
        if ctl.get("tool_text") is None
        else word_tokens(ctl["tool_text"])
    )
    eos = bool(ctl.get("eos", True))
    stops: list[str] = p.get("stop") or []
    n_top = p.get("top_n_tokens") or 0
    out: list[tuple[Tok, list[Tok]]] = []
    acc = ""
    reason = "length"
    i = 0
    while True:
        if i < len(words):
            w = words[i]
            tok = Tok(tok_id(w), w, _LOGPROBS[i % len(_LOGPROBS)])
        elif eos:
            tok = EOS
        else:
            w = words[i % len(words)]
            tok = Tok(tok_id(w), w, _LOGPROBS[i % len(_LOGPROBS)])
        top = (
            [tok] + [Tok(50000 + k, f" alt{k}", tok.logprob - 1 - k) for k in range(n_top - 1)]
            if n_top
            else []
        )
        out.append((tok, top))
        i += 1
        # server/text_generation_server/utils/tokens.py StoppingCriteria:
        # length, then EOS, then stop sequences
        if i >= max_total_new:
            reason = "length"
            break
        if tok is EOS:
            reason = "eos_token"
            break
        if stops:
            acc += tok.text
            if any(acc.endswith(s) for s in stops):
                reason = "stop_sequence"
                break
    text = "".join(t.text for t, _ in out if not t.special)  # decoded with skip_special_tokens=True
    return Plan(out, reason, text, seed, input_length, max_total_new)


def validate(st: State, req: GenReq) -> tuple[int, int, int | None, bool]:
    """validation.rs Validation::validate, in its order.

    Returns (input_length, max_total_new_tokens, seed, sampling)."""
    p = req.params
    best_of = 1 if p.get("best_of") is None else p["best_of"]
    sampling = bool(p.get("do_sample")) or any(
        p.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p")
    )
    if best_of > 1 and not sampling:
        raise validation_error("you must use sampling when `best_of` is > 1")
    temperature = 1.0 if p.get("temperature") is None else p["temperature"]
    if temperature <= 0.0:
        raise validation_error("`temperature` must be strictly positive")
    rep = 1.0 if p.get("repetition_penalty") is None else p["repetition_penalty"]
    if rep <= 0.0:
        raise validation_error("`repetition_penalty` must be strictly positive")
    freq = 0.0 if p.get("frequency_penalty") is None else p["frequency_penalty"]
    if not -2.0 <= freq <= 2.0:
        raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
    top_p = p.get("top_p")
    if top_p is not None and (top_p <= 0.0 or top_p >= 1.0):
        raise validation_error("`top_p` must be > 0.0 and < 1.0")
    typical_p = p.get("typical_p")
    if typical_p is not None and (typical_p <= 0.0 or typical_p >= 1.0):
        raise validation_error("`typical_p` must be > 0.0 and < 1.0")
    top_k = p.get("top_k")
    if top_k is not None and top_k <= 0:
        raise validation_error("`top_k` must be strictly positive")
    if p.get("max_new_tokens") == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    stops = p.get("stop") or []
    if len(stops) > st.max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {st.max_stop_sequences} stop sequences. Given: {len(stops)}"
        )
    seed = p.get("seed")
    if seed is None:
        seed = random.getrandbits(64)
    elif best_of > 1:
        raise validation_error("`seed` must not be set when `best_of` > 1")
    top_n = p.get("top_n_tokens")
    if top_n is not None and top_n > st.max_top_n_tokens:
        raise validation_error(f"`top_n_tokens` must be >= 0 and <= {st.max_top_n_tokens}. Given: {top_n}")
    if req.inputs == "":
        raise validation_error("`inputs` cannot be empty")
    truncate = p.get("truncate")
    if truncate is not None and (truncate == 0 or truncate > st.max_input_tokens):
        raise validation_error(
            f"`truncate` must be strictly positive and less than {st.max_input_tokens}. " f"Given: {truncate}"
        )
    n_in = prompt_length(req.inputs)
    input_length = min(n_in, truncate) if truncate is not None else n_in
    mnt = p.get("max_new_tokens")
    if mnt is not None:
        max_new, max_total_new = min(mnt, DEFAULT_GENERATION_LENGTH), mnt
    else:
        max_total_new = max(st.max_total_tokens - input_length, 0)
        max_new = min(max_total_new, DEFAULT_GENERATION_LENGTH)
    if input_length + max_new > st.max_total_tokens:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {st.max_total_tokens}. Given: "
            f"{input_length} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    if input_length > st.max_input_tokens:
        raise validation_error(
            f"`inputs` must have less than {st.max_input_tokens} tokens. Given: {input_length}"
        )
    # python NextTokenChooser: sampling when do_sample or any warper differs from its neutral value
    do_sample = (
        bool(p.get("do_sample"))
        or temperature != 1.0
        or bool(top_k)
        or (top_p is not None and top_p < 1)
        or (typical_p is not None and typical_p < 1)
    )
    return input_length, max_total_new, seed, do_sample


class Generation:
    """One scheduled request: holds a permit of the semaphore from start() to finish()."""

    def __init__(self, st: State, req: GenReq) -> None:
        self.st, self.req, self.ctl = st, req, req.ctl
        self.finished = False
        self.ended = False
        self.in_batch = False
        self.in_queue = False
        self.plan: Plan | None = None

    def start(self) -> "Generation":
        st = self.st
        if st.permits >= st.max_concurrent:  # Semaphore::try_acquire_owned
            st.fail("overloaded")
            st.overloaded += 1
            raise InferError("overloaded")
        st.permits += 1
        st.max_in_flight = max(st.max_in_flight, st.permits)
        try:
            input_length, max_total_new, seed, sampling = validate(st, self.req)
        except InferError:
            st.fail("validation")
            self.finish()
            raise
        self.plan = make_plan(st, self.req, input_length, max_total_new, seed if sampling else None)
        st.queued += 1
        self.in_queue = True
        st.sync_gauges()
        return self

    async def tokens(self) -> AsyncIterator[tuple[int, Tok, list[Tok], bool]]:
        """Yields (i, token, top_tokens, is_end). Raises InferError("generation") on injected failure;
        returns without an end token on injected incompleteness."""
        st, ctl, plan = self.st, self.ctl, self.plan
        assert plan is not None
        if ctl.get("hold"):
            st.held += 1
            try:
                await st.release.wait()
            finally:
                st.held -= 1
        self.in_queue = False
        st.queued -= 1
        self.in_batch = True
        st.batch += 1
        st.batch_tokens += plan.input_length + plan.max_new_tokens
        st.sync_gauges()
        delay = float(ctl.get("delay", st.token_delay) or 0)
        for i, (tok, top) in enumerate(plan.tokens):
            if ctl.get("fail_after") is not None and i >= int(ctl["fail_after"]):
                st.fail("generation")
                raise InferError("generation", str(ctl.get("message", DEFAULT_FAILURE)))
            if ctl.get("incomplete") is not None and i >= int(ctl["incomplete"]):
                return
            if delay:
                await asyncio.sleep(delay)
            last = i == len(plan.tokens) - 1
            if last:
                self.ended = True
                st.count("tgi_request_success")
            yield i, tok, top, last
            if ctl.get("hold_after") is not None and i + 1 == int(ctl["hold_after"]) and not last:
                st.held += 1
                try:
                    await st.release.wait()
                finally:
                    st.held -= 1

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        st = self.st
        st.permits -= 1
        if self.in_queue:
            st.queued -= 1
        if self.in_batch:
            st.batch -= 1
            st.batch_tokens -= self.plan.input_length + self.plan.max_new_tokens if self.plan else 0
        if self.plan is not None:
            st.sync_gauges()
        if self.ended:
            st.completed += 1


def details_doc(
    plan: Plan,
    toks: list[Tok],
    tops: list[list[Tok]],
    prefill: list,
    use_top: bool,
    best_of_sequences: list | None = None,
) -> dict:
    d: dict[str, Any] = {
        "finish_reason": plan.finish_reason,
        "generated_tokens": len(toks),
        "seed": plan.seed,
        "prefill": prefill,
        "tokens": [t.doc() for t in toks],
    }
    if best_of_sequences is not None:
        d["best_of_sequences"] = best_of_sequences
    if use_top and any(tops):
        d["top_tokens"] = [[t.doc() for t in top] for top in tops]
    return d


def prefill_doc(inputs: str) -> list[dict]:
    words = inputs.split()
    return [
        {"id": tok_id(w), "text": w if i == 0 else " " + w, "logprob": float("nan") if i == 0 else -2.5}
        for i, w in enumerate(words)
    ]


@dataclass
class InferResponse:
    plan: Plan
    toks: list[Tok]
    tops: list[list[Tok]]
    text: str
    queued: float
    start: float


async def infer_generate(st: State, req: GenReq) -> InferResponse:
    """infer/mod.rs Infer::generate: run a generation to its end or raise."""
    t0 = time.monotonic()
    g = Generation(st, req).start()
    try:
        toks, tops = [], []
        started = time.monotonic()
        ended = False
        async with aclosing(g.tokens()) as tokens:
            async for _, tok, top, last in tokens:
                toks.append(tok)
                tops.append(top)
                ended = last
        if not ended:
            st.fail("incomplete")
            raise InferError("incomplete_generation")
        assert g.plan is not None
        return InferResponse(g.plan, toks, tops, g.plan.text, t0, started)
    except asyncio.CancelledError:
        st.fail("dropped")
        st.cancelled += 1
        raise
    finally:
        g.finish()


async def generate_internal(st: State, req: GenReq) -> tuple[dict, int, dict]:
    """server.rs generate_internal: (headers, input_length, GenerateResponse)."""
    start = time.monotonic()
    st.count("tgi_request_count")
    p = req.params
    add_prompt = req.inputs if p.get("return_full_text") else None
    want_details = bool(p.get("details")) or bool(p.get("decoder_input_details"))
    best_of = p.get("best_of")
    others: list[InferResponse] = []
    if best_of is not None and best_of > 1:
        if st.max_best_of == 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")
        if best_of > st.max_best_of:
            raise validation_error(f"`best_of` must be > 0 and <= {st.max_best_of}. Given: {best_of}")
        results = await asyncio.gather(
            *(infer_generate(st, req) for _ in range(best_of)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        resp, others = results[0], list(results[1:])
    else:
        resp = await infer_generate(st, req)
    prefill = prefill_doc(req.inputs) if p.get("decoder_input_details") else []
    use_top = bool(p.get("top_n_tokens"))
    details = None
    if want_details:
        bos = None
        if others:
            bos = []
            for o in others:
                text = (add_prompt or "") + o.text
                seq = {
                    "generated_text": text,
                    "finish_reason": o.plan.finish_reason,
                    "generated_tokens": len(o.toks),
                    "seed": o.plan.seed,
                    "prefill": prefill,
                    "tokens": [t.doc() for t in o.toks],
                }
                if use_top and any(o.tops):
                    seq["top_tokens"] = [[t.doc() for t in top] for top in o.tops]
                bos.append(seq)
        details = details_doc(resp.plan, resp.toks, resp.tops, prefill, use_top, bos)
    now = time.monotonic()
    total, validation_t = now - start, resp.queued - start
    queue_t, inference_t = resp.start - resp.queued, now - resp.start
    n = len(resp.toks)
    headers = {
        "x-compute-type": st.compute_type,
        "x-compute-time": f"{total:.9f}".rstrip("0").rstrip("."),
        "x-compute-characters": str(len(req.inputs)),
        "x-total-time": str(int(total * 1000)),
        "x-validation-time": str(int(validation_t * 1000)),
        "x-queue-time": str(int(queue_t * 1000)),
        "x-inference-time": str(int(inference_t * 1000)),
        "x-time-per-token": str(int(inference_t * 1000 / n)),
        "x-prompt-tokens": str(resp.plan.input_length),
        "x-generated-tokens": str(n),
    }
    text = (add_prompt or "") + resp.text
    doc: dict[str, Any] = {"generated_text": text}
    if details is not None:
        doc["details"] = details
    return headers, resp.plan.input_length, doc


async def stream_internal(st: State, req: GenReq) -> AsyncIterator[dict | InferError]:
    """server.rs generate_stream_internal: StreamResponse dicts (with the Tok objects under "_tok") or
    InferErrors, in order; the permit is released when this generator closes."""
    st.count("tgi_request_count")
    p = req.params
    add_prompt = req.inputs if p.get("return_full_text") else None
    if p.get("best_of") is not None and p["best_of"] != 1:
        st.fail("validation")
        yield validation_error("`best_of` != 1 is not supported when streaming tokens")
        return
    if p.get("decoder_input_details"):
        st.fail("validation")
        yield validation_error("`decoder_input_details` == true is not supported when streaming tokens")
        return
    try:
        g = Generation(st, req).start()
    except InferError as e:
        yield e
        return
    end_reached = error = False
    tokens = g.tokens()
    try:
        index = 0
        async for _, tok, top, last in tokens:
            index += 1
            ev: dict[str, Any] = {"index": index, "token": tok.doc()}
            if top:
                ev["top_tokens"] = [t.doc() for t in top]
            ev["generated_text"] = None
            ev["details"] = None
            ev["_tok"], ev["_top"] = tok, top
            if last:
                assert g.plan is not None
                end_reached = True
                ev["generated_text"] = (add_prompt or "") + g.plan.text
                if p.get("details"):
                    ev["details"] = {
                        "finish_reason": g.plan.finish_reason,
                        "generated_tokens": index,
                        "seed": g.plan.seed,
                        "input_length": g.plan.input_length,
                    }
                ev["_plan"] = g.plan
                yield ev
                break
            yield ev
    except InferError as e:
        error = True
        yield e
    except (asyncio.CancelledError, GeneratorExit):
        if not end_reached:
            st.fail("dropped")
            st.cancelled += 1
        raise
    finally:
        await tokens.aclose()
        g.finish()
    if not end_reached and not error:
        st.fail("incomplete")
        yield InferError("incomplete_generation_stream")


def public(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------------
# SSE (axum 0.7 Sse + KeepAlive::default())


class Sse:
    def __init__(self, request: web.Request, st: State, headers: dict[str, str]) -> None:
        self.request, self.st = request, st
        self.resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        self.last = time.monotonic()
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Sse":
        await self.resp.prepare(self.request)
        if self.st.keep_alive > 0:
            self.task = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task:
            self.task.cancel()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(max(self.last + self.st.keep_alive - time.monotonic(), 0.01))
            if time.monotonic() - self.last >= self.st.keep_alive:
                await self._write(KEEP_ALIVE)

    async def _write(self, data: bytes) -> None:
        async with self.lock:
            self.last = time.monotonic()
            await self.resp.write(data)

    async def json(self, obj: Any) -> None:  # Event::default().json_data(obj)
        sep = b"data:" if self.st.legacy_sse else b"data: "
        await self._write(sep + dumps(obj) + b"\n\n")

    async def data(self, text: str) -> None:  # Event::default().data(text)
        sep = b"data:" if self.st.legacy_sse and not text.startswith(" ") else b"data: "
        await self._write(sep + text.encode() + b"\n\n")

    def kill(self) -> None:
        if self.request.transport is not None:
            self.request.transport.close()


# --------------------------------------------------------------------------------------------------
# Request bodies -> GenReq


def control(st: State, node: Node) -> dict:
    raw = node.py() if node.kind == "obj" else {}
    ctl = raw.get("x_double")
    if not isinstance(ctl, dict):
        params = raw.get("parameters")
        ctl = params.get("x_double") if isinstance(params, dict) else None
    return {**st.default_ctl, **(ctl if isinstance(ctl, dict) else {})}


def generate_params(body: dict) -> dict:
    if "parameters" in body:
        return dict(body["parameters"])
    return {"do_sample": True}  # lib.rs default_parameters(): do_sample true when "parameters" is absent


def record(st: State, request: web.Request, node: Node) -> None:
    st.requests.append(
        {"path": request.path, "body": node.py(), "authorization": request.headers.get("Authorization")}
    )


# --------------------------------------------------------------------------------------------------
# Native routes


async def read_json(request: web.Request, spec: Any) -> tuple[dict, Node]:
    st: State = request.app["state"]
    raw = await request.read()
    body, node = parse_body(st, request, raw, spec)
    record(st, request, node)
    return body, node


async def generate_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, GENERATE_REQUEST)
    req = GenReq(body["inputs"], generate_params(body), control(st, node))
    try:
        headers, _, doc = await generate_internal(st, req)
    except InferError as e:
        return e.response()
    return json_response(doc, headers=headers)


async def compat_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, COMPAT_REQUEST)
    params = generate_params(body)
    if (
        params.get("return_full_text") is None
    ):  # compat_return_full_text: pipeline tag absent or text-generation
        params["return_full_text"] = st.pipeline_tag in (None, "text-generation")
    req = GenReq(body["inputs"], params, control(st, node))
    if body.get("stream"):
        return await native_stream(request, st, req)
    try:
        headers, _, doc = await generate_internal(st, req)
    except InferError as e:
        return e.response()
    return json_response([doc], headers=headers)


async def generate_stream_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, GENERATE_REQUEST)
    return await native_stream(request, st, GenReq(body["inputs"], generate_params(body), control(st, node)))


def stream_headers(st: State, req: GenReq) -> dict[str, str]:
    return {
        "x-compute-type": st.compute_type,
        "x-compute-characters": str(len(req.inputs)),
        "x-accel-buffering": "no",
    }


async def native_stream(request: web.Request, st: State, req: GenReq) -> web.StreamResponse:
    async with Sse(request, st, stream_headers(st, req)) as sse:
        async with aclosing(stream_internal(st, req)) as events:
            async for ev in events:
                if isinstance(ev, InferError):
                    await sse.json(ev.body())  # From<InferError> for Event
                    continue
                await sse.json(public(ev))
                if truncated(req, ev):
                    sse.kill()
                    break
    return sse.resp


def truncated(req: GenReq, ev: dict) -> bool:
    t = req.ctl.get("truncate")
    return t is not None and t is not False and ev["index"] >= (1 if t is True else int(t))


async def tokenize_route(request: web.Request) -> web.StreamResponse:
    body, _ = await read_json(request, GENERATE_REQUEST)
    return json_response(simple_tokens(body["inputs"]))


def simple_tokens(text: str) -> list[dict]:
    return [
        {"id": tok_id(m.group()), "text": m.group(), "start": m.start(), "stop": m.end()}
        for m in re.finditer(r"\S+", text)
    ]


# --------------------------------------------------------------------------------------------------
# Messages API


def message_text(m: dict) -> str:
    if "tool_calls" in m:
        return json.dumps(m["tool_calls"], separators=(",", ":"))
    c = m.get("content")
    if isinstance(c, str):
        return c
    return "".join(ch["text"] if ch["type"] == "text" else f"![]({ch['image_url']['url']})" for ch in c or [])


def apply_template(messages: list[dict], tools: list | None, tool_prompt: str | None) -> str:
    text = "".join(f"<|{m['role']}|>\n{message_text(m)}\n" for m in messages)
    if tools:
        text += f"{tool_prompt}\n{json.dumps(tools, separators=(',', ':'))}\n"
    return text + "<|assistant|>\n"


def sample_arguments(tool: dict) -> dict:
    schema = tool["function"]["arguments"]
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    samples = {"string": "Paris", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    return {k: samples.get(v.get("type") if isinstance(v, dict) else None, "x") for k, v in props.items()}


def try_into_generate(chat: dict, ctl: dict) -> tuple[GenReq, bool]:
    """lib.rs ChatRequest::try_into_generate."""
    temperature = chat.get("temperature")
    do_sample = True
    if temperature == 0.0:  # "enable greedy only when temperature is 0"
        do_sample, temperature = False, None
    tools, fmt = chat.get("tools"), chat.get("response_format")
    if fmt is not None and tools is not None:
        raise InferError("tool_error", "Grammar and tools are mutually exclusive")
    tool_prompt = chat.get("tool_prompt") or DEFAULT_TOOL_PROMPT
    using_tools = False
    ctl = dict(ctl)
    ctl.pop("tool_text", None)
    used_tools = None
    if fmt is None and tools is not None:
        choice = chat.get("tool_choice", "auto")
        if isinstance(choice, dict):
            found = [t for t in tools if t["function"]["name"] == choice["function"]]
            if not found:
                raise InferError("tool_error", f"Tool with name {choice['function']} not found")
            used_tools = found
        elif choice == "none":
            used_tools = []
        elif choice in ("auto", "required"):
            used_tools = list(tools)
        else:  # a bare string names a function
            found = [t for t in tools if t["function"]["name"] == choice]
            if not found:
                raise InferError("tool_error", f"Tool with name {choice} not found")
            used_tools = found
        if used_tools:
            using_tools = True
            name = ctl.get("tool") or used_tools[0]["function"]["name"]
            chosen = next((t for t in used_tools if t["function"]["name"] == name), used_tools[0])
            args = ctl.get("arguments")
            if not isinstance(args, dict):
                args = {} if name == "no_tool" else sample_arguments(chosen)
            ctl["tool_text"] = json.dumps({"function": {"_name": name, **args}})
    inputs = apply_template(chat["messages"], used_tools if using_tools else None, tool_prompt)
    pp = chat.get("presence_penalty")
    params = {
        "temperature": temperature,
        "repetition_penalty": None if pp is None else pp + 2.0,
        "frequency_penalty": chat.get("frequency_penalty"),
        "top_p": chat.get("top_p"),
        "do_sample": do_sample,
        "max_new_tokens": chat.get("max_tokens"),
        "stop": chat.get("stop") or [],
        "details": True,
        "decoder_input_details": False,
        "seed": chat.get("seed"),
        "top_n_tokens": chat.get("top_logprobs"),
        "adapter_id": None if chat.get("model") in (None, "tgi") else chat["model"],
    }
    return GenReq(inputs, params, ctl), using_tools


def parse_call(text: str) -> tuple[str, dict] | None:
    """chat.rs `Call { function: ToolCall { _name, #[serde(flatten)] arguments } }`."""
    try:
        v = json.loads(text)
    except ValueError:
        return None
    if not isinstance(v, dict) or not isinstance(v.get("function"), dict):
        return None
    f = v["function"]
    if not isinstance(f.get("_name"), str):
        return None
    return f["_name"], {k: x for k, x in f.items() if k != "_name"}


def logprobs_doc(pairs: list[tuple[Tok, list[Tok]]]) -> dict:
    return {
        "content": [
            {
                "token": t.text,
                "logprob": t.logprob,
                "top_logprobs": [{"token": x.text, "logprob": x.logprob} for x in top],
            }
            for t, top in pairs
        ]
    }


class ChatState:
    """Port of chat.rs ChatState (Buffering / Tool / Content) and create_event_from_stream_token."""

    def __init__(
        self,
        using_tools: bool,
        include_usage: bool,
        fingerprint: str,
        model: str,
        logprobs: bool,
        call_id: str,
    ) -> None:
        self.state = "buffering" if using_tools else "content"
        self.text = ""
        self.include_usage, self.fingerprint, self.model = include_usage, fingerprint, model
        self.logprobs, self.call_id = logprobs, call_id

    def chunk(self, choices: list, usage: dict | None) -> dict:
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": usage,
        }

    def event(self, ev: dict, text: str, using_tools: bool, function_name: str | None) -> dict:
        tok: Tok = ev["_tok"]
        content = None if tok.special else text
        tool_args = None
        if using_tools:
            content, tool_args = None, content
        if content is not None:
            delta: dict = {"role": "assistant", "content": content}
        elif tool_args is not None:
            delta = {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": self.call_id,
                        "type": "function",
                        "function": {"name": function_name, "arguments": tool_args},
                    }
                ],
            }
        else:
            delta = {"role": "assistant", "content": ""}
        finish = None
        if ev["details"] is not None:
            finish = (
                "stop" if ev["details"]["finish_reason"] == "eos_token" else ev["details"]["finish_reason"]
            )
        lp = logprobs_doc([(tok, ev["_top"])]) if self.logprobs else None
        return self.chunk([{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}], None)

    def push(self, ev: dict) -> list[dict] | None:
        """Events for one StreamResponse; None means ChatEvent::NoTool (restart without tools)."""
        events = []
        token_text = ev["token"]["text"]
        if self.state == "buffering":
            self.text += token_text
            partial = re.sub(r"[\s,}]+$", "", self.text)  # trim_end_matches(whitespace | ',' | '}')
            call = parse_call(partial + "}}")
            if call is not None:
                if call[0] != "no_tool":
                    events.append(self.event(ev, "{", True, call[0]))
                    self.state = "tool"
                else:
                    return None
        elif self.state == "tool":
            self.text += token_text
            if parse_call(self.text) is not None:
                self.state = "buffering"
                text = token_text.rstrip()
                if text.endswith("}"):
                    text = text[:-1]
                events.append(self.event(ev, text, True, None))
            else:
                events.append(self.event(ev, token_text, True, None))
        else:
            events.append(self.event(ev, token_text, False, None))
        if self.include_usage and ev["details"] is not None:
            d = ev["details"]
            events.append(
                self.chunk(
                    [],
                    {
                        "prompt_tokens": d["input_length"],
                        "completion_tokens": d["generated_tokens"],
                        "total_tokens": d["input_length"] + d["generated_tokens"],
                    },
                )
            )
        return events


def next_tool_call_id(chat: dict) -> str:
    n = 0
    for m in chat["messages"]:
        for tc in m.get("tool_calls") or []:
            try:
                n = max(n, int(tc["id"]) + 1)
            except ValueError:
                import uuid

                return str(uuid.uuid4())
    return str(n)


async def chat_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    chat, node = await read_json(request, CHAT_REQUEST)
    return await chat_completions(request, st, chat, control(st, node))


async def chat_completions(request: web.Request, st: State, chat: dict, ctl: dict) -> web.StreamResponse:
    st.count("tgi_request_count")
    call_id = next_tool_call_id(chat)
    try:
        req, using_tools = try_into_generate(chat, ctl)
    except InferError as e:
        return e.response()
    logprobs = bool(chat.get("logprobs"))
    model = st.model_id if chat.get("model") in (None, "tgi") else chat["model"]
    include_usage = bool((chat.get("stream_options") or {}).get("include_usage"))
    if chat.get("stream"):
        async with Sse(request, st, stream_headers(st, req)) as sse:
            state = ChatState(using_tools, include_usage, st.fingerprint, model, logprobs, call_id)
            restart = True
            while restart:
                restart = False
                async with aclosing(stream_internal(st, req)) as events:
                    async for ev in events:
                        if isinstance(ev, InferError):
                            await sse.json(ev.openai_event())
                            continue
                        out = state.push(ev)
                        if out is None:  # ChatEvent::NoTool: generate again without tools
                            chat = {**chat, "tools": None, "response_format": None}
                            ctl = {k: v for k, v in ctl.items() if k not in ("tool", "arguments")}
                            req, using_tools = try_into_generate(chat, ctl)
                            state = ChatState(
                                using_tools, include_usage, st.fingerprint, model, logprobs, call_id
                            )
                            restart = True
                            break
                        for chunk in out:
                            await sse.json(chunk)
                        if truncated(req, ev):
                            sse.kill()
                            return sse.resp
            await sse.data("[DONE]")
        return sse.resp
    try:
        headers, input_length, gen = await generate_internal(st, req)
        tool_calls = None
        output: str | None = gen["generated_text"]
        if using_tools:
            call = parse_call(gen["generated_text"])
            if call is None:
                raise InferError("tool_error", f"Failed to parse generated text: {gen['generated_text']!r}")
            if call[0] == "no_tool":
                chat = {**chat, "tools": None, "response_format": None}
                ctl = {k: v for k, v in ctl.items() if k not in ("tool", "arguments")}
                req, _ = try_into_generate(chat, ctl)
                headers, input_length, gen = await generate_internal(st, req)
                output = gen["generated_text"]
            else:
                output = None
                tool_calls = [
                    {
                        "id": "0",
                        "type": "function",
                        "function": {
                            "description": None,
                            "name": call[0],
                            "arguments": json.dumps(call[1], separators=(",", ":"), ensure_ascii=False),
                        },
                    }
                ]
    except InferError as e:
        return e.response()
    details = gen["details"]
    if output is not None:
        message: dict = {"role": "assistant", "content": output}
    else:
        message = {"role": "assistant", "tool_calls": tool_calls}
    lp = None
    if logprobs:
        toks = details["tokens"]
        tops = details.get("top_tokens") or []
        lp = {
            "content": [
                {
                    "token": t["text"],
                    "logprob": t["logprob"],
                    "top_logprobs": [
                        {"token": x["text"], "logprob": x["logprob"]}
                        for x in (tops[i] if i < len(tops) else [])
                    ],
                }
                for i, t in enumerate(toks)
            ]
        }
    finish = "stop" if details["finish_reason"] == "eos_token" else details["finish_reason"]
    n = details["generated_tokens"]
    doc = {
        "object": "chat.completion",
        "id": "",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": st.fingerprint,
        "choices": [{"index": 0, "message": message, "logprobs": lp, "finish_reason": finish}],
        "usage": {"prompt_tokens": input_length, "completion_tokens": n, "total_tokens": input_length + n},
    }
    return json_response(doc, headers=headers)


async def chat_tokenize_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    chat, node = await read_json(request, CHAT_REQUEST)
    st.count("tgi_request_count")
    try:
        req, _ = try_into_generate(chat, control(st, node))
    except InferError as e:
        return e.response()
    return json_response({"tokenize_response": simple_tokens(req.inputs), "templated_text": req.inputs})


# --------------------------------------------------------------------------------------------------
# /v1/completions


async def completions_route(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    body, node = await read_json(request, COMPLETION_REQUEST)
    return await completions(request, st, body, control(st, node))


async def completions(request: web.Request, st: State, body: dict, ctl: dict) -> web.StreamResponse:
    st.count("tgi_request_count")
    temperature = body.get("temperature")
    do_sample = True
    if temperature == 0.0:
        do_sample, temperature = False, None
    if body.get("suffix") is not None:
        st.fail("validation")
        return json_response(
            {
                "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                "error_type": "suffix not supported",
            },
            status=422,
        )
    prompts: list[str] = body["prompt"]
    if len(prompts) > st.max_client_batch_size:
        st.fail("validation")
        return json_response(
            {
                "error": f"Number of prompts exceeds the maximum allowed batch size of "
                f"{st.max_client_batch_size}",
                "error_type": "batch size exceeded",
            },
            status=422,
        )
    stream = bool(body.get("stream"))
    reqs = [
        GenReq(
            p,
            {
                "temperature": temperature,
                "repetition_penalty": body.get("repetition_penalty"),
                "frequency_penalty": body.get("frequency_penalty"),
                "top_p": body.get("top_p"),
                "do_sample": do_sample,
                "max_new_tokens": body.get("max_tokens"),
                "stop": body.get("stop") or [],
                "details": True,
                "decoder_input_details": not stream,
                "seed": body.get("seed"),
                "adapter_id": None if body.get("model") in (None, "tgi") else body["model"],
            },
            ctl,
        )
        for p in prompts
    ]
    if stream:
        headers = {
            "x-compute-type": st.compute_type,
            "x-compute-characters": str(sum(len(r.inputs) for r in reqs)),
            "x-accel-buffering": "no",
        }
        async with Sse(request, st, headers) as sse:
            gens = [stream_internal(st, r) for r in reqs]
            try:
                pending = list(enumerate(gens))
                while pending:  # the router polls the per-prompt channels round-robin
                    for item in list(pending):
                        index, gen = item
                        try:
                            ev = await gen.__anext__()
                        except StopAsyncIteration:
                            pending.remove(item)
                            continue
                        if isinstance(ev, InferError):
                            await sse.json(ev.openai_event())
                            continue
                        created = int(time.time())
                        choice = {"index": index, "text": ev["token"]["text"], "logprobs": None}
                        if ev["details"] is not None:
                            d = ev["details"]
                            choice = {
                                "index": index,
                                "text": ev["token"]["text"],
                                "logprobs": None,
                                "finish_reason": d["finish_reason"],
                            }
                            doc = {
                                "object": "text_completion",
                                "id": "",
                                "created": created,
                                "model": st.model_id,
                                "system_fingerprint": st.fingerprint,
                                "choices": [choice],
                                "usage": {
                                    "prompt_tokens": d["input_length"],
                                    "completion_tokens": d["generated_tokens"],
                                    "total_tokens": d["input_length"] + d["generated_tokens"],
                                },
                            }
                        else:
                            choice["finish_reason"] = ""
                            doc = {
                                "object": "text_completion",
                                "id": "",
                                "created": created,
                                "choices": [choice],
                                "model": st.model_id,
                                "system_fingerprint": st.fingerprint,
                            }
                        await sse.json(doc)
                        if truncated(reqs[index], ev):
                            sse.kill()
                            return sse.resp
            finally:
                for g in gens:
                    await g.aclose()
            await sse.data("[DONE]")
        return sse.resp
    current = int(time.time())
    results = await asyncio.gather(*(generate_internal(st, r) for r in reqs), return_exceptions=True)
    for r in results:
        if isinstance(r, InferError):
            return r.response()
        if isinstance(r, BaseException):
            raise r
    choices, pt, ct = [], 0, 0
    agg: dict[str, int] = {}
    for index, (headers, input_length, gen) in enumerate(results):
        d = gen["details"]
        pt += input_length
        ct += d["generated_tokens"]
        for k in (
            "x-compute-characters",
            "x-total-time",
            "x-validation-time",
            "x-queue-time",
            "x-inference-time",
            "x-time-per-token",
            "x-prompt-tokens",
            "x-generated-tokens",
        ):
            agg[k] = agg.get(k, 0) + int(headers[k])
        choices.append(
            {
                "index": index,
                "text": gen["generated_text"],
                "logprobs": None,
                "finish_reason": "stop" if d["finish_reason"] == "eos_token" else d["finish_reason"],
            }
        )
    doc = {
        "object": "text_completion",
        "id": "",
        "created": current,
        "model": st.model_id,
        "system_fingerprint": st.fingerprint,
        "choices": choices,
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }
    return json_response(
        doc, headers={"x-compute-type": st.compute_type, **{k: str(v) for k, v in agg.items()}}
    )


async def invocations_route(request: web.Request) -> web.StreamResponse:
    """sagemaker.rs: untagged SagemakerRequest { Generate(Compat) | Chat | Completion }."""
    st: State = request.app["state"]
    raw = await request.read()
    for spec in (COMPAT_REQUEST, CHAT_REQUEST, COMPLETION_REQUEST):
        try:
            body, node = parse_body(st, request, raw, spec)
        except Rejection as r:
            if r.status != 422:
                raise
            continue
        record(st, request, node)
        ctl = control(st, node)
        if spec is CHAT_REQUEST:
            return await chat_completions(request, st, body, ctl)
        if spec is COMPLETION_REQUEST:
            return await completions(request, st, body, ctl)
        params = generate_params(body)
        if params.get("return_full_text") is None:
            params["return_full_text"] = st.pipeline_tag in (None, "text-generation")
        req = GenReq(body["inputs"], params, ctl)
        if body.get("stream"):
            return await native_stream(request, st, req)
        try:
            headers, _, doc = await generate_internal(st, req)
        except InferError as e:
            return e.response()
        return json_response([doc], headers=headers)
    node = _Parser(raw).document()
    line, col = line_col(raw, node.end)
    raise Rejection(
        422,
        "Failed to deserialize the JSON body into the target type: data did not match any variant "
        f"of untagged enum SagemakerRequest at line {line} column {col}",
    )


# --------------------------------------------------------------------------------------------------
# Info routes, hooks, app


async def health(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    if st.healthy:
        return web.Response(status=200)
    return json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=503)


async def info(request: web.Request) -> web.Response:
    return json_response(request.app["state"].info())


async def models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    return json_response(
        {
            "object": "list",
            "data": [{"id": st.model_id, "object": "model", "created": 0, "owned_by": st.model_id}],
        }
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=render_metrics(request.app["state"]).encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return web.json_response(st.requests)
    if what == "stats":
        return web.json_response(
            {
                "in_flight": st.permits,
                "max_in_flight": st.max_in_flight,
                "queued": st.queued,
                "batch": st.batch,
                "held": st.held,
                "completed": st.completed,
                "cancelled": st.cancelled,
                "overloaded": st.overloaded,
                "received": len(st.requests),
                "healthy": st.healthy,
            }
        )
    if what == "release":
        held = st.held
        st.release.set()
        st.release = asyncio.Event()
        return web.json_response({"released": held})
    if what == "control":
        st.default_ctl = await request.json() if request.can_read_body else {}
        return web.json_response(st.default_ctl)
    if what in ("unhealthy", "healthy"):
        st.healthy = what == "healthy"
        return web.json_response({"healthy": st.healthy})
    if what == "reset":
        st.requests.clear()
        st.release.set()
        st.release = asyncio.Event()
        st.max_in_flight = st.permits
        st.completed = st.cancelled = st.overloaded = 0
        st.healthy = True
        st.default_ctl = {}
        return web.json_response({"reset": True})
    raise web.HTTPNotFound()


PROTECTED = {
    ("POST", "/"),
    ("POST", "/generate"),
    ("POST", "/generate_stream"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/invocations"),
    ("POST", "/tokenize"),
}


@web.middleware
async def tgi_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    st: State = request.app["state"]
    if st.api_key is not None and (request.method, request.path) in PROTECTED:
        token = request.headers.get("Authorization")
        if token is None or token.lower() != f"Bearer {st.api_key}".lower():
            return web.Response(status=401)
    try:
        return await handler(request)
    except Rejection as r:
        return r.response()
    except web.HTTPMethodNotAllowed as e:  # axum: 405, empty body, Allow header
        return web.Response(status=405, headers={"Allow": ",".join(sorted(e.allowed_methods))})
    except web.HTTPNotFound:
        return web.Response(status=404)


def make_app(a: argparse.Namespace) -> web.Application:
    app = web.Application(middlewares=[tgi_middleware], client_max_size=a.payload_limit + 1)
    app["state"] = State(a)
    app["no_openai_completions"] = a.no_openai_completions
    r = app.router
    r.add_post("/", compat_route)
    r.add_get("/", health)
    r.add_post("/generate", generate_route)
    r.add_post("/generate_stream", generate_stream_route)
    r.add_post("/v1/chat/completions", chat_route)
    if not a.no_openai_completions:
        r.add_post("/v1/completions", completions_route)
    r.add_post("/invocations", invocations_route)
    r.add_post("/tokenize", tokenize_route)
    r.add_post("/chat_tokenize", chat_tokenize_route)
    r.add_get("/info", info)
    r.add_get("/health", health)
    r.add_get("/ping", health)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/models", models)
    r.add_get("/api-doc/openapi.json", openapi_doc)
    r.add_route("*", "/_{what}", hooks)
    return app


async def openapi_doc(request: web.Request) -> web.Response:
    """TGI serves its OpenAPI document (utoipa) at /api-doc/openapi.json; only `paths` matters here:
    a client can tell from it which routes this server version has."""
    routes = ["/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions", "/invocations",
              "/tokenize", "/chat_tokenize", "/info", "/health", "/metrics", "/v1/models"]
    if request.app["no_openai_completions"]:
        routes.remove("/v1/completions")
    return web.json_response({"openapi": "3.0.3", "info": {"title": "Text Generation Inference"},
                              "paths": {r: {} for r in routes}})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TGI 3.3.x test double")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hostname", default="127.0.0.1")
    p.add_argument("--model-id", default="bigscience/bloom-560m")
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--max-best-of", type=int, default=2)
    p.add_argument("--max-stop-sequences", type=int, default=4)
    p.add_argument("--max-top-n-tokens", type=int, default=5)
    p.add_argument("--max-input-tokens", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--max-client-batch-size", type=int, default=4)
    p.add_argument("--max-batch-total-tokens", type=int, default=16384)
    p.add_argument("--payload-limit", type=int, default=2_000_000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds before the port is bound")
    p.add_argument("--version", default="3.3.6-dev0")
    p.add_argument(
        "--docker-label", default=None, help="DOCKER_LABEL baked in the image (unset/'native' = none)"
    )
    p.add_argument("--sha", default=None, help="VERGEN_GIT_SHA of the build (null when unset)")
    p.add_argument("--model-sha", default=None)
    p.add_argument("--pipeline-tag", default="text-generation", help="Hub pipeline tag ('' = none)")
    p.add_argument("--compute-type", default="gpu+optimized", help="COMPUTE_TYPE env of TGI")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    p.add_argument("--keep-alive", type=float, default=15.0, help="SSE keep-alive interval (0 = off)")
    p.add_argument(
        "--legacy-sse", action="store_true", help="`data:` without a space (TGI <= 2.0.x, axum 0.6)"
    )
    p.add_argument("--no-openai-completions", action="store_true",
                   help="no /v1/completions route (TGI releases before the OpenAI completions API)")
    a = p.parse_args(argv)
    if a.max_total_tokens is None:
        a.max_total_tokens = a.max_input_tokens + 1 if a.max_input_tokens is not None else 4096
    if a.max_input_tokens is None:
        a.max_input_tokens = a.max_total_tokens - 1
    if a.max_input_tokens >= a.max_total_tokens:
        p.error(
            f"`max_input_tokens`({a.max_input_tokens}) must be < `max_total_tokens`({a.max_total_tokens})"
        )
    return a


def main() -> None:
    a = parse_args()
    if a.load_delay > 0:  # the launcher starts the webserver only after the shards are ready
        print(f"tgi double: loading {a.model_id} for {a.load_delay}s (port {a.port} closed)", flush=True)
        time.sleep(a.load_delay)
    print(f"tgi double: serving {a.model_id} on {a.hostname}:{a.port}", flush=True)
    web.run_app(
        make_app(a), host=a.hostname, port=a.port, print=None, access_log=None, handler_cancellation=True
    )


if __name__ == "__main__":
    main()
