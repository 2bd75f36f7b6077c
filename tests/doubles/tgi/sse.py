"""SSE (axum 0.7 Sse + KeepAlive::default()), the streams' headers and the x_double truncate check."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .defaults import KEEP_ALIVE
from .encoding import dumps
from .model import GenReq
from .state import State


class Sse:
    def __init__(self, request: web.Request, st: State, headers: dict[str, str]) -> None:
        self.request, self.st = request, st
        self.resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        self.last = time.monotonic()
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Sse":
        await self.resp.prepare(self.request)
        if self.st.keep_alive > 0:
            self.task = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task:
            self.task.cancel()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(max(self.last + self.st.keep_alive - time.monotonic(), 0.01))
            if time.monotonic() - self.last >= self.st.keep_alive:
                await self._write(KEEP_ALIVE)

    async def _write(self, data: bytes) -> None:
        async with self.lock:
            self.last = time.monotonic()
            await self.resp.write(data)

    async def json(self, obj: Any) -> None:  # Event::default().json_data(obj)
        sep = b"data:" if self.st.legacy_sse else b"data: "
        await self._write(sep + dumps(obj) + b"\n\n")

    async def data(self, text: str) -> None:  # Event::default().data(text)
        sep = b"data:" if self.st.legacy_sse and not text.startswith(" ") else b"data: "
        await self._write(sep + text.encode() + b"\n\n")

    def kill(self) -> None:
        if self.request.transport is not None:
            self.request.transport.close()


def stream_headers(st: State, req: GenReq) -> dict[str, str]:
    return {
        "x-compute-type": st.compute_type,
        "x-compute-characters": str(len(req.inputs)),
        "x-accel-buffering": "no",
    }


def truncated(req: GenReq, ev: dict) -> bool:
    t = req.ctl.get("truncate")
    return t is not None and t is not False and ev["index"] >= (1 if t is True else int(t))
