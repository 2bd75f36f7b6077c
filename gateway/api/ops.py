"""Operational endpoints: liveness, readiness, metrics, and the backends view."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from gateway.api.deps import get_gateway, require_api_key
from gateway.runtime import Gateway

router = APIRouter()


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="At least one deployment is ready to serve")
async def readyz(gw: Gateway = Depends(get_gateway)) -> JSONResponse:
    ready = gw.ready() and not gw.draining
    body = {
        "status": "ready" if ready else "not_ready",
        "backends": {b.name: b.state.value for b in gw.backends.values()},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(gw: Gateway = Depends(get_gateway)) -> Response:
    data, ctype = gw.metrics.render()
    return Response(data, media_type=ctype)


@router.get("/admin/backends", summary="Every backend: state, since when, models, load",
            dependencies=[Depends(require_api_key)])
async def backends(gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    return {"backends": [b.describe() for b in gw.backends.values()], "routes": gw.table.describe()}


