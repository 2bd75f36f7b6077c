"""vLLM behaviour the OpenAI double (tests/doubles/openai_server.py) adds on request: tool calls and
idle sleep.

Tool calls (`x_double.tool_calls: [{"name", "arguments": {...}}, ...]` on a request with `tools`), as
vLLM's chat serving sends them with a tool parser (hermes and the like): ids `chatcmpl-tool-<uuid>`
(vllm/entrypoints/chat_utils.py make_tool_call_id), non-stream `message.tool_calls` with JSON-string
arguments and `content: null`; streamed, per call one delta with `index`, `id`, `type`, `function.name`
and then argument fragments carrying only `index` and `function.arguments`; finish_reason
"tool_calls" (vllm/entrypoints/openai/chat_completion/serving.py).

Idle sleep: `vllm:engine_sleep_state{sleep_state="awake"|"weights_offloaded"|"discard_all"}` on
/metrics (vllm/v1/metrics/loggers.py: awake = 0 means sleeping, weights_offloaded = 1 is level 1,
discard_all = 1 level 2); `--sleep-idle-ttl` wakes the engine on the next inference POST, while
/health and /metrics neither wake it nor count as activity (vllm/entrypoints/serve/idle_sleep/
middleware.py @eaeb4fe, manager.py @424a465). POST /_sleep?level=N puts the double to sleep (0 wakes
it); /metrics answers 404 until then, unless `--max-num-seqs` gives it the scheduler gauges.

Scheduler gauges (`--max-num-seqs N`, vLLM's scheduler limit): `vllm:num_requests_running` (requests in
the batch, at most N), `vllm:num_requests_waiting` (the rest of those in flight) and
`vllm:kv_cache_usage_perc` ("KV-cache usage. 1 means 100 percent usage."), labels `model_name` and
`engine` as vllm/v1/metrics/loggers.py (0.32) declares them; the double's answers fit one 16-token
block per running sequence, so usage = running / `--num-gpu-blocks`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web


def planned_calls(body: dict, ctl: dict) -> list[dict] | None:
    calls = ctl.get("tool_calls")
    if not body.get("tools") or not isinstance(calls, list):
        return None
    return [{"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}} for c in calls]


def tool_message(calls: list[dict]) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": calls}


def tool_deltas(calls: list[dict]) -> list[dict]:
    """The stream's deltas for `calls`: a head per call, then its arguments in two fragments."""
    out: list[dict] = []
    for i, c in enumerate(calls):
        out.append({"tool_calls": [{"id": c["id"], "type": "function", "index": i,
                                    "function": {"name": c["function"]["name"]}}]})
        args = c["function"]["arguments"]
        cut = len(args) // 2
        for frag in (args[:cut], args[cut:]):
            out.append({"tool_calls": [{"index": i, "function": {"arguments": frag}}]})
    return out


def wake_on_inference(app: web.Application) -> None:
    if app.get("sleep_level"):
        app["sleep_level"] = 0
        app["wakeups"] = app.get("wakeups", 0) + 1


def scheduler_lines(app: web.Application) -> list[str]:
    seqs, st = app.get("max_num_seqs"), app["state"]
    if not seqs:
        return []
    running = min(st.in_flight, seqs)
    labels = f'{{model_name="{st.models[0]}",engine="0"}}'
    out = []
    for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", st.in_flight - running),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             running / app["num_gpu_blocks"])):
        out += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name}{labels} {float(value)}"]
    return out


async def metrics(request: web.Request) -> web.Response:
    level: Any = request.app.get("sleep_level")
    sched = scheduler_lines(request.app)
    if level is None:
        if not sched:
            raise web.HTTPNotFound()
        return web.Response(text="\n".join(sched) + "\n", content_type="text/plain")
    model = request.app["state"].models[0]
    lines = sched + ["# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is sleeping; "
             "awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; "
             "discard_all = 1 means sleep level 2.", "# TYPE vllm:engine_sleep_state gauge"]
    for state, value in (("awake", level == 0), ("weights_offloaded", level == 1), ("discard_all", level == 2)):
        lines.append(f'vllm:engine_sleep_state{{engine="0",model_name="{model}",sleep_state="{state}"}} '
                     f"{float(value)}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def set_sleep(request: web.Request) -> web.Response:
    request.app["sleep_level"] = int(request.query.get("level", 1))
    return web.json_response({"sleep_level": request.app["sleep_level"], "wakeups": request.app.get("wakeups", 0)})
