"""A raw-socket OpenAI-shaped upstream that frames its answers in ways a well-behaved server would not.

Run: python -m tests.doubles.raw_upstream --port P --mode hints|stray|idle-stray|upgrade|plain

It answers GET /v1/models (model "raw-model") and GET /health plainly, and POST /v1/chat/completions with
a non-stream chat completion whose content is "answer for <the first message's content>", so a test
can tell whose answer a client received. The --mode decides what surrounds that answer:
  hints       a 103 Early Hints interim response first, written apart from the answer (as Envoy,
              nginx or a CDN in front of a backend may send it);
  continue    a 100 Continue first (some servers send one unasked);
  stray       an unsolicited complete response right behind the answer, in the same write;
  idle-stray  the first half of an unsolicited response a moment after the answer, while the
              connection sits idle in the client's pool;
  upgrade     101 Switching Protocols instead of an answer;
  close       the answer with neither Content-Length nor chunking, ended by closing the connection
              (RFC 9112 6.3 rule 8), as HTTP/1.0 servers and Python's http.server do;
  http10      the same as an HTTP/1.0 status line;
  huge-body   a 200 that declares 1 GiB and keeps sending (a broken or hostile backend);
  huge-headers  a 200 whose headers never end (1 KiB headers, up to 16 MiB);
  plain       just the answer.
GET /_stats gives {"connections": n, "requests": n}. Nothing here is how a real backend behaves by
design; it is the misbehaviour the gateway's HTTP/1.1 client must survive (security review S1).
"""

from __future__ import annotations

import argparse
import asyncio
import json

STATS = {"connections": 0, "requests": 0}


def response(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def chat_answer(marker: str) -> bytes:
    doc = {"id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": "raw-model",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer for {marker}"},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}
    return json.dumps(doc).encode()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return method, path, body


async def serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
    STATS["connections"] += 1
    try:
        while (req := await read_request(reader)) is not None:
            method, path, body = req
            if path == "/_stats":
                writer.write(response("200 OK", json.dumps(STATS).encode()))
            elif method == "GET":
                models = {"object": "list", "data": [{"id": "raw-model", "object": "model", "owned_by": "raw"}]}
                writer.write(response("200 OK", json.dumps(models).encode()))
            else:
                STATS["requests"] += 1
                marker = json.loads(body)["messages"][0]["content"]
                answer = response("200 OK", chat_answer(marker))
                if mode == "hints" or mode == "continue":
                    interim = ("103 Early Hints\r\nLink: </style.css>; rel=preload" if mode == "hints"
                               else "100 Continue")
                    writer.write(f"HTTP/1.1 {interim}\r\n\r\n".encode())
                    await writer.drain()
                    await asyncio.sleep(0.05)  # apart: the client sees the interim response on its own
                    writer.write(answer)
                elif mode == "stray":
                    writer.write(answer + response("200 OK", chat_answer("STRAY")))
                elif mode == "idle-stray":
                    writer.write(answer)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"stray\": ")
                elif mode in ("close", "http10"):
                    doc = chat_answer(marker)
                    version = "1.0" if mode == "http10" else "1.1"
                    extra = "" if mode == "http10" else "Connection: close\r\n"
                    writer.write(f"HTTP/{version} 200 OK\r\nContent-Type: application/json\r\n{extra}\r\n".encode())
                    for i in range(0, len(doc), 7):  # in pieces: the end is the close, not a length
                        writer.write(doc[i:i + 7])
                        await writer.drain()
                    return
                elif mode == "huge-body":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1073741824\r\n\r\n")
                    block = b" " * (1 << 20)
                    for _ in range(1024):
                        writer.write(block)
                        await writer.drain()
                    return
                elif mode == "huge-headers":
                    writer.write(b"HTTP/1.1 200 OK\r\n")
                    line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
                    for _ in range(16 * 1024):
                        writer.write(line)
                        await writer.drain()
                    return
                elif mode == "upgrade":
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n")
                else:
                    writer.write(answer)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main_async(port: int, mode: str) -> None:
    server = await asyncio.start_server(lambda r, w: serve_conn(r, w, mode), "127.0.0.1", port)
    print(f"raw upstream ({mode}) on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", default="plain")
    a = p.parse_args()
    asyncio.run(main_async(a.port, a.mode))


if __name__ == "__main__":
    main()
