"""Small raw-ASGI helpers for the hot path (no framework objects per request)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.api.client_writer import write_whole
from gateway.errors import GatewayError, PayloadTooLarge

Scope = dict[str, Any]
Receive = Any
Send = Any


class ClientGone(Exception):
    """The client disconnected before we answered."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


LARGE_BODY = 1 << 20  # bodies over this take a BodySlots slot while read and parsed

# An answer sent before the body was read closes the connection (uvicorn honours the header):
# else uvicorn reads and discards the rest of the body, however large or slow, and the client,
# not knowing it was refused, keeps uploading it (RFC 9112 §9.6 lets a server close here).
CLOSE = {"Connection": "close"}


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than this gateway's limit of {limit} bytes.",
                           headers=dict(CLOSE))


class BodySlots:
    """At most `n` request bodies over LARGE_BODY are read and parsed at once (S18).

    A body costs its size while it trickles in and up to ~24x that once parsed; without a cap, slow
    clients can hold any number of max-size bodies. A request waits `wait` seconds for a slot (its
    socket is not read meanwhile: uvicorn pauses it), then gets 503 `server_busy`."""

    __slots__ = ("_sem", "n", "wait")

    def __init__(self, n: int, wait: float) -> None:
        self.n = n
        self.wait = wait
        self._sem = asyncio.Semaphore(n)

    async def acquire(self) -> None:
        try:
            async with asyncio.timeout(self.wait):
                await self._sem.acquire()
        except TimeoutError:
            raise GatewayError("The gateway is busy reading other large requests; retry shortly.", status=503,
                               code="server_busy", headers={"Retry-After": "1", **CLOSE}) from None

    def release(self) -> None:
        self._sem.release()


class BodyRead:
    """One request's body read: the bytes, and whether they hold a BodySlots slot (which the
    caller releases once the body is parsed)."""

    __slots__ = ("slots", "held")

    def __init__(self, slots: BodySlots | None) -> None:
        self.slots = slots
        self.held = False

    async def _take(self) -> None:
        if self.slots is not None and not self.held:
            await self.slots.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()  # type: ignore[union-attr]

    async def read(self, scope: Scope, receive: Receive, limit: int) -> bytes:
        cl = header(scope, b"content-length")
        if cl is not None and cl.isdigit():
            n = int(cl)
            if n > limit:
                raise too_large(limit)
            if n > LARGE_BODY:
                await self._take()
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = msg.get("body", b"")
        if not msg.get("more_body"):  # the usual case: the whole body in one message
            if len(body) > limit:
                raise too_large(limit)
            return body
        parts = [body]
        size = len(body)
        while True:
            if size > LARGE_BODY:  # no (or a lying) Content-Length: the slot is taken once it is large
                await self._take()
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            parts.append(chunk)
            if not msg.get("more_body"):
                if size > LARGE_BODY:  # it is parsed next: that needs the slot too
                    await self._take()
                return b"".join(parts)


async def send_json(send: Send, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None, limits: Any = None) -> None:
    """`limits`: a limited key's admission, whose x-ratelimit-* headers the answer carries (its block() when
    the head is written whole, else its headers())."""
    headers = [(b"content-type", b"application/json")]
    if extra:
        headers.extend(extra)
    if write_whole(send, status, headers, body, b"" if limits is None else limits.block()):
        return  # one write under uvicorn, else the two ASGI messages
    if limits is not None:
        headers.extend(limits.headers())
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, err: GatewayError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if extra:
        headers.extend(extra)
    await send_json(send, err.status, err.body(), headers)


def is_json_media_type(value: bytes | None) -> bool:
    """`application/json`, any case, parameters allowed (`; charset=utf-8`): the raw header bytes,
    no parsing. Anything else is refused: a browser page may POST text/plain (or a form) across
    sites without asking first, never application/json."""
    if value is None:
        return False
    if value == b"application/json":
        return True
    return value[:16].lower() == b"application/json" and value[16:17] in (b"", b";", b" ", b"\t")


class DisconnectWatch:
    """Cancels the request task when the client goes away, so the upstream request is dropped
    at once (freeing the backend's slot) instead of running to completion for nobody.

    uvicorn's `send` silently ignores writes after a disconnect, so without this a stream to a
    vanished client would keep the GPU busy until the answer ended. The watching task starts
    only once a request has lasted `DELAY` seconds: fast answers never pay for a task (and the
    cyclic garbage a cancelled task leaves, which showed up as GC pauses in the p99 latency).
    """

    DELAY = 0.05
    __slots__ = ("gone", "finished", "_task", "_timer", "_receive", "_target")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.finished = False
        self._task: asyncio.Task[Any] | None = None
        self._receive = receive
        loop = asyncio.get_running_loop()  # once: each lookup without the loop costs a getpid() syscall
        self._target = asyncio.current_task(loop)
        self._timer = loop.call_later(self.DELAY, self._start)

    def _start(self) -> None:
        self._timer = None
        if not self.finished:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                # uvicorn also reports disconnect once the response is complete: ignore that one.
                if not self.finished and self._target is not None:
                    self.gone = True
                    self._target.cancel()
                return

    def close(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        self._target = None
