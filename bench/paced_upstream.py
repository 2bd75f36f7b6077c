"""Paced streaming upstream for the benchmark: N SSE events, a fixed gap apart, each stamped
with its send time (ns, CLOCK_REALTIME) so the client can measure each event's delay.

python bench/paced_upstream.py PORT  — request body fields `bench_chunks` and `bench_gap_ms` set
the shape (defaults 50 and 10). Raw asyncio + chunked encoding: cheap, keep-alive, exact timing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
EVENT = (b'data: {"object":"chat.completion.chunk","model":"bench-model","choices":[{"index":0,'
         b'"delta":{"content":"tok"},"finish_reason":null}],"t":%d}\n\n')
USAGE = (b'data: {"object":"chat.completion.chunk","model":"bench-model","choices":[],'
         b'"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}\n\n')
MODELS = b'{"object":"list","data":[{"id":"paced-model","object":"model","owned_by":"bench"}]}'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Paced(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = self.buf[:i].decode("latin-1")
        n = 0
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                n = int(v)
        if len(self.buf) < i + 4 + n:
            return
        body, self.buf = self.buf[i + 4:i + 4 + n], self.buf[i + 4 + n:]
        if head.startswith("GET /v1/models"):
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"  # type: ignore[attr-defined]
                         % (len(MODELS), MODELS))
            return
        req = json.loads(body or b"{}")
        asyncio.get_running_loop().create_task(self.stream(req.get("bench_chunks", 50), req.get("bench_gap_ms", 10)))

    async def stream(self, n: int, gap_ms: float) -> None:
        t = self.t
        t.write(HEAD)  # type: ignore[attr-defined]
        for _ in range(n):
            t.write(chunk(EVENT % time.time_ns()))  # type: ignore[attr-defined]
            await asyncio.sleep(gap_ms / 1000)
        t.write(chunk(USAGE % (n, n + 5)))  # type: ignore[attr-defined]
        t.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")  # type: ignore[attr-defined]


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Paced, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
