"""The chat / completion routes (routes/completion.py): prompt, stop list, eval, JSON or SSE answer."""

from __future__ import annotations

import asyncio
import datetime
import json
import random
import re
import string
import time
from typing import Any, Callable

from aiohttp import web

from .generation import generate_albatross, generate_llama, generate_rwkv
from .hooks import record
from .responses import detail, json_response
from .schemas import CHAT_BODY, COMPLETION_BODY, MODEL_CONFIG, parse_body
from .state import Model, State, acquire_lock
from .tokens import DEFAULT_STOP, tokenize


PRESYSTEM = ("{user}: hi\n\n{bot}: Hi. I am your assistant and I will provide expert full response in full "
             "details. Please feel free to ask any question and I will always answer it.\n\n")


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


async def run_eval(st: State, m: Model, entry: dict, ctl: dict, chat: bool, prompt: str, stop: Any,
                   config: dict, emit: Callable[[str], Any] | None) -> dict | None:
    """routes/completion.py eval (legacy engine): stream chunks through emit, else return the doc.
    An Albatross model (eval_albatross) takes no lock and dumps stream chunks compactly."""
    if not m.albatross:
        await acquire_lock(st)
    dump = (lambda doc: json.dumps(doc, separators=(",", ":"))) if m.albatross else json.dumps
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
        if m.albatross:
            agen = generate_albatross(st, ctl, text, max_tokens, stop)
        elif m.kind == "rwkv":
            agen = generate_rwkv(st, ctl, text, max_tokens, stop, len(tokenize(prompt)) if prompt else 0)
        else:
            agen = generate_llama(st, ctl, text, max_tokens, stop, chat)
        response, prompt_tokens, completion_tokens = "", 0, 0
        try:
            if m.kind == "rwkv" and prompt == "":  # generate(): no prefill -> `logits` unbound
                raise UnboundLocalError("cannot access local variable 'logits' where it is not associated "
                                        "with a value")
            if ctl.get("prefill_block") and not m.albatross:
                # the legacy engine prefills in run_rnn, synchronously inside the async handler
                # (utils/rwkv.py generate :291, called from routes/completion.py eval): the event loop,
                # and so /status, answers nothing meanwhile
                time.sleep(float(ctl["prefill_block"]))
            # The loop variables are read after the loop: the last values are the answer and its usage.
            async for response, delta, prompt_tokens, completion_tokens in agen:  # noqa: B007
                if emit is not None:
                    choice = ({"delta": {"content": delta}, "index": 0, "finish_reason": None} if chat
                              else {"text": delta, "index": 0, "finish_reason": None})
                    await emit(dump({"object": obj, "model": name, "choices": [choice]}))
        except Exception as e:  # `except Exception as e: print(e)`
            st.failed += 1
            print(e, flush=True)
        if emit is not None:
            choice = ({"delta": {}, "index": 0, "finish_reason": "stop"} if chat
                      else {"text": "", "index": 0, "finish_reason": "stop"})
            await emit(dump({"object": obj, "model": name, "choices": [choice]}))
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
        if not m.albatross:
            st.locked = False
        gen["end"] = time.monotonic()


class ClientGone(BaseException):
    """A write to a client that went away (not a generation failure: bypasses `except Exception`)."""


def utc_now() -> str:
    """str(datetime.utcnow()) as sse-starlette 1.6.5 formats its ping comment."""
    return str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))


class ToolStream:
    """routes/completion.py async_generator_stream_response_tool_call (RR 64269f0 :893-1100), the stream
    of an RWKV model given `tools`: content is held back until the answer is judged "common" (4 line
    feeds, > 60 characters, or > 44 without a code fence), then sent as ONE chunk holding all of it;
    an answer that ends unjudged is sent whole at the end. A "name ```...tool_call(" head makes it a
    call instead: a role chunk, the call's id and name, then each token as argument text, its quote and
    paren stack deciding where the arguments end (a '=' after a closed quote pair becomes ':'), and a
    "\n\n" or the closing paren ends the stream at once with finish_reason tool_calls. Ported as is,
    quirks included (a lone '"' closes its own pair: the keyword is looked for twice)."""

    PAIRS = (("```", "```"), ("(", ")"), ('"', '"'), ("'", "'"))

    def __init__(self, emit: Callable[[str], Any]) -> None:
        self.emit, self.content, self.common = emit, "", False
        self.call, self.done, self.colon, self.stack = False, False, False, ["```", "("]
        self.id = tool_call_id()

    async def finish(self) -> None:
        obj, name = self.last
        if not self.call:
            await self.emit(json.dumps({"object": obj, "model": name, "choices": [
                {"index": 0, "delta": {"content": self.content}, "finish_reason": None}]}))
            await self.emit(json.dumps({"object": obj, "model": name, "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        else:
            await self.emit(json.dumps({"object": obj, "model": name, "choices": [
                {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
        await self.emit("[DONE]")
        self.done = True  # the real one stops reading the generator here

    async def __call__(self, data: str) -> None:
        if self.done:
            return
        if self.common:
            await self.emit(data)
            return
        if data == "[DONE]":
            await self.finish()
            return
        doc = json.loads(data)
        self.last = doc["object"], doc["model"]
        delta = doc["choices"][0]["delta"]
        if delta == {}:
            return
        d: str = delta["content"]
        self.content += d
        if self.call:
            await self.argument(doc, d)
            return
        c = self.content
        head = re.search(r"([\w]+)[\s]*```[\w\s]*tool_call\(", c)
        if head is None and (c.count("\n") >= 4 or len(c) > 60 or (len(c) > 44 and "```" not in c)):
            self.common = True
            delta["content"] = c
            await self.emit(json.dumps(doc))
        elif head is not None:
            self.call = True
            delta["role"], delta["content"] = "assistant", None
            await self.emit(json.dumps(doc))
            doc["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "id": self.id, "type": "function", "function": {
                "name": head.group(1), "arguments": ""}}]}
            await self.emit(json.dumps(doc))
            quote = '"' if d.strip().endswith('"') else "'" if d.strip().endswith("'") else ""
            doc["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {"arguments": "{" + quote}}]}
            await self.emit(json.dumps(doc))

    async def argument(self, doc: dict, d: str) -> None:
        if "\n\n" in self.content:
            await self.finish()
            return
        stack = self.stack
        for pair in self.PAIRS:
            if self.done:
                break
            for keyword in pair:
                if keyword not in d:
                    continue
                stack.append(keyword)
                if pair[0] in stack and pair[1] in stack and (
                        (pair[0] != pair[1] and stack.index(pair[0]) < stack.index(pair[1]))
                        or (pair[0] == pair[1] and stack.count(pair[0]) >= 2)):
                    stack.remove(pair[0])
                    stack.remove(pair[1])
                    self.colon = self.colon or pair[0] in ('"', "'")
                    if "(" not in stack and ")" not in stack:
                        quote = '"' if d.strip().startswith('"') else "'" if d.strip().startswith("'") else ""
                        doc["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {
                            "arguments": quote + "}"}}]}
                        await self.emit(json.dumps(doc))
                        await self.finish()
                        break
        if self.done:
            return
        if "=" in d and self.colon:
            d, self.colon = d.replace("=", ":"), False
        doc["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {"arguments": d}}]}
        await self.emit(json.dumps(doc))


def tool_call_id() -> str:
    """generate_tool_call_id (RR completion.py:891)."""
    return "call_" + "".join(random.sample(string.ascii_letters + string.digits, 24))


def tool_call_answer(doc: dict) -> dict:
    """postprocess_response (RR completion.py:1141-1174): a whole answer holding a "name ```tool_call(...)```"
    block becomes one call; arguments are its quoted 'key'='value' pairs (other shapes give {})."""
    message = doc["choices"][0]["message"]
    m = re.search(r"([\w]+)[\s]*```[\w\s]*tool_call(.*?)\n*```", message["content"], re.DOTALL)
    if m is None:
        return doc
    args = dict(re.findall(r'[\'"]([^\'"]+)[\'"]\s*=\s*[\'"]([^\'"]+)[\'"]', m.group(2).strip()))
    message["tool_calls"] = [{"id": tool_call_id(), "type": "function", "function": {
        "name": m.group(1), "arguments": json.dumps(args)}}]
    message["content"] = None
    doc["choices"][0]["finish_reason"] = "tool_calls"
    return doc


async def answer(request: web.Request, st: State, m: Model, entry: dict, ctl: dict, chat: bool, stream: bool,
                 prompt: str, stop: Any, config: dict, tools: bool = False) -> web.StreamResponse:
    try:
        if not stream:
            doc = await run_eval(st, m, entry, ctl, chat, prompt, stop, config, None)
            return json_response(tool_call_answer(doc) if tools and doc is not None else doc)
        if m.albatross:  # albatross_streaming_response: a plain StreamingResponse, no pings
            resp = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                               "Content-Type": "text/event-stream; charset=utf-8"})
        else:
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
            if m.albatross:  # encode_sse_data
                await send(f"data: {data}\r\n\r\n".encode())
                return
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

        pinger = asyncio.ensure_future(ping() if not m.albatross else asyncio.sleep(0))
        try:
            await run_eval(st, m, entry, ctl, chat, prompt, stop, config, ToolStream(emit) if tools else emit)
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
    # chat_with_tools (RR completion.py:838-843); its system prompt listing the tools is not reproduced
    tools = m.is_rwkv and ((body["tool_choice"] != "none" and bool(body["tools"]))
                           or body["messages"][-1]["role"] == "tool")
    tool_stream = tools and body["messages"][-1]["role"] != "tool"
    return await answer(request, st, m, entry, control(data), True, body["stream"], prompt, stop,
                        effective_config(st, body), tool_stream)


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
