"""Messages API (OpenAI layer): /v1/chat/completions and /chat_tokenize, with a port of chat.rs' ChatState."""

from __future__ import annotations

import json
import re
import time
from contextlib import aclosing

from aiohttp import web

from .bodies import control, read_json
from .defaults import DEFAULT_TOOL_PROMPT
from .errors import InferError, json_response
from .generation import generate_internal, stream_internal
from .model import GenReq, Tok, simple_tokens
from .specs import CHAT_REQUEST
from .sse import Sse, stream_headers, truncated
from .state import State


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
        "grammar": fmt,  # lib.rs try_into_generate: response_format becomes the grammar
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
