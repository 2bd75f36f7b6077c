"""GET /v1/models and /v1/models/{id}: generated from the live routing table."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gateway.api.deps import credential, get_gateway, require_api_key
from gateway.auth.keys import model_not_allowed
from gateway.protocol import ModelCard, ModelList
from gateway.routing import Route
from gateway.runtime import Gateway

router = APIRouter(dependencies=[Depends(require_api_key)])


def card(route: Route, created: int) -> ModelCard:
    return ModelCard(id=route.name, created=created, aliases=list(route.aliases),
                     context_length=route.context_length)


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request, gw: Gateway = Depends(get_gateway)) -> ModelList:
    created = int(gw.started_at)
    ident = gw.keys.identify(credential(request)) if gw.keys.client else None
    return ModelList(data=[card(r, created) for r in gw.table.routes if ident is None or ident.allows(r.name)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, response_model_exclude_none=True)
async def get_model(model_id: str, request: Request, gw: Gateway = Depends(get_gateway)) -> ModelCard:
    route = gw.table.resolve(model_id)
    ident = gw.keys.identify(credential(request)) if gw.keys.client else None
    if ident is not None and not ident.allows(route.name):
        raise model_not_allowed(route.name)
    return card(route, int(gw.started_at))
