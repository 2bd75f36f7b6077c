"""Native responses (api.ChatResponse / api.GenerateResponse) and the generation stream that
produces them for one validated request."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .gojson import now_ns, rfc3339nano
from .catalog import ModelInfo
from .scheduler import Lease, State
from .tokens import token_id


# ---------------------------------------------------------------------------------------------------
# Native responses (api.ChatResponse / api.GenerateResponse as Go marshals them)
# ---------------------------------------------------------------------------------------------------

METRIC_KEYS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
               "eval_duration")


def chat_obj(model: str, created: int, content: str = "", done: bool = False, done_reason: str = "",
             thinking: str = "", tool_calls: list | None = None, metrics: dict | None = None,
             logprobs: list | None = None) -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        msg["thinking"] = thinking
    if tool_calls:
        msg["tool_calls"] = tool_calls
    o: dict[str, Any] = {"model": model, "created_at": rfc3339nano(created), "message": msg, "done": done}
    if done_reason:
        o["done_reason"] = done_reason
    if logprobs:  # api.ChatResponse: Logprobs sits after DebugInfo, before the embedded Metrics
        o["logprobs"] = logprobs
    for k in METRIC_KEYS:
        if metrics and metrics.get(k):
            o[k] = metrics[k]
    return o


def generate_obj(model: str, created: int, response: str = "", done: bool = False, done_reason: str = "",
                 thinking: str = "", context: list[int] | None = None, metrics: dict | None = None,
                 logprobs: list | None = None) -> dict:
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
    if logprobs:  # api.GenerateResponse: Logprobs is its last field
        o["logprobs"] = logprobs
    return o


def token_logprobs(tok: str, top: int) -> list[dict]:
    """server/logprob.go toAPILogprobs: token, logprob, bytes (the token's UTF-8), top_logprobs (omitempty)."""
    rnd = random.Random(tok)
    lp: dict[str, Any] = {"token": tok, "logprob": -round(rnd.random() * 2, 4), "bytes": list(tok.encode())}
    if top:
        alts = [tok] + [f"{tok}~{i}" for i in range(1, top)]
        lp["top_logprobs"] = [{"token": a, "logprob": lp["logprob"] - i, "bytes": list(a.encode())}
                              for i, a in enumerate(alts)]
    return [lp]


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
    logprobs: bool = False
    top_logprobs: int = 0


async def produce(st: State, job: Job) -> AsyncIterator[dict]:
    """The handler's channel: native response objects, or a final {"error": …} (mid-stream failure)."""
    ctl = job.ctl
    delay = float(ctl.get("delay", 0) or 0)
    error_after = None if ctl.get("error_after") is None else int(ctl["error_after"])
    err_msg = ctl.get("error", "an error was encountered while running the model: unexpected EOF")
    gen_start = time.monotonic_ns()
    chat = job.kind == "chat"

    def obj(content: str = "", thinking: str = "", tool_calls: list | None = None) -> dict:
        lps = token_logprobs(content, job.top_logprobs) if job.logprobs and content else None
        if chat:
            return chat_obj(job.model, now_ns(), content=content, thinking=thinking, tool_calls=tool_calls,
                            logprobs=lps)
        return generate_obj(job.model, now_ns(), response=content, thinking=thinking, logprobs=lps)

    steps: list[dict] = [{"thinking": t} for t in job.thinking]
    calls = job.tool_calls if (chat and job.has_tools) else []
    # One tool call per line, as soon as it parses, with a stream-wide function.index: the parser numbers
    # calls across the stream (ollama tools/tools.go:148-157 `Index: p.n; p.n++`) and ChatHandler sends
    # each chunk's calls on their own line (server/routes.go:2862-2870 `res.Message.ToolCalls = toolCalls`).
    steps += [{"tool_calls": [c]} for c in calls] if calls else [{"content": t} for t in job.tokens]
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
        lps = [lp for i in items for lp in i.get("logprobs", [])]  # routes.go:2404 allLogprobs
        if lps:
            last["logprobs"] = lps
        return last
    out: dict[str, Any] = {}
    for k, v in last.items():
        if k == "response":
            out[k] = content
            if thinking:
                out["thinking"] = thinking
        elif k != "thinking":
            out[k] = v
    lps = [lp for i in items for lp in i.get("logprobs", [])]  # routes.go:763 allLogprobs
    if lps:
        out["logprobs"] = lps
    return out
