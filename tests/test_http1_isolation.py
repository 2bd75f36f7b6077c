"""No sequence of interim, stray or truncated upstream responses can hand one request's answer to another.

Security review S1: a 103 Early Hints was taken as the final answer, the connection went back to the
pool with the real answer still coming, and the next client on that connection received it. These
tests drive gateway/http1.py's Pool against a raw socket server on loopback whose answers carry the
id of the request they answer, framed every way HTTP/1.1 allows (Content-Length, chunked with
extensions and trailers, close-delimited), preceded by 1xx interim responses, followed by stray
bytes (a whole unsolicited response, garbage, half a response while the connection idles), cut short,
and written in random pieces with random pauses. The property: a request gets its own answer or a
transport error, never bytes written for another request (or for nobody).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import http1

ANSWER = re.compile(rb"ANS-(\d+)-END")


@dataclass
class Script:
    interims: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)
    framing: str = "length"  # length | chunked | close
    conn_close: bool = False
    after: str = "none"  # none | stray | garbage | idle-stray
    truncate: bool = False
    cuts: list[int] = field(default_factory=list)  # where the bytes are split into separate writes
    pauses: list[float] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    chunk_ext: bool = False
    trailers: bool = False
    interim_apart: bool = False  # interim responses written on their own, a pause before the answer


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8)
interim = st.tuples(st.sampled_from([100, 102, 103]), st.lists(st.tuples(token, token), max_size=2))
scripts = st.builds(
    Script,
    interims=st.lists(interim, max_size=2),
    framing=st.sampled_from(["length", "chunked", "close"]),
    conn_close=st.booleans(),
    after=st.sampled_from(["none", "stray", "garbage", "idle-stray"]),
    truncate=st.booleans(),
    cuts=st.lists(st.integers(1, 400), max_size=4),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005]), max_size=4),
    chunk_sizes=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    chunk_ext=st.booleans(),
    trailers=st.booleans(),
    interim_apart=st.booleans(),
)


def interims(s: Script) -> bytes:
    return b"".join(b"HTTP/1.1 %d Interim\r\n%s\r\n" % (code, b"".join(b"%s: %s\r\n" % (k.encode(), v.encode())
                                                                      for k, v in hs)) for code, hs in s.interims)


def encode(rid: int, s: Script) -> tuple[bytes, bool, bytes]:
    """(bytes of the answer to request rid, whether the server closes after it, what follows it)."""
    out = b"" if s.interim_apart else interims(s)
    body = b"ANS-%d-END" % rid
    head = [b"HTTP/1.1 200 OK", b"Content-Type: text/plain"]
    close = s.conn_close or s.framing == "close"
    if s.conn_close:
        head.append(b"Connection: close")
    if s.framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif s.framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        parts, i, sizes = [], 0, s.chunk_sizes
        while i < len(body):
            n = sizes[len(parts) % len(sizes)]
            ext = b";name=value" if s.chunk_ext else b""
            parts.append(b"%x%s\r\n%s\r\n" % (len(body[i:i + n]), ext, body[i:i + n]))
            i += n
        payload = b"".join(parts) + b"0\r\n" + (b"X-Trailer: yes\r\n" if s.trailers else b"") + b"\r\n"
    else:
        payload = body  # close-delimited: the end of the body is the server closing
    out += b"\r\n".join(head) + b"\r\n\r\n" + payload
    if s.truncate:
        out = out[: len(out) - max(1, len(payload) // 2)]
        close = True
    follow = {"none": b"", "stray": b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nSTRAY-ANSWER",
              "garbage": b"\x00\xffnot http at all\r\n\r\n", "idle-stray": b"HTTP/1.1 200 OK\r\nContent-Len"}[s.after]
    return out, close, follow


class Server:
    """Answers each request per its script; the request path carries the request's id."""

    def __init__(self, scripts: dict[int, Script]) -> None:
        self.scripts = scripts
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                rid = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                await reader.readexactly(length)
                s = self.scripts[rid]
                data, close, follow = encode(rid, s)
                if s.interim_apart and s.interims:  # the client reads the interim answers on their own
                    writer.write(interims(s))
                    await writer.drain()
                    await asyncio.sleep(0.02)
                start = 0
                for i, cut in enumerate(sorted(set(c for c in s.cuts if c < len(data)))):
                    writer.write(data[start:cut])
                    await writer.drain()
                    start = cut
                    if i < len(s.pauses) and s.pauses[i]:
                        await asyncio.sleep(s.pauses[i])
                # Unsolicited bytes go in the answer's last write (one segment on loopback): bytes that
                # come later, once the client may have sent its next request, are the idle-stray case.
                extra = follow if s.after in ("stray", "garbage") and not close else b""
                writer.write(data[start:] + extra)
                await writer.drain()
                if close:
                    return
                if s.after == "idle-stray":
                    await asyncio.sleep(0.01)  # the client now holds the connection idle in its pool
                    writer.write(follow)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.01)  # let the closed transports' callbacks run before the loop ends


async def one(pool: http1.Pool, port: int, rid: int) -> bytes | Exception:
    try:
        resp = await pool.request("POST", f"http://127.0.0.1:{port}/r/{rid}", {}, b"{}")
        try:
            body = await resp.read()
        except BaseException:
            resp.close()
            raise
        resp.release()
        return body
    except http1.TransportError as exc:
        return exc


def check(rid: int, s: Script, got: bytes | Exception) -> None:
    if isinstance(got, Exception):
        # A failure is allowed only where the answer itself was broken.
        assert s.truncate, f"request {rid} failed although its answer was whole: {got!r} ({s})"
        return
    others = [int(m) for m in ANSWER.findall(got) if int(m) != rid]
    assert not others, f"request {rid} received the answer of request(s) {others}: {got!r}"
    assert b"STRAY" not in got and b"not http" not in got, f"request {rid} received stray bytes: {got!r}"
    if s.truncate:  # only a close-delimited body cannot be known to be cut: a prefix of its own
        assert s.framing == "close" and (b"ANS-%d-END" % rid).startswith(got), (rid, got, s)
    else:
        assert got == b"ANS-%d-END" % rid, (rid, got, s)


async def scenario(plan: list[Script], max_connections: int, workers: int) -> None:
    server = Server(dict(enumerate(plan)))
    await server.start()
    pool = http1.Pool(connect_timeout=5, read_timeout=5, max_connections=max_connections, pool_timeout=20)
    queue = list(range(len(plan)))

    async def worker() -> None:
        while queue:
            rid = queue.pop(0)
            check(rid, plan[rid], await one(pool, server.port, rid))
            if plan[rid].after == "idle-stray":
                await asyncio.sleep(0.1)  # 10x the server's delay: the stray lands while the connection idles

    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 60)
    finally:
        pool.close()
        await server.stop()
    assert pool.open >= 0


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=st.lists(scripts, min_size=2, max_size=6), max_connections=st.sampled_from([1, 2]))
def test_sequential_requests_only_ever_get_their_own_answer(plan: list[Script], max_connections: int) -> None:
    asyncio.run(scenario(plan, max_connections, workers=1))


# Concurrent requests share a small pool; a stray sent while idle would race the next request on that
# connection (no HTTP/1.1 client can tell those bytes apart), so here strays come in the answer's write.
concurrent_scripts = scripts.filter(lambda s: s.after != "idle-stray")


@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=st.lists(concurrent_scripts, min_size=3, max_size=8))
def test_concurrent_requests_on_a_shared_pool_only_get_their_own_answer(plan: list[Script]) -> None:
    asyncio.run(scenario(plan, max_connections=2, workers=3))


@pytest.mark.parametrize("hints", [[(103, [("link", "</a.css>")])], [(100, [])], [(100, []), (103, [])]])
def test_interim_responses_are_skipped_and_the_connection_is_reused(hints: list) -> None:
    async def run() -> None:
        plan = [Script(interims=hints, interim_apart=True), Script(), Script(interims=hints, interim_apart=True)]
        server = Server(dict(enumerate(plan)))
        await server.start()
        pool = http1.Pool(connect_timeout=5, read_timeout=5, max_connections=1, pool_timeout=5)
        try:
            got = [await one(pool, server.port, rid) for rid in range(3)]
            for rid, body in enumerate(got):  # the leak first: S1 handed request 0's answer to request 1
                leaked = [] if isinstance(body, Exception) else [m for m in ANSWER.findall(body) if int(m) != rid]
                assert not leaked, f"request {rid} received the answer of request(s) {leaked}: {body!r}"
            for rid, body in enumerate(got):
                check(rid, plan[rid], body)
            assert pool.open == 1  # one connection served all three: an interim answer costs no reconnect
        finally:
            pool.close()
            await server.stop()

    asyncio.run(run())


def test_a_101_is_a_protocol_error_and_the_connection_is_not_reused() -> None:
    async def run() -> None:
        async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx")
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = http1.Pool(connect_timeout=5, read_timeout=5, max_connections=1, pool_timeout=5)
        try:
            got = await one(pool, port, 0)
            assert isinstance(got, http1.ProtocolError) and "101" in str(got)
            assert pool.open == 0 and not pool.idle.get(("http", "127.0.0.1", port))
        finally:
            pool.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.01)

    asyncio.run(run())
