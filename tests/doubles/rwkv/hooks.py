"""Test hooks: every body received is recorded; GET /_requests, GET /_stats, POST /_release, POST /_reset."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .responses import detail, json_response
from .state import State


def record(st: State, request: web.Request, body: Any) -> dict:
    entry = {"path": request.path, "body": body}
    st.requests.append(entry)
    return entry


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return json_response(st.requests)
    if what == "stats":
        return json_response({
            "status": st.status, "model": st.model.name if st.model else None, "deploy": st.deploy,
            "in_flight": st.in_flight, "max_in_flight": st.max_in_flight, "waiting": st.waiting,
            "max_waiting": st.max_waiting, "cancelled": st.cancelled, "completed": st.completed,
            "failed": st.failed, "pings": st.pings, "exit_calls": st.exit_calls,
            "switch_calls": st.switch_calls, "received": len(st.requests), "requests": st.requests,
            "generations": st.generations})
    if what == "release":
        st.release.set()
        return json_response({"released": True})
    if what == "reset":
        st.requests.clear()
        st.release = asyncio.Event()
        st.reset_counters()
        return json_response({"reset": True})
    return detail(404, "Not Found")
