"""Pure parts, tested directly: SSE tap, routing table rules, balancer, error parsing, fields."""

from __future__ import annotations

import asyncio

import pytest

from adapters import get_adapter
from adapters.base import BackendTarget, Endpoint, ServedModel, State
from adapters.openai_compatible import parse_error_body
from gateway.backends import NEED_CHAT, NEED_N, NEED_TOOLS, BackendRuntime
from gateway.balancer import pick
from gateway.errors import CapabilityMissing, InvalidRequest, ModelNotFound, UpstreamUnavailable
from gateway.protocol import routing_fields
from gateway.routing import build_table
from gateway.settings import GatewaySettings
from gateway.streaming import StreamTap, complete_end, relay_events, stream_end


def backend(name: str, kind: str = "openai", served: tuple[str, ...] = (), state: State = State.READY,
            weight: float = 1.0) -> BackendRuntime:
    b = BackendRuntime(name, kind, "http://x", get_adapter(kind)(BackendTarget(name, "http://x")), weight)
    b.served = tuple(ServedModel(s) for s in served)
    b.state = state
    return b


# -- SSE -----------------------------------------------------------------------------------------
def test_complete_end_handles_all_framings() -> None:
    assert complete_end(b"data: a\n\ndata: b") == 9
    assert complete_end(b"data: a\r\n\r\ndata: b\r\n\r\n") == 22
    assert complete_end(b"data: partial") == 0


def relay(chunks: list[bytes], strip: bool) -> tuple[list[bytes], StreamTap]:
    sent: list[bytes] = []

    async def source():  # type: ignore[no-untyped-def]
        for c in chunks:
            yield c

    async def send(msg):  # type: ignore[no-untyped-def]
        sent.append(msg["body"])

    tap = StreamTap(strip)
    asyncio.run(relay_events(source(), send, tap))
    return sent, tap


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'


def test_relay_passes_bytes_through_one_write_per_read_and_strips_added_usage() -> None:
    c1 = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    sent, tap = relay([c1, USAGE + b"data: [DONE]\n\n"], strip=True)
    assert sent == [c1, b"data: [DONE]\n\n"]
    assert (tap.prompt_tokens, tap.completion_tokens, tap.done) == (3, 4, True)
    sent, _ = relay([c1, USAGE + b"data: [DONE]\n\n"], strip=False)
    assert sent == [c1, USAGE + b"data: [DONE]\n\n"]


def test_relay_holds_back_only_an_unfinished_event() -> None:
    sent, tap = relay([b"data: {\"a\"", b":1}\n\ndata: [DO", b"NE]\r\n\r\n"], strip=False)
    assert sent == [b'data: {"a":1}\n\n', b"data: [DONE]\r\n\r\n"]
    assert tap.done
    # keepalive comments pass through untouched
    sent, _ = relay([b": ping\r\n\r\n", b"data: [DONE]\n\n"], strip=False)
    assert sent[0] == b": ping\r\n\r\n"


def test_stream_end() -> None:
    tap = StreamTap(False)
    assert b"stream_truncated" in stream_end(tap, None) and stream_end(tap, None).endswith(b"data: [DONE]\n\n")
    tap.error = True  # upstream already sent its own error event: only [DONE] is added
    assert stream_end(tap, None) == b"data: [DONE]\n\n"
    tap.done = True
    assert stream_end(tap, None) == b""


# -- routing -------------------------------------------------------------------------------------
def settings(models: list[dict], names: list[str]) -> GatewaySettings:
    return GatewaySettings(backends=[{"name": n, "kind": "openai", "url": "http://x"} for n in names],
                           models=models)


def test_table_configured_discovered_and_hidden_upstream_names() -> None:
    bs = {"a": backend("a", served=("Qwen/Qwen2.5-7B", "other")), "b": backend("b", served=("q.gguf",)),
          "c": backend("c", served=("other",))}
    s = settings([{"name": "qwen", "aliases": ["q"], "backends": [{"backend": "a", "model": "Qwen/Qwen2.5-7B"}, "b"]}],
                 ["a", "b", "c"])
    t = build_table(s.models, bs)
    route = t.resolve("q")
    assert route.name == "qwen"
    # a backend serving exactly one model maps `backends: [b]` to it
    deployments = [(d.backend.name, d.upstream_model) for d in route.deployments]
    assert deployments == [("a", "Qwen/Qwen2.5-7B"), ("b", "q.gguf")]
    assert sorted(r.name for r in t.routes) == ["other", "qwen"]
    assert [d.backend.name for d in t.resolve("other").deployments] == ["a", "c"]
    with pytest.raises(ModelNotFound):
        t.resolve("Qwen/Qwen2.5-7B")


def test_balancer_least_outstanding_weights_states_and_capabilities() -> None:
    a, b = backend("a", served=("m",)), backend("b", served=("m",), weight=2)
    t = build_table([], {"a": a, "b": b})
    r = t.resolve("m")
    a.in_flight, b.in_flight = 1, 2
    assert pick(r, NEED_CHAT).backend is b  # (2+1)/2 < (1+1)/1
    a.in_flight = 0
    assert pick(r, NEED_CHAT).backend is a
    a.state = State.LOADING
    assert pick(r, NEED_CHAT).backend is b
    b.state = State.DOWN
    with pytest.raises(UpstreamUnavailable):
        pick(r, NEED_CHAT)
    tgi = backend("t", kind="tgi", served=("x",))
    r2 = build_table([], {"t": tgi}).resolve("x")
    with pytest.raises(CapabilityMissing, match="n > 1"):
        pick(r2, NEED_CHAT | NEED_N)
    assert pick(r2, NEED_CHAT | NEED_TOOLS).backend is tgi


# -- errors and request fields -------------------------------------------------------------------
@pytest.mark.parametrize(("body", "expected"), [
    (b'{"error":{"message":"m","type":"invalid_request_error","param":"p","code":"c"}}',
     ("m", "invalid_request_error", "c", "p")),
    (b'{"error":{"code":400,"message":"too long","type":"exceed_context_size_error"}}',
     ("too long", "exceed_context_size_error", None, None)),
    (b'{"object":"error","message":"flat","type":"BadRequestError","param":null,"code":400}',
     ("flat", "BadRequestError", None, None)),
    (b'{"error":"Model is overloaded","error_type":"overloaded"}', ("Model is overloaded", "overloaded", None, None)),
    (b'{"detail":"model not loaded"}', ("model not loaded", None, None, None)),
    (b"Internal Server Error", ("Internal Server Error", None, None, None)),
])
def test_parse_error_body_shapes(body: bytes, expected: tuple) -> None:  # type: ignore[type-arg]
    assert parse_error_body(body) == expected


def test_routing_fields() -> None:
    assert routing_fields(Endpoint.CHAT, {"model": "m", "messages": [{}]}) == ("m", False, NEED_CHAT)
    assert routing_fields(Endpoint.CHAT, {"model": "m", "messages": [{}], "stream": True, "n": 2,
                                          "tools": [{}]})[1:] == (True, NEED_CHAT | NEED_N | NEED_TOOLS)
    assert routing_fields(Endpoint.EMBEDDINGS, {"model": "m", "input": "x", "stream": True})[1] is False
    for bad in ({"messages": [{}]}, {"model": "", "messages": [{}]}, {"model": "m", "messages": []},
                {"model": "m", "messages": [{}], "n": 0}):
        with pytest.raises(InvalidRequest):
            routing_fields(Endpoint.CHAT, bad)


def test_capability_overrides_from_config() -> None:
    s = GatewaySettings(backends=[{"name": "l", "kind": "llamacpp", "url": "http://x",
                                   "capabilities": {"embeddings": False}}])
    from gateway.runtime import Gateway
    b = Gateway(s).backends["l"]
    b.served = (ServedModel("m"),)
    b.state = State.READY
    r = build_table([], {"l": b}).resolve("m")
    from gateway.backends import NEED_EMBEDDINGS
    with pytest.raises(CapabilityMissing, match="embeddings"):
        pick(r, NEED_EMBEDDINGS)
    assert pick(r, NEED_CHAT).backend is b
