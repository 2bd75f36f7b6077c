"""Test hooks (never behind the Host guard): /_requests, /_stats, /_release, /_reset."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .scheduler import State


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return web.json_response(st.requests)
    if what == "stats":
        return web.json_response({"in_flight": st.in_flight, "max_in_flight": st.max_in_flight,
                                  "running": st.running, "waiting": st.waiting, "cancelled": st.cancelled,
                                  "completed": st.completed, "received": len(st.requests),
                                  "rejected": st.rejected, "loads": st.loads, "unloads": st.unloads,
                                  "resident": sorted(r.info.name.shortest for r in st.runners.values())})
    if what == "release":
        st.release.set()
        return web.json_response({"released": True})
    if what == "reset":
        st.requests.clear()
        st.release = asyncio.Event()
        st.max_in_flight = st.in_flight
        st.cancelled = st.completed = st.rejected = st.loads = st.unloads = 0
        return web.json_response({"reset": True})
    raise web.HTTPNotFound()
