"""Test hooks: /_requests, /_stats, /_release, /_control, /_unhealthy, /_healthy, /_reset."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .state import State


async def hooks(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    what = request.match_info["what"]
    if what == "requests":
        return web.json_response(st.requests)
    if what == "stats":
        return web.json_response(
            {
                "in_flight": st.permits,
                "max_in_flight": st.max_in_flight,
                "queued": st.queued,
                "batch": st.batch,
                "held": st.held,
                "completed": st.completed,
                "cancelled": st.cancelled,
                "overloaded": st.overloaded,
                "received": len(st.requests),
                "healthy": st.healthy,
                "health_checks": st.health_checks,
            }
        )
    if what == "release":
        held = st.held
        st.release.set()
        st.release = asyncio.Event()
        return web.json_response({"released": held})
    if what == "control":
        st.default_ctl = await request.json() if request.can_read_body else {}
        return web.json_response(st.default_ctl)
    if what in ("unhealthy", "healthy"):
        st.healthy = what == "healthy"
        return web.json_response({"healthy": st.healthy})
    if what == "reset":
        st.requests.clear()
        st.release.set()
        st.release = asyncio.Event()
        st.max_in_flight = st.permits
        st.completed = st.cancelled = st.overloaded = 0
        st.healthy = True
        st.default_ctl = {}
        return web.json_response({"reset": True})
    raise web.HTTPNotFound()
