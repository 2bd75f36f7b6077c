"""FastChat controller and model workers, spoken to directly: no FastChat API server needed
(backends.md part B §1; fastchat/serve/{controller,base_model_worker,model_worker}.py).

- The backend's URL is a controller (`GET /test_connection` says "success") or one worker.
  Workers are found through the controller (`/list_models`, then `/get_worker_address` per
  model until as many addresses are known as the controller's `/worker_get_status` counts
  workers; asked again only every 60 s or for a model with no live worker: each call skews the
  controller's queue estimates); from then on the gateway's own probes of each worker (`/worker_get_status`) decide
  whether it is alive: the controller keeps listing a dead worker for 90-180 s.
- Requests go to the least busy live worker of the model: its reported `queue_length` plus what
  the gateway sent it since that report.
- Chat messages are rendered with the worker's conversation template
  (`/worker_get_conv_template`, adapters/fastchat_conv.py); its `stop_str` and `stop_token_ids`
  are added; `echo` is off (the worker's default would repeat the prompt). `/count_token` and
  `/model_details` size `max_new_tokens` (no `max_tokens` = the rest of the context) and turn an
  over-long prompt into `context_length_exceeded` before generation.
- `/worker_generate_stream` sends NUL-delimited JSON objects with the CUMULATIVE text: turned into
  OpenAI deltas; usage comes from the last object; worker errors (`error_code`, HTTP 200) become
  proper errors: 4030x -> 400/404, 5000x -> 502/503 (retried elsewhere when nothing was sent).
- Embeddings via `/worker_get_embeddings` (HF model workers have it; vLLM workers do not).
- A controller's word is not trusted blindly (it could point the gateway, and clients' prompts, at
  any URL): a worker address must be a bare http(s) base URL on an allowed host (`worker_hosts`,
  default the controller's own host), else it is skipped and logged once (adapters/fastchat_hosts.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from adapters.records import records
from adapters.base import (Adapter, BackendTarget, Capabilities, EngineStats, Endpoint, Fetch, Probe, ServedModel,
                           State, UpstreamRequest, client_asked_usage, single_prompt)
from adapters.chunks import DONE, ChunkWriter
from adapters.fastchat_conv import render, stop_params
from adapters.fastchat_hosts import WorkerHosts
from adapters.openai_compatible import parse_error_body
from gateway.errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamUnavailable, status_error
from gateway.jsonio import dumps, loads_or_none

log = logging.getLogger("gateway.fastchat")
HEADERS = {"Content-Type": "application/json"}
MAX_DISCOVERY_CALLS = 16
REDISCOVER = 60.0  # seconds between asking the controller again for a served model's workers
CODE_STATUS = {40001: 400, 40302: 400, 40303: 400, 40301: 404, 50001: 502, 50002: 503, 50003: 502, 50004: 502,
               50005: 503, 50006: 503, 42901: 429, 42902: 429, 42903: 429}


@dataclass
class Worker:
    url: str
    models: list[str] = field(default_factory=list)
    queue_length: int = 0
    sent: int = 0  # requests sent since the last status report (which will count them)
    alive: bool = False
    convs: dict[str, dict[str, Any]] = field(default_factory=dict)
    context: dict[str, int] = field(default_factory=dict)


class FastChatAdapter(Adapter):
    kind: ClassVar[str] = "fastchat"
    default_ports: ClassVar[tuple[int, ...]] = (21001,)
    capabilities: ClassVar[Capabilities] = Capabilities(
        tools=False, logprobs=False, n=False, structured_output=False)  # no grammar: FC inference.py:81-99
    needs_prepare: ClassVar[bool] = True

    def __init__(self, target: BackendTarget) -> None:
        super().__init__(target)
        self.mode: str | None = None  # "controller" or "worker"
        self.workers: dict[str, Worker] = {}
        self.worker_allowed = WorkerHosts(target.name, target.url, getattr(target, "worker_hosts", None)).allowed
        self.discovered: dict[str, float] = {}  # model -> when its workers were last asked for

    # -- discovery and health --------------------------------------------------------------------
    async def probe(self, fetch: Fetch) -> Probe:
        url = self.target.url
        if self.mode is None:
            test = await _try(fetch, "GET", url + "/test_connection")
            if test is not None and test.status == 200 and test.body.strip() == b'"success"':
                self.mode = "controller"
            else:
                self.mode = "worker"
                self.workers = {url: Worker(url)}
        if self.mode == "controller":
            listed = await fetch("POST", url + "/list_models", headers=HEADERS)
            names = (loads_or_none(listed.body) or {}).get("models") or [] if listed.status == 200 else []
            if listed.status != 200:
                return Probe(State.DOWN, detail=f"controller /list_models answered HTTP {listed.status}")
            now = time.monotonic()
            # Discovery asks only for a new model, one with no live worker, or every REDISCOVER s:
            # each /get_worker_address adds 1 to a worker's queue estimate in the controller until
            # its next heartbeat (FC controller.py get_worker_address), skewing its dispatch.
            due = [n for n in names if isinstance(n, str) and not (
                now - self.discovered.get(n, -REDISCOVER) < REDISCOVER
                and any(w.alive and n in w.models for w in self.workers.values()))]
            if due:
                await self._discover(fetch, due, [n for n in names if isinstance(n, str) and n not in due])
                self.discovered.update(dict.fromkeys(due, now))
            self.discovered = {k: v for k, v in self.discovered.items() if k in names}
        for w in list(self.workers.values()):
            await self._probe_worker(fetch, w)
        alive = [w for w in self.workers.values() if w.alive]
        served: dict[str, int | None] = {}
        for w in alive:
            for m in w.models:
                served[m] = min(filter(None, (served.get(m), w.context.get(m))), default=None)
        if not alive:
            where = " registered" if self.mode == "controller" else ""
            return Probe(State.DOWN, detail=f"no live model worker{where}")
        load = float(sum(w.queue_length for w in alive))
        # A worker's queue_length is its requests holding its semaphore plus those waiting for it
        # (FC base_model_worker.py get_queue_length): only the sum is reported, so it is exported as
        # running and waiting stays absent. Each live worker holds one model (under its names).
        return Probe(State.READY, [ServedModel(m, c) for m, c in served.items()], load=load,
                     detail=f"{len(alive)} live worker(s)",
                     engine=EngineStats(running=load, models_loaded=len(alive)))

    async def _discover(self, fetch: Fetch, due: list[str], kept: list[str]) -> None:
        """Find the workers of the `due` models. The controller hands out one worker per call and
        has no route that lists them: ask each model until an address repeats. Under its default
        shortest_queue dispatch a repeat does not mean the last worker was found (with estimates
        0 and 5, the first worker comes back five times), so the controller's /worker_get_status
        is asked how many workers answer it (its `speed` sums theirs, 1 each: FC
        base_model_worker.py get_status) and the models are asked again in turn until that many
        addresses are known or each had MAX_DISCOVERY_CALLS."""
        url = self.target.url
        status = await _try(fetch, "POST", url + "/worker_get_status", headers=HEADERS)
        doc = loads_or_none(status.body) if status is not None and status.status == 200 else None
        speed = doc.get("speed") if isinstance(doc, dict) else None
        expected = int(speed) if isinstance(speed, (int, float)) and not isinstance(speed, bool) else 0
        known = {w.url for w in self.workers.values() if w.alive and any(m in w.models for m in kept)}
        calls = dict.fromkeys(due, 0)
        asking = list(due)
        first_pass = True
        while asking:
            for name in list(asking):
                repeated = False
                while calls[name] < MAX_DISCOVERY_CALLS:
                    calls[name] += 1
                    res = await fetch("POST", url + "/get_worker_address", headers=HEADERS,
                                      body=orjson.dumps({"model": name}))
                    addr = (loads_or_none(res.body) or {}).get("address") if res.status == 200 else None
                    if not isinstance(addr, str) or not addr:
                        asking.remove(name)  # no worker serves it (any more)
                        break
                    addr = addr.rstrip("/")
                    if addr in known:
                        repeated = True
                    else:
                        known.add(addr)
                        if self.worker_allowed(addr):
                            self.workers.setdefault(addr, Worker(addr))
                    if repeated or not first_pass:
                        break  # after the first pass: one call per model per turn spreads the skew
                if name in asking and (calls[name] >= MAX_DISCOVERY_CALLS or len(known) >= expected):
                    asking.remove(name)
            first_pass = False
            if len(known) >= expected:
                break

    async def _probe_worker(self, fetch: Fetch, w: Worker) -> None:
        res = await _try(fetch, "POST", w.url + "/worker_get_status", headers=HEADERS)
        doc = loads_or_none(res.body) if res is not None and res.status == 200 else None
        if not isinstance(doc, dict):
            w.alive = False
            return
        w.models = [m for m in doc.get("model_names") or [] if isinstance(m, str)]
        w.queue_length = int(doc.get("queue_length") or 0)
        w.sent = 0
        w.alive = True
        for m in w.models:
            if m not in w.convs:
                conv = await fetch("POST", w.url + "/worker_get_conv_template", headers=HEADERS,
                                   body=orjson.dumps({"model": m}))
                c = (loads_or_none(conv.body) or {}).get("conv") if conv.status == 200 else None
                if isinstance(c, dict):
                    w.convs[m] = c
            if m not in w.context:
                det = await fetch("POST", w.url + "/model_details", headers=HEADERS, body=orjson.dumps({"model": m}))
                n = (loads_or_none(det.body) or {}).get("context_length") if det.status == 200 else None
                if isinstance(n, int):
                    w.context[m] = n

    def pick_worker(self, model: str) -> Worker:
        best = None
        for w in self.workers.values():
            busy = w.queue_length + w.sent
            if w.alive and model in w.models and (best is None or busy < best.queue_length + best.sent):
                best = w
        if best is None:
            raise UpstreamUnavailable(f"backend {self.target.name}: no live FastChat worker serves {model!r}",
                                      code="no_live_worker")
        return best

    def connect_failed(self, request: UpstreamRequest) -> bool:
        """A worker refused the connection: it is dead whatever the controller still lists. True
        when another live worker can take the retry (the backend as a whole stays up)."""
        for w in self.workers.values():
            if request.url.startswith(w.url + "/"):
                w.alive = False
        return any(w.alive for w in self.workers.values())

    # -- requests ------------------------------------------------------------------------------
    async def prepare(self, endpoint: Endpoint, body: dict[str, Any], upstream_model: str, stream: bool,
                      fetch: Fetch) -> UpstreamRequest:
        w = self.pick_worker(upstream_model)
        if endpoint is Endpoint.EMBEDDINGS:
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
                raise InvalidRequest("FastChat workers embed strings (not token arrays).", param="input")
            w.sent += 1
            return UpstreamRequest("POST", w.url + "/worker_get_embeddings", HEADERS,
                                   dumps({"model": upstream_model, "input": inputs}), False, passthrough=False,
                                   upstream_model=upstream_model)
        conv = w.convs.get(upstream_model) or {}
        if endpoint is Endpoint.CHAT:
            if not conv:
                raise UpstreamUnavailable(f"backend {self.target.name}: no conversation template yet",
                                          code="no_template")
            prompt = render(conv, body.get("messages") or [])
        else:
            prompt = single_prompt(body)
            if prompt is None:
                raise InvalidRequest("FastChat workers complete one prompt string per request.", param="prompt")
        params: dict[str, Any] = {"model": upstream_model, "prompt": prompt, "echo": False,
                                  "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
                                  "top_k": body.get("top_k", -1)}
        for key in ("presence_penalty", "frequency_penalty", "repetition_penalty", "seed"):
            if body.get(key) is not None:
                params[key] = body[key]
        params["stop"], stop_ids = stop_params(conv, body.get("stop"))
        if stop_ids:
            params["stop_token_ids"] = stop_ids
        wanted = body.get("max_completion_tokens")
        if wanted is None:  # absent or an explicit null (SDKs send them): max_tokens still counts
            wanted = body.get("max_tokens")
        params["max_new_tokens"] = await self._max_new_tokens(fetch, w, upstream_model, prompt, wanted)
        w.sent += 1
        asked = client_asked_usage(body)
        path = "/worker_generate_stream" if stream else "/worker_generate"
        return UpstreamRequest("POST", w.url + path, HEADERS, dumps(params), stream, strip_usage=stream and not asked,
                               passthrough=False, upstream_model=upstream_model)

    async def _max_new_tokens(self, fetch: Fetch, w: Worker, model: str, prompt: str, asked: Any) -> int:
        ctx = w.context.get(model)
        limit = asked if isinstance(asked, int) and asked > 0 else 1 << 20
        if ctx is None:
            return limit if limit != 1 << 20 else 256  # the worker's own default
        try:
            res = await fetch("POST", w.url + "/count_token", headers=HEADERS,
                              body=orjson.dumps({"model": model, "prompt": prompt}))
        except (ConnectionError, TimeoutError) as exc:
            w.alive = False  # dead, whatever the controller still lists
            err = UpstreamUnavailable(f"backend {self.target.name}: worker unreachable ({exc})", status=502,
                                      code="upstream_connect_failed")
            err.retry_same_backend = any(x.alive for x in self.workers.values())
            raise err from exc
        count = (loads_or_none(res.body) or {}).get("count") if res.status == 200 else None
        if not isinstance(count, int):
            return min(limit, ctx)
        # The HF worker keeps the prompt's last `ctx - max_new_tokens - 1` tokens (FC inference.py:95-99):
        # one token less of room, or the first prompt token (BOS) is cut. (FastChat's own API server
        # has this off-by-one, openai_api_server.py:155-177.)
        room = ctx - count - 1
        if room <= 0:
            raise InvalidRequest(f"This model's maximum context length is {ctx} tokens. However, your messages "
                                 f"resulted in {count} tokens. Please reduce the length of the messages.",
                                 code="context_length_exceeded", param="messages")
        return min(limit, room)

    # -- answers -------------------------------------------------------------------------------
    def translate_body(self, endpoint: Endpoint, body: bytes, headers: Any = None, request: Any = None) -> bytes:
        doc = loads_or_none(body)
        if not isinstance(doc, dict):
            raise status_error(502, f"backend {self.target.name}: unreadable worker answer")
        model = request.upstream_model if request is not None else ""
        if doc.get("error_code"):
            raise worker_error(doc)
        if endpoint is Endpoint.EMBEDDINGS:
            vectors = doc.get("embedding") or []
            data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(vectors)]
            n = int(doc.get("token_num") or 0)
            return orjson.dumps({"object": "list", "data": data, "model": model,
                                 "usage": {"prompt_tokens": n, "total_tokens": n}})
        usage = _usage(doc)
        finish = doc.get("finish_reason") or "stop"
        if endpoint is Endpoint.CHAT:
            choice = {"index": 0, "message": {"role": "assistant", "content": doc.get("text", "")}, "logprobs": None,
                      "finish_reason": finish}
            return orjson.dumps({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                                 "created": int(time.time()), "model": model, "choices": [choice], "usage": usage})
        choice = {"index": 0, "text": doc.get("text", ""), "logprobs": None, "finish_reason": finish}
        return orjson.dumps({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                             "model": model, "choices": [choice], "usage": usage})

    def translate_stream(self, endpoint: Endpoint, chunks: AsyncIterator[bytes],
                         request: UpstreamRequest) -> AsyncIterator[bytes]:
        return _cumulative_to_sse(endpoint, chunks, request.upstream_model)

    def map_error(self, status: int, body: bytes) -> GatewayError:
        doc = loads_or_none(body)
        if isinstance(doc, dict) and doc.get("error_code"):
            return worker_error(doc)
        return status_error(status, parse_error_body(body)[0] or f"backend {self.target.name} answered HTTP {status}")


async def _cumulative_to_sse(endpoint: Endpoint, chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    w = ChunkWriter(endpoint, model)
    previous = ""
    finish: str | None = None
    usage: dict[str, int] | None = None
    first = True
    async for raw in records(chunks, b"\0"):
        doc = loads_or_none(raw)
        if not isinstance(doc, dict):
            continue
        if doc.get("error_code"):
            yield worker_error(doc).sse_event() + DONE
            return
        text = str(doc.get("text") or "").replace("\ufffd", "")  # half a UTF-8 character so far
        delta = text[len(previous):]
        if len(text) > len(previous):
            previous = text
        if delta:
            yield w.piece(delta, role="assistant") if first and w.chat else w.piece(delta)
            first = False
        finish = doc.get("finish_reason") or finish
        usage = _usage(doc) if doc.get("usage") else usage
    tail = w.piece("", finish or "stop")
    if usage is not None:
        tail += w.usage(usage["prompt_tokens"], usage["completion_tokens"])
    yield tail + DONE


def worker_error(doc: dict[str, Any]) -> GatewayError:
    code = int(doc.get("error_code") or 0)
    message = str(doc.get("text") or doc.get("message") or f"FastChat error {code}")
    if code == 40301:
        return ModelNotFound(message, param="model")
    if code == 40303:
        return InvalidRequest(message, code="context_length_exceeded", param="messages")
    return status_error(CODE_STATUS.get(code, 502), message, code=f"fastchat_{code}")


def _usage(doc: dict[str, Any]) -> dict[str, int]:
    u = doc.get("usage") or {}
    p, c = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _try(fetch: Fetch, method: str, url: str, **kw: Any) -> Any:
    try:
        return await fetch(method, url, **kw)
    except (ConnectionError, TimeoutError):
        return None

