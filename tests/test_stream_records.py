"""Native streams are split into records with a bounded buffer (security review S13).

Ollama's NDJSON, FastChat's NUL-delimited JSON and TGI's /generate_stream SSE used to be gathered with
`buf += data` and searched from the start until a delimiter came: a backend that never sends one grew
the gateway's memory without bound and spent quadratic CPU on the event loop every client shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import Endpoint, UpstreamRequest
from adapters.fastchat import _cumulative_to_sse
from adapters.ollama import _ndjson_to_sse
from adapters.records import MAX_RECORD_BYTES, records
from adapters.tgi_generate import translate_stream
from gateway.errors import UpstreamProtocolError


async def pieces(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        yield data[start:cut]
        start = cut
    yield data[start:]


async def collect(it: AsyncIterator[bytes]) -> list[bytes]:
    return [x async for x in it]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(recs=st.lists(st.binary(max_size=30).filter(lambda b: b"\n\n" not in b and not b.endswith(b"\n")),
                     max_size=8),
       cuts=st.lists(st.integers(0, 300), max_size=10), sep=st.sampled_from([b"\n", b"\0", b"\n\n"]))
def test_records_come_out_whole_however_the_bytes_are_split(recs: list[bytes], cuts: list[int], sep: bytes) -> None:
    recs = [r.replace(sep, b"") for r in recs]
    data = b"".join(r + sep for r in recs)
    assert asyncio.run(collect(records(pieces(data, cuts), sep))) == recs
    # With tail=True an unterminated last record comes out too.
    assert asyncio.run(collect(records(pieces(data + b"end", cuts), sep, tail=True))) == [*recs, b"end"]


def endless(total: int, piece: int = 64 * 1024, fill: bytes = b"x") -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            yield fill * piece
            sent += piece
    return gen()


def test_a_record_without_its_delimiter_is_cut_off_at_the_limit() -> None:
    with pytest.raises(UpstreamProtocolError, match=f"larger than {MAX_RECORD_BYTES} bytes"):
        asyncio.run(collect(records(endless(MAX_RECORD_BYTES + 2 * 64 * 1024), b"\n")))
    # Just under the limit, then the delimiter: one record, whole.
    async def under() -> AsyncIterator[bytes]:
        async for x in endless(MAX_RECORD_BYTES - 64 * 1024):
            yield x
        yield b"\n"
    out = asyncio.run(collect(records(under(), b"\n")))
    assert len(out) == 1 and len(out[0]) == MAX_RECORD_BYTES - 64 * 1024


@pytest.mark.parametrize("kind", ["ollama", "fastchat", "tgi"])
def test_every_native_translator_refuses_an_endless_record(kind: str) -> None:
    src = endless(MAX_RECORD_BYTES + 2 * 64 * 1024, fill=b"a")
    if kind == "ollama":
        it = _ndjson_to_sse(Endpoint.CHAT, src, "m", "reasoning_content")
    elif kind == "fastchat":
        it = _cumulative_to_sse(Endpoint.CHAT, src, "m")
    else:
        it = translate_stream(src, UpstreamRequest("POST", "http://x/generate_stream", {}, b"", True,
                                                   passthrough=False, upstream_model="m"))
    with pytest.raises(UpstreamProtocolError):
        asyncio.run(collect(it))


def test_translators_still_translate_records_split_mid_way() -> None:
    lines = [{"model": "m", "message": {"role": "assistant", "content": w}, "done": False} for w in ("Hel", "lo")]
    lines.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                  "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2})
    data = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    out = b"".join(asyncio.run(collect(_ndjson_to_sse(Endpoint.CHAT, pieces(data, list(range(1, len(data), 7))),
                                                      "m", "reasoning_content"))))
    events = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "Hello"
    assert out.endswith(b"data: [DONE]\n\n")
    nul = b"".join(orjson.dumps({"text": t, "error_code": 0}) + b"\0" for t in ("Hi", "Hi the", "Hi there"))
    out = b"".join(asyncio.run(collect(_cumulative_to_sse(Endpoint.CHAT, pieces(nul, [3, 9, 20, 31]), "m"))))
    events = [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "Hi there"


def test_the_limits_are_config_keys() -> None:
    """upstream.max_event_bytes reaches the record splitter and the relay; max_header_bytes the pools."""
    from adapters import records as records_module
    from gateway.runtime import Gateway
    from gateway.settings import GatewaySettings

    async def run() -> None:
        gw = Gateway(GatewaySettings(upstream={"max_event_bytes": 65536, "max_header_bytes": 4096}))
        await gw.upstream.start()
        try:
            assert gw.upstream.pool.max_header_bytes == 4096
            assert records_module.MAX_RECORD_BYTES == 65536
            with pytest.raises(UpstreamProtocolError, match="larger than 65536 bytes"):
                await collect(records(endless(200 * 1024, piece=1024), b"\n"))
        finally:
            await gw.upstream.close()
            records_module.set_max_record_bytes(MAX_RECORD_BYTES)

    asyncio.run(run())
