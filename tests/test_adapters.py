"""Each adapter's quirks, tested on the bytes the backends really send (backends.md part A)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from adapters.base import BackendTarget, Endpoint, FetchResult, State
from adapters.llamacpp import LlamaCppAdapter, _rewrite_error_lines
from adapters.prometheus_text import gauges
from adapters.tgi import TGIAdapter, _repair
from adapters.vllm import VLLMAdapter
from gateway.errors import CapabilityMissing, InvalidRequest, Overloaded


def target(**kw) -> BackendTarget:  # type: ignore[no-untyped-def]
    return BackendTarget("b", "http://up", **kw)


def fake_fetch(routes: dict[str, tuple[int, bytes]]):  # type: ignore[no-untyped-def]
    async def fetch(method, url, *, headers=None, body=None, timeout=5.0):  # type: ignore[no-untyped-def]
        path = url.removeprefix("http://up")
        if path not in routes:
            raise ConnectionError("refused")
        status, data = routes[path]
        return FetchResult(status, data, {})
    return fetch


# -- llama.cpp -------------------------------------------------------------------------------------
LC_MODELS = (b'{"object":"list","data":[{"id":"tiny","object":"model","owned_by":"llamacpp",'
             b'"meta":{"n_ctx":256,"n_ctx_train":512}}]}')


def test_llamacpp_probe_states_models_and_slot_load() -> None:
    a = LlamaCppAdapter(target())
    loading = fake_fetch(
        {"/health": (503, b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}')})
    assert asyncio.run(a.probe(loading)).state is State.LOADING
    ready = fake_fetch({"/health": (200, b'{"status":"ok"}'), "/v1/models": (200, LC_MODELS),
                        "/slots": (200, b'[{"id":0,"is_processing":true},{"id":1,"is_processing":false}]'),
                        "/props": (200, b'{"build_info":"b7000-0c1e570","total_slots":2}')})
    p = asyncio.run(a.probe(ready))
    assert p.state is State.READY and [(m.id, m.context_length) for m in p.models] == [("tiny", 256)]
    assert p.load == 1.0 and p.version == "b7000-0c1e570" and a.total_slots == 2
    b = LlamaCppAdapter(target())  # --no-slots but --metrics
    metrics = fake_fetch({"/health": (200, b'{"status":"ok"}'), "/v1/models": (200, LC_MODELS),
                          "/slots": (501, b"{}"), "/props": (200, b"{}"),
                          "/metrics": (200, b"# HELP x\nllamacpp:requests_processing 2\n"
                                            b"llamacpp:requests_deferred 3\n")})
    assert asyncio.run(b.probe(metrics)).load == 5.0 and b.load_source == "metrics"


def test_llamacpp_errors() -> None:
    a = LlamaCppAdapter(target())
    err = a.map_error(400, b'{"error":{"code":400,"message":"request (300 tokens) exceeds the available context '
                           b'size (256 tokens), try increasing it","type":"exceed_context_size_error",'
                           b'"n_prompt_tokens":300,"n_ctx":256}}')
    assert isinstance(err, InvalidRequest) and err.code == "context_length_exceeded" and err.status == 400
    err = a.map_error(501, b'{"error":{"code":501,"message":"This server does not support embeddings. Start it '
                           b'with `--embeddings`","type":"not_supported_error"}}')
    assert isinstance(err, CapabilityMissing) and "--embeddings" in err.message
    err = a.map_error(503, b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}')
    assert err.status == 503 and err.retryable and err.backend_state == "loading"


def test_llamacpp_usage_from_timings_and_old_error_lines() -> None:
    a = LlamaCppAdapter(target())
    assert a.extract_usage({"timings": {"prompt_n": 10, "cache_n": 2, "predicted_n": 5}}) == (12, 5)
    assert a.extract_usage({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == (3, 4)
    old = b'data: {"choices":[]}\n\nerror: {"code":500,"message":"boom","type":"server_error"}\n\ndata: [DONE]\n\n'
    fixed = _rewrite_error_lines(old)
    assert b'data: {"error":{"message":"boom","type":"server_error","param":null,"code":null}}' in fixed
    plain = b'data: {"choices":[{"delta":{"content":"error: no"}}]}\n\n'
    assert _rewrite_error_lines(plain) is plain


# -- vLLM ----------------------------------------------------------------------------------------
def test_vllm_probe_metrics_version_and_errors() -> None:
    a = VLLMAdapter(target())
    metrics = (b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
               b'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0\n'
               b'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n')
    f = fake_fetch({"/health": (200, b""), "/v1/models": (200, b'{"data":[{"id":"m","max_model_len":256}]}'),
                    "/metrics": (200, metrics), "/version": (200, b'{"version":"0.33.0"}')})
    p = asyncio.run(a.probe(f))
    assert p.state is State.READY and p.load == 7.0 and p.version == "0.33.0" and a.kv_cache_usage == 0.25
    assert p.models[0].context_length == 256
    assert asyncio.run(a.probe(fake_fetch({"/health": (503, b"")}))).state is State.DOWN
    flat = (b'{"object":"error","message":"This model\'s maximum context length is 256 tokens. However, you '
            b'requested 300","type":"BadRequestError","param":null,"code":400}')
    err = a.map_error(400, flat)
    assert err.code == "context_length_exceeded" and err.type == "invalid_request_error"
    nested = b'{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}'
    err = a.map_error(404, nested)
    assert err.status == 404 and err.type == "not_found_error" and err.param == "model"


def test_vllm_reasoning_field_rename() -> None:
    a = VLLMAdapter(target(reasoning_field="reasoning_content"))
    req = a.build_request(Endpoint.CHAT, {"model": "x", "messages": [{}], "stream": True}, "m", True)
    rw = a.stream_rewriter(req)
    assert rw is not None
    chunk = b'data: {"choices":[{"delta":{"reasoning":"think \\"reasoning\\": x"}}]}\n\n'
    assert rw(chunk) == b'data: {"choices":[{"delta":{"reasoning_content":"think \\"reasoning\\": x"}}]}\n\n'
    assert VLLMAdapter(target()).stream_rewriter(req) is None


# -- TGI -----------------------------------------------------------------------------------------
def test_tgi_request_fixes() -> None:
    a = TGIAdapter(target())
    a.model_id = "org/model"
    req = a.build_request(Endpoint.CHAT, {"model": "x", "messages": [{}], "top_p": 1.0, "presence_penalty": 0,
                                          "frequency_penalty": 0.5}, "org/model", False)
    body = orjson.loads(req.body)
    assert body["model"] == "tgi" and "top_p" not in body and "presence_penalty" not in body
    assert body["frequency_penalty"] == 0.5
    body = orjson.loads(a.build_request(Endpoint.CHAT, {"messages": [{}], "presence_penalty": 1.0, "top_p": 0.9},
                                        "my-lora", False).body)
    # TGI computes repetition_penalty = presence_penalty + 2: we want 1 + p/2 = 1.5
    assert body["presence_penalty"] + 2 == pytest.approx(1.5) and body["model"] == "my-lora" and body["top_p"] == 0.9


def test_tgi_stream_repairs() -> None:
    a = TGIAdapter(target())
    req = a.build_request(Endpoint.CHAT, {"messages": [{}], "stream": True}, "m", True)
    rw = a.stream_rewriter(req)
    assert rw is not None
    c1 = rw(b'data:{"object":"chat.completion.chunk","id":"","choices":[{"index":0,"delta":{"role":"assistant",'
            b'"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n')
    c2 = rw(b'data:{"object":"chat.completion.chunk","id":"","choices":[{"index":0,"delta":{"role":"assistant",'
            b'"content":""},"logprobs":null,"finish_reason":"stop_sequence"}],"usage":null}\n\n')
    id1 = orjson.loads(c1[5:])["id"]
    assert id1.startswith("chatcmpl-") and orjson.loads(c2[5:])["id"] == id1  # one id per stream
    assert orjson.loads(c2[5:])["choices"][0]["finish_reason"] == "stop"
    err = rw(b'data:{"error":{"message":"Model is overloaded","http_status_code":422}}\n\n')
    assert orjson.loads(err[5:]) == {"error": {"message": "Model is overloaded", "type": "rate_limit_error",
                                               "param": None, "code": "overloaded"}}
    first = a.first_event_error(b'data:{"error":{"message":"Model is overloaded","http_status_code":422}}\n\n')
    assert isinstance(first, Overloaded) and first.retryable
    assert a.first_event_error(c1) is None
    body = _repair(b'{"id":"","choices":[{"finish_reason":"eos_token"}]}', b"chatcmpl-1")
    assert orjson.loads(body) == {"id": "chatcmpl-1", "choices": [{"finish_reason": "stop"}]}


def test_tgi_errors_and_probe() -> None:
    a = TGIAdapter(target())
    assert isinstance(a.map_error(429, b'{"error":"Model is overloaded","error_type":"overloaded"}'), Overloaded)
    err = a.map_error(422, b'{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 512. '
                           b'Given: 500 `inputs` tokens and 100 `max_new_tokens`","error_type":"validation"}')
    assert err.status == 400 and err.code == "context_length_exceeded"
    err = a.map_error(422, b'{"error":"Input validation error: `top_p` must be > 0.0 and < 1.0",'
                           b'"error_type":"validation"}')
    assert err.status == 400 and err.type == "invalid_request_error"
    assert a.map_error(424, b'{"error":"Request failed during generation: x","error_type":"generation"}').status == 502
    info = (b'{"model_id":"org/model","max_input_tokens":1000,"max_total_tokens":2048,'
            b'"max_concurrent_requests":128,"version":"3.3.6"}')
    f = fake_fetch({"/health": (200, b""), "/info": (200, info),
                    "/metrics": (200, b"tgi_queue_size 2\ntgi_batch_current_size 3\n"),
                    "/api-doc/openapi.json": (200, b'{"paths":{"/generate":{}}}')})
    p = asyncio.run(a.probe(f))
    assert [(m.id, m.context_length) for m in p.models] == [("org/model", 2048)]
    assert p.load == 5.0 and a.max_concurrent_requests == 128 and a.native_completions is True
    req = a.build_request(Endpoint.COMPLETIONS, {"prompt": "Hi", "max_tokens": 5, "temperature": 0}, "org/model", True)
    assert req.url == "http://up/generate_stream" and not req.passthrough
    assert orjson.loads(req.body) == {"inputs": "Hi", "parameters": {"details": True, "max_new_tokens": 5}}


def test_tgi_generate_stream_translation() -> None:
    from adapters import tgi_generate
    a = TGIAdapter(target())
    a.native_completions = True
    req = a.build_request(Endpoint.COMPLETIONS, {"prompt": "Hi", "stream": True}, "org/model", True)

    async def src():  # type: ignore[no-untyped-def]
        yield (b'data:{"index":1,"token":{"id":5,"text":"Hi","logprob":-0.1,"special":false},'
               b'"generated_text":null,"details":null}\n\n')
        yield (b'data:{"index":2,"token":{"id":2,"text":"</s>","logprob":-0.01,"special":true},"generated_text":"Hi",'
               b'"details":{"finish_reason":"eos_token","generated_tokens":2,"seed":null,"input_length":12}}\n\n')

    async def collect() -> list[bytes]:
        return [c async for c in tgi_generate.translate_stream(src(), req)]

    out = b"".join(asyncio.run(collect()))
    events = [e for e in out.split(b"\n\n") if e]
    docs = [orjson.loads(e[6:]) for e in events[:-1]]
    assert docs[0]["choices"][0]["text"] == "Hi" and docs[0]["object"] == "text_completion"
    assert docs[1]["choices"][0]["finish_reason"] == "stop"
    assert docs[2]["usage"] == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    assert events[-1] == b"data: [DONE]"


def test_prometheus_gauges() -> None:
    text = '# TYPE a gauge\na{x="1"} 1.5\na{x="2"} 2\nab 7\nb 3\n'
    assert gauges(text, ("a", "b")) == {"a": 3.5, "b": 3.0}


def test_llamacpp_router_mode_models_residency_and_autoload() -> None:
    a = LlamaCppAdapter(target())
    models = (b'{"object":"list","data":['
              b'{"id":"a","object":"model","status":{"value":"loaded","args":["llama-server"]}},'
              b'{"id":"b","object":"model","status":{"value":"unloaded"}},'
              b'{"id":"c","object":"model","status":{"value":"unloaded","failed":true,"exit_code":1}}]}')
    f = fake_fetch({"/health": (200, b'{"status":"ok"}'), "/v1/models": (200, models),
                    "/props": (200, b'{"role":"router","max_instances":4,"models_autoload":false,"build_info":"b1"}')})
    p = asyncio.run(a.probe(f))
    assert a.router and p.load is None
    assert [(m.id, m.residency, m.cold) for m in p.models] == [("a", "loaded", False), ("b", "unloaded", True),
                                                               ("c", "failed", False)]
    req = a.build_request(Endpoint.CHAT, {"messages": [{}]}, "b", False)
    assert req.url == "http://up/v1/chat/completions?autoload=true" and orjson.loads(req.body)["model"] == "b"


def test_balancer_prefers_resident_models() -> None:
    from adapters.base import ServedModel
    from gateway.backends import NEED_CHAT, BackendRuntime
    from gateway.balancer import pick
    from gateway.routing import build_table

    def rt(name: str, residency: str | None) -> BackendRuntime:
        b = BackendRuntime(name, "llamacpp", "http://x", LlamaCppAdapter(BackendTarget(name, "http://x")))
        b.served, b.state = (ServedModel("m", None, residency),), State.READY
        return b

    warm, cold = rt("warm", "loaded"), rt("cold", "unloaded")
    route = build_table([], {"cold": cold, "warm": warm}).resolve("m")
    warm.in_flight = 5  # busy, yet still preferred over a load
    assert pick(route, NEED_CHAT).backend is warm
    assert pick(route, NEED_CHAT, exclude=(next(d for d in route.deployments if d.backend is warm),)).backend is cold
    # failed router models are not served at all
    failed = rt("f", "failed")
    assert build_table([], {"f": failed}).routes == []


@pytest.mark.parametrize(("code", "status", "etype"), [
    (40301, 404, "not_found_error"), (40302, 400, "invalid_request_error"), (40001, 400, "invalid_request_error"),
    (50002, 503, "server_error"), (50001, 502, "server_error"), (50005, 503, "server_error"),
])
def test_fastchat_worker_error_codes(code: int, status: int, etype: str) -> None:
    from adapters.fastchat import worker_error
    err = worker_error({"text": "**NETWORK ERROR DUE TO HIGH TRAFFIC.**", "error_code": code})
    assert (err.status, err.type) == (status, etype)
    assert err.retryable == (status in (502, 503))
    ctx = worker_error({"text": "This model's maximum context length is 512 tokens.", "error_code": 40303})
    assert ctx.status == 400 and ctx.code == "context_length_exceeded"
