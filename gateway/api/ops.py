"""Operational endpoints: liveness, readiness, metrics, and the backends view.

/healthz, /readyz and /metrics stay open for probes and Prometheus; /readyz names backends only to
callers with a key when keys are set. /admin/* follows gateway/auth/admin.py.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from adapters.base import State
from gateway.api.deps import credential, get_gateway, require_admin
from gateway.auth.usage import sum_rows
from gateway.backends import BackendRuntime
from gateway.errors import GatewayError
from gateway.runtime import Gateway

router = APIRouter()


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="At least one deployment is ready to serve")
async def readyz(request: Request, gw: Gateway = Depends(get_gateway)) -> JSONResponse:
    ready = gw.ready() and not gw.draining
    body: dict[str, object] = {"status": "ready" if ready else "not_ready"}
    if not gw.keys.configured or gw.keys.role(credential(request)):  # no topology for anonymous callers
        body["backends"] = {b.name: b.state.value for b in gw.backends.values()}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(gw: Gateway = Depends(get_gateway)) -> Response:
    data, ctype = gw.metrics.render()
    return Response(data, media_type=ctype)


@router.get("/admin/backends", summary="Every backend: state, since when, models, load",
            dependencies=[Depends(require_admin)])
async def backends(gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    return {"backends": [b.describe() for b in gw.backends.values()], "routes": gw.table.describe()}


@router.post("/admin/backends/{name}/drain", summary="Stop sending new requests to a backend",
             dependencies=[Depends(require_admin)])
async def drain(name: str, gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    """In-flight requests finish; new ones go to other deployments (e.g. before restarting it)."""
    b = _backend(gw, name)
    gw.mark_state(b, State.DRAINING.value, "drained by an operator")
    return b.describe()


@router.post("/admin/backends/{name}/undrain", summary="Send requests to a drained backend again",
             dependencies=[Depends(require_admin)])
async def undrain(name: str, gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    b = _backend(gw, name)
    if b.state is State.DRAINING:
        gw.mark_state(b, State.STARTING.value, "undrained: waiting for its next probe")
    return b.describe()


@router.post("/admin/backends/{name}/start", status_code=202, dependencies=[Depends(require_admin)],
             summary="Start a backend the gateway runs (as its first request would)")
async def start(name: str, gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    """It takes its swap group's turn like a request; GET /admin/backends shows it come up."""
    m = _managed(gw, name)          # first: 404 / 409 before the supervisor is looked at
    return gw.supervisor.start_now(m.b.name).b.describe()


@router.post("/admin/backends/{name}/stop", status_code=202, dependencies=[Depends(require_admin)],
             summary="Stop a backend the gateway runs (after its in-flight requests)")
async def stop(name: str, gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    m = _managed(gw, name)
    return gw.supervisor.stop_now(m.b.name).b.describe()


@router.get("/admin/backends/{name}/logs", dependencies=[Depends(require_admin)],
            summary="The last lines a launched backend's processes printed")
async def logs(name: str, lines: int = Query(200, ge=1, le=100_000),
               gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    m = _managed(gw, name)
    return {"backend": name, "state": m.b.state.value, "lines": m.logs.tail(lines)}


@router.get("/admin/usage", dependencies=[Depends(require_admin)],
            summary="Usage per key name x model x UTC day, filtered; with totals")
async def usage(key: str | None = None, team: str | None = None, model: str | None = None,
                start: date | None = None, end: date | None = None,
                gw: Gateway = Depends(get_gateway)) -> dict[str, object]:
    if gw.usage is None:
        raise GatewayError("Usage is recorded per key: this gateway has no keys (auth.keys / auth.api_keys).",
                           status=409, type="invalid_request_error", code="usage_not_recorded")
    rows = await gw.usage.query(key, team, model, start, end)
    t = sum_rows(rows)
    return {"rows": [{**asdict(r), "day": r.day.isoformat()} for r in rows],
            "totals": {**asdict(t), "total_tokens": t.total_tokens}}


def _managed(gw: Gateway, name: str):  # type: ignore[no-untyped-def]
    b = _backend(gw, name)
    if b.managed is None or gw.supervisor is None:
        raise GatewayError(f"Backend {name!r} is not run by this gateway (it has no launch: block, or "
                           f"supervisor.enabled is false).", status=409, type="invalid_request_error",
                           code="backend_not_launched")
    return b.managed


def _backend(gw: Gateway, name: str) -> BackendRuntime:
    b = gw.backends.get(name)
    if b is None:
        raise GatewayError(f"No backend named {name!r}.", status=404, type="not_found_error", code="backend_not_found")
    return b
