"""The server's own routes: /, /status, /switch-model (loading in the background), /update-config, /exit."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from .hooks import record
from .responses import detail, json_response
from .schemas import CONFIG_BODY, MODEL_CONFIG, SWITCH_BODY, parse_body
from .state import State, is_albatross_strategy, load_model


async def root(request: web.Request) -> web.Response:
    return json_response({"Hello": "World!"})


async def status(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    return json_response({"status": st.status, "pid": os.getpid(), "device_name": st.args.device_name})


async def switch_model(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    st.switch_calls += 1
    data, body, bad = await parse_body(request, SWITCH_BODY)
    record(st, request, data)
    if bad:
        return bad
    if st.deploy:
        return detail(403, "Forbidden")
    if st.status == 2:
        return web.Response(status=304, headers={"Content-Type": "application/json"})
    st.status = 0
    st.model = None
    if body["model"] == "":
        return json_response("success")
    st.status = 2
    ctl = (data.get("x_double") or {}) if isinstance(data, dict) else {}
    delay = float(ctl.get("load_seconds", st.args.load_seconds))
    # the real handler is a sync def run in a worker thread: it finishes even if the client leaves
    return await asyncio.shield(asyncio.ensure_future(finish_load(st, body, delay)))


async def finish_load(st: State, body: dict, delay: float) -> web.Response:
    await asyncio.sleep(delay)
    try:
        loaded = load_model(body["model"])
    except Exception as e:
        print(e, flush=True)
        st.status = 0
        return detail(500, f"failed to load: {e}")
    loaded.albatross = loaded.kind == "rwkv" and is_albatross_strategy(body["strategy"])  # routes/config.py
    st.model = loaded
    if body["deploy"]:
        st.deploy = True
    config = st.model_defaults()
    if st.config is not None:  # merge_model(init_model_config, saved_model_config)
        config.update({k: v for k, v in st.config.items() if v is not None and k in config})
    st.config = config
    st.status = 3
    return json_response("success")


async def update_config(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    data, body, bad = await parse_body(request, CONFIG_BODY)
    record(st, request, data)
    if bad:
        return bad
    if st.config is None:
        st.config = {k: None for k, _, _ in MODEL_CONFIG}
    st.config.update({k: v for k, v in body.items() if v is not None})
    return json_response("success")


async def exit_(request: web.Request) -> web.StreamResponse:
    st: State = request.app["state"]
    record(st, request, None)
    if st.deploy:
        return detail(403, "Forbidden")
    st.exit_calls += 1
    print("POST /exit called: the real RWKV-Runner kills itself here", flush=True)
    if st.args.exit_kills:
        os._exit(0)
    if request.transport is not None:  # the process dies before answering
        request.transport.abort()
    raise asyncio.CancelledError()
