"""What every front shares (gateway/fronts/): reading a front request's JSON body, and handing a translated
body to the gateway's own OpenAI-path handler (chat completions, completions, embeddings) as if the client
had sent it there, with the client's headers (keys, limits, routing, retries, health and metrics are that
path's). The answer goes to a relay, the front's `send`, which translates it back as it arrives.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.asgi import BodyRead, Receive, Scope, Send, header, is_json_media_type
from gateway.errors import UnsupportedMediaType
from gateway.protocol import parse_body
from gateway.runtime import Gateway


async def read_json(gw: Gateway, scope: Scope, receive: Receive) -> Any:
    """The request's body parsed; JSON, or no content type at all (clients of other protocols often send
    none), never a form or text/plain: a cross-site page can send those without asking first."""
    ctype = header(scope, b"content-type")
    if ctype is not None and not is_json_media_type(ctype):
        raise UnsupportedMediaType("Send the request body as JSON (with curl: -H 'Content-Type: "
                                   "application/json', or no Content-Type at all).")
    return parse_body(await BodyRead(None).read(scope, receive, gw.max_body))


async def serve_as(handler: Any, path: str, body: dict[str, Any], scope: Scope, receive: Receive,
                   relay: Send) -> None:
    """Run `handler` (the gateway's handler of `path`) on `body`, answering into `relay`."""
    raw = orjson.dumps(body)
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
    inner = {**scope, "path": path, "raw_path": path.encode(), "headers": [
        *headers, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]}
    delivered = False

    async def inner_receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()  # the client's own: a disconnect still cancels the upstream request

    await handler(inner, inner_receive, relay)


class SSELines:
    """The `data:` payloads of an SSE answer as it arrives in chunks of any size (comments, blank lines and
    `event:` lines dropped)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes, more: bool) -> list[bytes]:
        *lines, rest = (self.buffer + chunk).split(b"\n")
        self.buffer = rest if more else b""
        if not more and rest:
            lines.append(rest)
        return [line[5:].strip() for line in lines if line.startswith(b"data:")]
