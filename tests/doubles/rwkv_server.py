"""A small real RWKV-Runner `backend-python` server (legacy engine) for the gateway's tests.

Run: python -m tests.doubles.rwkv_server --port P [--load-seconds S] [--preload PATH]
     [--ping-seconds S] [--text TEXT] [--token-delay S] [--device-name NAME] [--embedding-dim N]
     [--exit-kills]

Every detail below was read from RWKV-Runner's source at 64269f0 (release v1.9.11:
backend-python/{main.py, global_var.py, routes/completion.py, routes/config.py, routes/misc.py,
routes/schema.py, utils/rwkv.py, utils/llama.py}) and its pinned web stack (fastapi 0.109.1,
pydantic 2.4.2, sse-starlette 1.6.5, uvicorn 0.23.2), and checked against that real app run with
a fake torch-less TextRWKV model.

Behaviour that mirrors RWKV-Runner:
* GET / -> {"Hello":"World!"}; GET /status -> {"status":0|2|3,"pid":N,"device_name":"CPU"}
  (0 Offline, 2 Loading, 3 Working). No model at start (unless --preload PATH).
* POST /switch-model {model, strategy, tokenizer?, customCuda?, deploy?}: body validated first (422),
  then 403 {"detail":"Forbidden"} in deploy mode, then 304 with an empty body while a load runs.
  Otherwise: unload (status 0, model None), `model: ""` -> "success"; else status 2 for
  --load-seconds, then "success" and status 3. The file is looked up like `get_model_path` (absolute;
  else cwd, its parent, each + build/bin); `.gguf` files are "llama.cpp" models, anything else gets
  `.pth` appended when missing, as rwkv_pip does before torch.load. A missing file -> 500
  {"detail":"failed to load: [Errno 2] No such file or directory: 'models/x.pth'"} (gguf:
  "failed to load: Model path does not exist: x.gguf") and status 0. The model's name is the file
  stem. `deploy: true` then locks /switch-model and /exit (403). The load continues when the client
  goes away (the real handler runs in a thread).
* POST /update-config (sampling fields) -> "success"; they become server-side defaults.
* Chat (/chat/completions, /v1/chat/completions) and completions (/completions, /v1/completions):
  pydantic-2.4-style 422 {"detail":[...]} first (range limits max_tokens 1..102400, temperature 0..3,
  top_p 0..1, presence/frequency -2..2, penalty_decay 0.99..0.999, top_k 0..100; an explicit null
  for a non-Optional field such as max_tokens/temperature/stream is a 422 too; message content must
  be a string: content-part arrays are 422 with one error list per union member), then 400
  {"detail":"model not loaded"} unless a model is loaded, then (chat) 400 "messages not found".
  The request's `model` is ignored. Unknown fields are ignored.
* Chat prompt: chat_template (v5+): "User: ...", "Assistant: ...", "System: ...",
  "Observation: ..." joined by "\\n\\n", ending "Assistant:". Stop list for .pth (TextRWKV) models:
  omitted -> the 11 default stops; null -> the defaults too; a string s -> [s]; a list as given;
  and "\\n\\nUser" / "\\n\\nAssistant" (first token of user/assistant name) are always appended.
  For .gguf models the default list is dropped (stop None) unless the name contains "rwkv".
  Completions have no default stop; prompt null/""/[] -> "\\n", a list -> its first element.
* Generation = utils/rwkv.py AbstractRWKV.generate: tokens are taken one by one from a fixed text
  (default "Hello there.\\n\\nA second paragraph follows.", tokens "Hello"," there.","\\n\\n","A",...:
  runs of newlines, and words with their leading space); after each token the stop strings are
  searched in the whole response: on a hit the response is cut before it and the stop token yields
  an EMPTY delta (so a stream has already sent "\\n\\n" that the non-stream content lacks, exactly as
  the real server with a real tokenizer); completion_tokens counts the stop token. max_tokens
  (default 500) cuts silently. finish_reason is ALWAYS "stop". prompt_tokens = tokens of the prompt
  (same tokenizer); 0 for .gguf models (utils/llama.py never counts them).
* ONE global lock (legacy engine): a request waits polling every 100 ms, unbounded, no FIFO; the
  waiting stops when the client goes away. Embeddings take the same lock.
* Exceptions during generation are printed and the request finishes normally: 200, partial or
  empty content, usage so far (all zero when it failed before the first token), finish "stop".
* Non-stream: {"object","model","choices":[{"message":{"role","content"},"index","finish_reason"}],
  "usage"} -- no id, no created; compact JSON, UTF-8 as is (starlette JSONResponse).
* Stream (sse-starlette 1.6.5 EventSourceResponse): status 200 and headers at once (also while the
  request still waits for the lock), `data: <json.dumps(chunk)>\\r\\n\\r\\n` (default separators,
  ensure_ascii), no role chunk, chunks without id/created, a final {"delta":{}} (completions:
  {"text":""}) chunk with finish "stop", then `data: [DONE]\\r\\n\\r\\n`; a comment
  `: ping - <utc datetime>\\r\\n\\r\\n` every --ping-seconds (15 like sse-starlette) from the start of
  the response. No usage in streams.
* GET /models, /v1/models: the loaded model (or "rwkv") + the fake gpt-3.5-turbo and
  text-davinci-003 cards. GET /models/{id}: fake cards by id; any id containing "rwkv" -> the
  loaded model's card; else 404 {"detail":{"error":{...,"code":"model_not_found"}}}.
* POST /embeddings (+ /v1/embeddings, /engines/text-embedding-ada-002/embeddings, /v1/engines/...):
  .pth models only (400 "model not support embedding" for .gguf), 400 "input not found" for
  ""/[]/[[]]; {"object":"list","data":[{"object":"embedding","index":i,"embedding":[...]}],
  "model":<name>,"usage":{"prompt_tokens","total_tokens"}}; encoding_format "base64" -> float32 LE.
* POST /exit: 403 in deploy mode; otherwise the real server kills itself. The double records the
  call (GET /_stats "exit_calls") and drops the connection without an answer, staying up (with
  --exit-kills it really exits).
* Unknown route -> 404 {"detail":"Not Found"}, wrong method -> 405 {"detail":"Method Not Allowed"};
  `server: uvicorn` header.

Simplifications: no tool calls (tools are accepted and ignored), no state cache (so prompt_tokens
is never under-counted), no albatross engine, token-id inputs of embeddings count one token per id
(the real server decodes them with tiktoken first), the event loop is never blocked (the real
generation blocks it per token, stalling /status).

Per-request behaviour comes from an extra body field (ignored by the real server):
"x_double": {"hold": true (after the first token, keep generating -- holding the lock -- until
POST /_release), "delay": s per token, "fail": true (generation raises before the first token),
"fail_at": N (raises after N tokens), "text": "..." (the answer)}; on /switch-model:
{"load_seconds": s}.
Test hooks: GET /_requests (every body received, with the effective stop list and prompt),
GET /_stats (in_flight, max_in_flight = max concurrent generations, waiting, max_waiting,
cancelled, completed, failed, pings, exit_calls, received, requests, generations [start/end
times]), POST /_release (let held generations go on; sticky until /_reset), POST /_reset.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
import math
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web

DEFAULT_TEXT = "Hello there.\n\nA second paragraph follows."
DEFAULT_STOP = [
    "\n\nUser",
    "\n\nQuestion",
    "\n\nQ",
    "\n\nHuman",
    "\n\nBob",
    "\n\nAssistant",
    "\n\nAnswer",
    "\n\nA",
    "\n\nBot",
    "\n\nAlice",
    "\n\nObservation",
]
TOKEN_RE = re.compile(r"\n+|[ ]?[^\s]+|\s")
PYDANTIC_URL = "https://errors.pydantic.dev/2.4/v/"
PRESYSTEM = ("{user}: hi\n\n{bot}: Hi. I am your assistant and I will provide expert full response in full "
             "details. Please feel free to ask any question and I will always answer it.\n\n")

FAKE_MODELS = [
    {
        "id": "gpt-3.5-turbo",
        "object": "model",
        "created": 1677610602,
        "owned_by": "openai",
        "permission": [
            {
                "id": "modelperm-zy5TOjnE2zVaicIcKO9bQDgX",
                "object": "model_permission",
                "created": 1690864883,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
        "root": "gpt-3.5-turbo",
        "parent": None,
    },
    {
        "id": "text-davinci-003",
        "object": "model",
        "created": 1669599635,
        "owned_by": "openai-internal",
        "permission": [
            {
                "id": "modelperm-a6niqBmW2JaGmo0fDO7FEt1n",
                "object": "model_permission",
                "created": 1690930172,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
        "root": "text-davinci-003",
        "parent": None,
    },
]


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def dumps(obj: Any) -> bytes:
    """starlette JSONResponse.render: compact, UTF-8 as is."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, headers={"Content-Type": "application/json"})


def detail(status: int, message: Any) -> web.Response:
    return json_response({"detail": message}, status)


# --------------------------------------------------------------------------------------------------
# Request validation with pydantic 2.4's error shapes (FastAPI 0.109 wraps them as {"detail":[...]}).

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


# utils/rwkv.py ModelConfigBody: every field defaults to None but is NOT Optional (null -> 422)
MODEL_CONFIG: list[Field] = [
    ("max_tokens", bounded(v_int, gt=(0, 0), le=(102400, 102400)), None),
    ("temperature", bounded(v_float, ge=(0, 0.0), le=(3, 3.0)), None),
    ("top_p", bounded(v_float, ge=(0, 0.0), le=(1, 1.0)), None),
    ("presence_penalty", bounded(v_float, ge=(-2, -2.0), le=(2, 2.0)), None),
    ("frequency_penalty", bounded(v_float, ge=(-2, -2.0), le=(2, 2.0)), None),
    ("penalty_decay", bounded(v_float, ge=(0.99, 0.99), le=(0.999, 0.999)), None),
    ("top_k", bounded(v_int, ge=(0, 0), le=(100, 100)), None),
    ("global_penalty", v_bool, None),
    ("state", v_str, None),
]
TOOL_CALL = model([
    ("id", v_str, MISSING),
    ("function", model([("arguments", v_str, MISSING), ("name", v_str, MISSING)]), MISSING),
    ("type", literal("function"), MISSING),
])
# routes/schema.py ChatCompletionMessageParam
MESSAGE = union(
    ("ChatCompletionSystemMessageParam", model([
        ("content", v_str, MISSING), ("role", literal("system"), MISSING), ("name", opt(v_str), None),
        ("raw", v_bool, False)])),
    ("ChatCompletionUserMessageParam", model([
        ("content", v_str, MISSING), ("role", literal("user"), MISSING), ("name", opt(v_str), None),
        ("raw", v_bool, False)])),
    ("ChatCompletionAssistantMessageParam", model([
        ("content", opt(v_str), None), ("role", literal("assistant"), MISSING), ("name", opt(v_str), None),
        ("tool_calls", opt(list_of(TOOL_CALL)), []), ("raw", v_bool, False),
        ("prefix", opt(v_bool), False)])),
    ("ChatCompletionToolMessageParam", model([
        ("content", v_str, MISSING), ("role", literal("tool"), MISSING), ("name", opt(v_str), None),
        ("tool_call_id", v_str, MISSING)])),
)
def v_dict(v: Any, loc: Loc) -> tuple[Any, list]:
    if isinstance(v, dict):
        return v, []
    return None, [perr("dict_type", loc, "Input should be a valid dictionary", v)]


TOOL = model([
    ("function", model([
        ("name", v_str, MISSING), ("description", v_str, None),
        ("parameters", opt(v_dict), None)]), MISSING),
    ("type", literal("function"), "function"),
])
STOP = opt(union(("str", v_str), ("list[str]", list_of(v_str))))
CHAT_BODY = model(MODEL_CONFIG + [
    ("messages", opt(list_of(MESSAGE)), MISSING),
    ("model", opt(v_str), "rwkv"),
    ("stream", v_bool, False),
    ("stop", STOP, DEFAULT_STOP),
    ("stop_token_ids", opt(list_of(v_int)), None),
    ("tools", opt(list_of(TOOL)), None),
    ("tool_choice", union(("literal['none','auto','required']", literal("none", "auto", "required")),
                          ("ChatCompletionNamedToolChoiceParam", model([
                              ("function", model([("name", v_str, MISSING)]), MISSING),
                              ("type", literal("function"), "function")]))), "auto"),
    ("user_name", opt(min_len1(v_str)), None),
    ("assistant_name", opt(min_len1(v_str)), None),
    ("system_name", opt(min_len1(v_str)), None),
    ("presystem", v_bool, False),
])
COMPLETION_BODY = model(MODEL_CONFIG + [
    ("prompt", opt(union(("str", v_str), ("list[str]", list_of(v_str)))), MISSING),
    ("model", opt(v_str), "rwkv"),
    ("stream", v_bool, False),
    ("stop", STOP, None),
    ("stop_token_ids", opt(list_of(v_int)), None),
])
EMBEDDINGS_BODY = model([
    ("input", opt(union(("str", v_str), ("list[str]", list_of(v_str)),
                        ("list[list[int]]", list_of(list_of(v_int))))), MISSING),
    ("model", opt(v_str), "rwkv"),
    ("encoding_format", v_str, None),
    ("fast_mode", v_bool, False),
])
SWITCH_BODY = model([
    ("model", v_str, MISSING),
    ("strategy", v_str, MISSING),
    ("tokenizer", opt(v_str), None),
    ("customCuda", v_bool, False),
    ("deploy", v_bool, False),
])
CONFIG_BODY = model(MODEL_CONFIG)


async def parse_body(request: web.Request,
                     schema: Validator) -> tuple[dict | None, dict, web.Response | None]:
    """FastAPI: JSON decode error / validation error -> 422 before the handler runs."""
    raw = await request.read()
    if not raw:
        missing = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None,
                   "url": PYDANTIC_URL + "missing"}
        return None, {}, json_response({"detail": [missing]}, 422)
    try:
        data = json.loads(raw)
    except ValueError as e:
        pos = getattr(e, "pos", 0)
        msg = getattr(e, "msg", str(e))
        return None, {}, json_response({"detail": [{"type": "json_invalid", "loc": ["body", pos],
                                                    "msg": "JSON decode error", "input": {},
                                                    "ctx": {"error": msg}}]}, 422)
    value, errs = schema(data, ("body",))
    if errs:
        return data, {}, json_response({"detail": errs}, 422)
    return data, value, None


# --------------------------------------------------------------------------------------------------


class Model:
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.kind = "llama" if path.endswith(".gguf") else "rwkv"  # TextLlama (llama.cpp) or TextRWKV

    @property
    def is_rwkv(self) -> bool:  # utils/llama.py is_rwkv_model
        return self.kind == "rwkv" or "rwkv" in self.name.lower()


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.args = a
        self.status = 0
        self.model: Model | None = None
        self.deploy = False
        self.config: dict[str, Any] | None = None  # global_var.Model_Config
        self.locked = False  # routes/completion.py completion_lock
        self.release = asyncio.Event()
        self.requests: list[dict] = []
        self.reset_counters()
        if a.preload:
            self.model = Model(a.preload)
            self.config = self.model_defaults()
            self.status = 3

    def reset_counters(self) -> None:
        self.in_flight = self.max_in_flight = 0
        self.waiting = self.max_waiting = 0
        self.cancelled = self.completed = self.failed = 0
        self.pings = self.exit_calls = self.switch_calls = 0
        self.generations: list[dict] = []
        self.seq = 0

    def model_defaults(self) -> dict[str, Any]:
        if self.model is not None and self.model.kind == "llama":  # utils/llama.py TextLlama
            return {"max_tokens": 500, "temperature": 1.0, "top_p": 0.3, "presence_penalty": 0.0,
                    "frequency_penalty": 1.0, "penalty_decay": None, "top_k": 40, "global_penalty": None,
                    "state": None}
        return {"max_tokens": 500, "temperature": 1.0, "top_p": 0.3, "presence_penalty": 0.0,  # TextRWKV
                "frequency_penalty": 1.0, "penalty_decay": 0.996, "top_k": 0, "global_penalty": False,
                "state": ""}


def get_model_path(model_path: str) -> str:
    """utils/rwkv.py get_model_path (the double's own directory stands for backend-python/)."""
    if os.path.isabs(model_path):
        return model_path
    cwd = Path(os.path.abspath(os.getcwd()))
    for parent in (cwd, cwd.parent):
        for full in (parent / model_path, parent / "build" / "bin" / model_path):
            if os.path.isfile(full):
                return str(full)
    return model_path


def load_model(path: str) -> Model:
    """What RWKV()/Llama() do first with the file; raises the same exceptions for a bad path."""
    resolved = get_model_path(path)
    if resolved.endswith(".gguf"):
        if not os.path.exists(resolved):  # llama_cpp.Llama.__init__
            raise ValueError(f"Model path does not exist: {resolved}")
    else:
        name = resolved if resolved.endswith(".pth") else resolved + ".pth"  # rwkv_pip RWKV.__init__
        with open(name, "rb"):  # torch.load -> FileNotFoundError / IsADirectoryError
            pass
    return Model(resolved)


# --------------------------------------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    return json_response({"Hello": "World!"})


async def status(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    return json_response({"status": st.status, "pid": os.getpid(), "device_name": st.args.device_name})


def record(st: State, request: web.Request, body: Any) -> dict:
    entry = {"path": request.path, "body": body}
    st.requests.append(entry)
    return entry


async def switch_model(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    st.switch_calls += 1
    data, body, bad = await parse_body(request, SWITCH_BODY)
    record(st, request, data)
    if bad:
        return bad
    if st.deploy:
        return detail(403, "Forbidden")
    if st.status == 2:
        return web.Response(status=304, headers={"Content-Type": "application/json"})
    st.status = 0
    st.model = None
    if body["model"] == "":
        return json_response("success")
    st.status = 2
    ctl = (data.get("x_double") or {}) if isinstance(data, dict) else {}
    delay = float(ctl.get("load_seconds", st.args.load_seconds))
    # the real handler is a sync def run in a worker thread: it finishes even if the client leaves
    return await asyncio.shield(asyncio.ensure_future(finish_load(st, body, delay)))


async def finish_load(st: State, body: dict, delay: float) -> web.Response:
    await asyncio.sleep(delay)
    try:
        loaded = load_model(body["model"])
    except Exception as e:
        print(e, flush=True)
        st.status = 0
        return detail(500, f"failed to load: {e}")
    st.model = loaded
    if body["deploy"]:
        st.deploy = True
    config = st.model_defaults()
    if st.config is not None:  # merge_model(init_model_config, saved_model_config)
        config.update({k: v for k, v in st.config.items() if v is not None and k in config})
    st.config = config
    st.status = 3
    return json_response("success")


async def update_config(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    data, body, bad = await parse_body(request, CONFIG_BODY)
    record(st, request, data)
    if bad:
        return bad
    if st.config is None:
        st.config = {k: None for k, _, _ in MODEL_CONFIG}
    st.config.update({k: v for k, v in body.items() if v is not None})
    return json_response("success")


def chat_prompt(body: dict) -> str:
    """routes/completion.py chat_template (model.version >= 5), World names User/Assistant."""
    user = body["user_name"] or "User"
    bot = body["assistant_name"] or "Assistant"
    system = body["system_name"] or "System"
    text = PRESYSTEM.format(user=user, bot=bot) if body["presystem"] else ""
    prefix_mode = False
    messages = body["messages"]
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content")
        append = ""
        if role == "user":
            append = f"{user}: {content}"
        elif role == "assistant":
            if m.get("tool_calls"):
                call = m["tool_calls"][0]["function"]
                try:
                    args = json.loads(call["arguments"])
                    args_text = ", ".join(f'"{k}"="{v}"' for k, v in args.items())
                except (ValueError, AttributeError):
                    args_text = ""
                append = f"{bot}: {call['name']}\n```python\ntool_call({args_text})\n```"
            elif content is None:
                continue
            else:
                append = f"{bot}: {content}"
        elif role == "system":
            append = f"{system}: {content}"
        elif role == "tool":
            append = f"Observation: {content}"
        if role == "assistant" and m.get("prefix") and i == len(messages) - 1:
            prefix_mode = True
        text += append + ("" if prefix_mode else "\n\n")
    if not prefix_mode:
        text += f"{bot}:"
    return text


def effective_config(st: State, body: dict) -> dict:
    """set_rwkv_config(model, Model_Config) then set_rwkv_config(model, body)."""
    config = dict(st.config or st.model_defaults())
    config.update({k: body[k] for k, _, _ in MODEL_CONFIG if body.get(k) is not None})
    return config


async def generate_rwkv(st: State, ctl: dict, text: str, max_tokens: int, stop: Any,
                        prompt_tokens: int) -> AsyncIterator[tuple[str, str, int, int]]:
    """utils/rwkv.py AbstractRWKV.generate, with a fixed answer instead of sampling."""
    toks = tokenize(text)
    fail_at = 0 if ctl.get("fail") else ctl.get("fail_at")
    delay = float(ctl.get("delay", st.args.token_delay))
    completion_tokens = 0
    response = ""
    for i in range(max_tokens):
        if delay:
            await asyncio.sleep(delay)
        if fail_at is not None and i >= fail_at:
            raise RuntimeError("x_double: injected failure during generation")
        if i >= len(toks):  # EOS sampled
            yield response, "", prompt_tokens, completion_tokens
            return
        completion_tokens += 1
        delta = toks[i]
        response += delta
        if stop is not None:
            if isinstance(stop, str):
                if stop in response:
                    response = response.split(stop)[0]
                    yield response, "", prompt_tokens, completion_tokens
                    return
            elif isinstance(stop, list):
                for s in stop:
                    if s in response:
                        response = response.split(s)[0]  # "" -> ValueError, caught by eval like the real one
                        yield response, "", prompt_tokens, completion_tokens
                        return
        yield response, delta, prompt_tokens, completion_tokens
        if i == 0 and ctl.get("hold"):
            await st.release.wait()


async def generate_llama(st: State, ctl: dict, text: str, max_tokens: int, stop: Any,
                         chat: bool) -> AsyncIterator[tuple[str, str, int, int]]:
    """utils/llama.py AbstractLlama.generate: llama.cpp applies the stops (text before the first
    one, nothing of it streamed); one chunk per token; prompt_tokens always 0."""
    stops = [stop] if isinstance(stop, str) else (stop or [])
    cut = min([text.index(s) for s in stops if s and s in text], default=len(text))
    toks = tokenize(text[:cut])
    fail_at = 0 if ctl.get("fail") else ctl.get("fail_at")
    delay = float(ctl.get("delay", st.args.token_delay))
    response = ""
    for i, tok in enumerate(toks[:max_tokens]):
        if delay:
            await asyncio.sleep(delay)
        if fail_at is not None and i >= fail_at:
            raise RuntimeError("x_double: injected failure during generation")
        response += tok
        yield response, tok, 0, i + 1
        if i == 0 and ctl.get("hold"):
            await st.release.wait()


async def acquire_lock(st: State) -> None:
    """`while completion_lock.locked(): await asyncio.sleep(0.1)` -- unbounded, no FIFO."""
    if st.locked:
        st.waiting += 1
        st.max_waiting = max(st.max_waiting, st.waiting)
        try:
            while st.locked:
                await asyncio.sleep(0.1)
        finally:
            st.waiting -= 1
    st.locked = True


async def run_eval(st: State, m: Model, entry: dict, ctl: dict, chat: bool, prompt: str, stop: Any,
                   config: dict, emit: Callable[[str], Any] | None) -> dict | None:
    """routes/completion.py eval (legacy engine): stream chunks through emit, else return the doc."""
    await acquire_lock(st)
    st.seq += 1
    gen = {"id": st.seq, "path": entry["path"], "start": time.monotonic(), "end": None}
    st.generations.append(gen)
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        name = m.name
        obj = "chat.completion.chunk" if chat else "text_completion"
        text = ctl.get("text", st.args.text)
        max_tokens = config["max_tokens"]
        if m.kind == "rwkv":
            agen = generate_rwkv(st, ctl, text, max_tokens, stop, len(tokenize(prompt)) if prompt else 0)
        else:
            agen = generate_llama(st, ctl, text, max_tokens, stop, chat)
        response, prompt_tokens, completion_tokens = "", 0, 0
        try:
            if m.kind == "rwkv" and prompt == "":  # generate(): no prefill -> `logits` unbound
                raise UnboundLocalError("cannot access local variable 'logits' where it is not associated "
                                        "with a value")
            # The loop variables are read after the loop: the last values are the answer and its usage.
            async for response, delta, prompt_tokens, completion_tokens in agen:  # noqa: B007
                if emit is not None:
                    choice = ({"delta": {"content": delta}, "index": 0, "finish_reason": None} if chat
                              else {"text": delta, "index": 0, "finish_reason": None})
                    await emit(json.dumps({"object": obj, "model": name, "choices": [choice]}))
        except Exception as e:  # `except Exception as e: print(e)`
            st.failed += 1
            print(e, flush=True)
        if emit is not None:
            choice = ({"delta": {}, "index": 0, "finish_reason": "stop"} if chat
                      else {"text": "", "index": 0, "finish_reason": "stop"})
            await emit(json.dumps({"object": obj, "model": name, "choices": [choice]}))
            await emit("[DONE]")
            st.completed += 1
            return None
        choice = ({"message": {"role": "assistant", "content": response}, "index": 0, "finish_reason": "stop"}
                  if chat else {"text": response, "index": 0, "finish_reason": "stop"})
        st.completed += 1
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        kind = "chat.completion" if chat else "text_completion"
        return {"object": kind, "model": name, "choices": [choice], "usage": usage}
    finally:
        st.in_flight -= 1
        st.locked = False
        gen["end"] = time.monotonic()


class ClientGone(BaseException):
    """A write to a client that went away (not a generation failure: bypasses `except Exception`)."""


def utc_now() -> str:
    """str(datetime.utcnow()) as sse-starlette 1.6.5 formats its ping comment."""
    return str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))


async def answer(request: web.Request, st: State, m: Model, entry: dict, ctl: dict, chat: bool, stream: bool,
                 prompt: str, stop: Any, config: dict) -> web.StreamResponse:
    try:
        if not stream:
            doc = await run_eval(st, m, entry, ctl, chat, prompt, stop, config, None)
            return json_response(doc)
        resp = web.StreamResponse(headers={
            "Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no",
            "Content-Type": "text/event-stream; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        wlock = asyncio.Lock()

        async def send(data: bytes) -> None:
            async with wlock:
                try:
                    await resp.write(data)
                except ConnectionError as e:
                    raise ClientGone() from e

        async def emit(data: str) -> None:  # ServerSentEvent(data).encode() with sep "\r\n"
            await send("".join(f"data: {line}\r\n" for line in re.split(r"\r\n|\r|\n", data)).encode()
                       + b"\r\n")

        async def ping() -> None:  # EventSourceResponse._ping
            try:
                while True:
                    await asyncio.sleep(st.args.ping_seconds)
                    await send(f": ping - {utc_now()}\r\n\r\n".encode())
                    st.pings += 1
            except ClientGone:
                pass

        pinger = asyncio.ensure_future(ping())
        try:
            await run_eval(st, m, entry, ctl, chat, prompt, stop, config, emit)
            async with wlock:
                await resp.write_eof()
        except (ClientGone, ConnectionError):
            st.cancelled += 1
        finally:
            pinger.cancel()
        return resp
    except asyncio.CancelledError:
        st.cancelled += 1
        raise


def control(data: Any) -> dict:
    ctl = data.get("x_double") if isinstance(data, dict) else None
    return ctl if isinstance(ctl, dict) else {}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    data, body, bad = await parse_body(request, CHAT_BODY)
    entry = record(st, request, data)
    if bad:
        return bad
    m = st.model
    if m is None:
        return detail(400, "model not loaded")
    if not body["messages"]:
        return detail(400, "messages not found")
    prompt = chat_prompt(body)
    stop = body["stop"]
    if m.kind == "rwkv":  # TextRWKV: first token of the user / assistant names
        user_code = tokenize(body["user_name"] or "User")[0]
        bot_code = tokenize(body["assistant_name"] or "Assistant")[0]
        if isinstance(stop, str):
            stop = [stop, f"\n\n{user_code}", f"\n\n{bot_code}"]
        elif isinstance(stop, list):
            stop = stop + [f"\n\n{user_code}", f"\n\n{bot_code}"]
        else:
            stop = DEFAULT_STOP + [f"\n\n{user_code}", f"\n\n{bot_code}"]
    elif stop == DEFAULT_STOP and not m.is_rwkv:
        stop = None
    entry["prompt"], entry["stop"] = prompt, stop
    return await answer(request, st, m, entry, control(data), True, body["stream"], prompt, stop,
                        effective_config(st, body))


async def completions(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    data, body, bad = await parse_body(request, COMPLETION_BODY)
    entry = record(st, request, data)
    if bad:
        return bad
    m = st.model
    if m is None:
        return detail(400, "model not loaded")
    prompt = body["prompt"]
    if prompt is None or prompt == "" or prompt == []:
        prompt = "\n"
    if isinstance(prompt, list):
        prompt = prompt[0]
    entry["prompt"], entry["stop"] = prompt, body["stop"]
    return await answer(request, st, m, entry, control(data), False, body["stream"], prompt, body["stop"],
                        effective_config(st, body))


def fake_embedding(text: str, dim: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    vec = [(digest[i % len(digest)] - 127.5) / 127.5 + 0.01 * (i + 1) for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec]


async def embeddings(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    data, body, bad = await parse_body(request, EMBEDDINGS_BODY)
    record(st, request, data)
    if bad:
        return bad
    m = st.model
    if m is None:
        return detail(400, "model not loaded")
    if m.kind != "rwkv":
        return detail(400, "model not support embedding")
    inp = body["input"]
    if inp is None or inp == "" or inp == [] or inp == [[]]:
        return detail(400, "input not found")
    try:
        await acquire_lock(st)
    except asyncio.CancelledError:
        st.cancelled += 1
        raise
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        texts = [inp] if isinstance(inp, str) else inp
        out, prompt_tokens = [], 0
        for item in texts:
            if isinstance(item, list):  # token ids: the real server decodes them with tiktoken
                text, n = " ".join(str(t) for t in item), len(item)
            else:
                text, n = item, len(tokenize(item))
            vec = fake_embedding(text, st.args.embedding_dim)
            prompt_tokens += n
            if body["encoding_format"] == "base64":
                out.append(base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode())
            else:
                out.append(vec)
        st.completed += 1
        data_ = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(out)]
        return json_response({"object": "list", "data": data_, "model": m.name,
                              "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
    finally:
        st.in_flight -= 1
        st.locked = False


def model_card(st: State) -> dict:
    name = st.model.name if st.model else "rwkv"
    return {"id": name, "object": "model", "owned_by": "rwkv", "root": name, "parent": None}


async def models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    return json_response({"object": "list", "data": [model_card(st), *FAKE_MODELS]})


async def one_model(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    model_id = request.match_info["model_id"]
    for fake in FAKE_MODELS:
        if fake["id"] == model_id:
            return json_response(fake)
    if "rwkv" in model_id.lower():
        return json_response(model_card(st))
    return detail(404, {"error": {"message": f"The model '{model_id}' does not exist",
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_not_found"}})


async def credit_grants(request: web.Request) -> web.Response:
    grant = {"object": "credit_grant", "grant_amount": 10000, "used_amount": 0, "effective_at": 1672531200,
             "expires_at": 33229440000}
    return json_response({"object": "credit_summary", "total_granted": 10000, "total_used": 0,
                          "total_available": 10000, "grants": {"object": "list", "data": [grant]}})


async def exit_(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    record(st, request, None)
    if st.deploy:
        return detail(403, "Forbidden")
    st.exit_calls += 1
    print("POST /exit called: the real RWKV-Runner kills itself here", flush=True)
    if st.args.exit_kills:
        os._exit(0)
    if request.transport is not None:  # the process dies before answering
        request.transport.abort()
    raise asyncio.CancelledError()


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return json_response(st.requests)
    if what == "stats":
        return json_response({
            "status": st.status, "model": st.model.name if st.model else None, "deploy": st.deploy,
            "in_flight": st.in_flight, "max_in_flight": st.max_in_flight, "waiting": st.waiting,
            "max_waiting": st.max_waiting, "cancelled": st.cancelled, "completed": st.completed,
            "failed": st.failed, "pings": st.pings, "exit_calls": st.exit_calls,
            "switch_calls": st.switch_calls, "received": len(st.requests), "requests": st.requests,
            "generations": st.generations})
    if what == "release":
        st.release.set()
        return json_response({"released": True})
    if what == "reset":
        st.requests.clear()
        st.release = asyncio.Event()
        st.reset_counters()
        return json_response({"reset": True})
    return detail(404, "Not Found")


@web.middleware
async def fastapi_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as e:
        resp = detail(405, "Method Not Allowed")
        resp.headers["Allow"] = ", ".join(sorted(e.allowed_methods))
        return resp
    except web.HTTPNotFound:
        return detail(404, "Not Found")


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "uvicorn"


def make_app(a: argparse.Namespace) -> web.Application:
    app = web.Application(middlewares=[fastapi_errors], client_max_size=64 * 1024 * 1024)
    app["state"] = State(a)
    app.on_response_prepare.append(server_header)
    r = app.router
    r.add_get("/", root, allow_head=False)
    r.add_get("/status", status, allow_head=False)
    r.add_post("/switch-model", switch_model)
    r.add_post("/update-config", update_config)
    for prefix in ("", "/v1"):
        r.add_post(f"{prefix}/chat/completions", chat_completions)
        r.add_post(f"{prefix}/completions", completions)
        r.add_post(f"{prefix}/embeddings", embeddings)
        r.add_post(f"{prefix}/engines/text-embedding-ada-002/embeddings", embeddings)
        r.add_get(f"{prefix}/models", models, allow_head=False)
        r.add_get(f"{prefix}/models/{{model_id}}", one_model, allow_head=False)
    r.add_get("/dashboard/billing/credit_grants", credit_grants, allow_head=False)
    r.add_post("/exit", exit_)
    r.add_route("*", "/_{what}", hooks)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RWKV-Runner backend-python test double")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--load-seconds", type=float, default=1.0, help="how long /switch-model loads")
    p.add_argument("--preload", default=None, help="start with this model path loaded (status 3)")
    p.add_argument("--ping-seconds", type=float, default=15.0, help="SSE ping comment interval")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the generated answer")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    p.add_argument("--device-name", default="CPU")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--exit-kills", action="store_true", help="POST /exit really ends the process")
    return p.parse_args(argv)


def main() -> None:
    a = parse_args()
    web.run_app(make_app(a), host=a.host, port=a.port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
