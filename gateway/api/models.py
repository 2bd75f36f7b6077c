"""GET /v1/models and /v1/models/{id}: generated from the live routing table."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.api.deps import get_gateway, require_api_key
from gateway.protocol import ModelCard, ModelList
from gateway.routing import Route
from gateway.runtime import Gateway

router = APIRouter(dependencies=[Depends(require_api_key)])


def card(route: Route, created: int) -> ModelCard:
    return ModelCard(id=route.name, created=created, aliases=list(route.aliases),
                     context_length=route.context_length)


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(gw: Gateway = Depends(get_gateway)) -> ModelList:
    created = int(gw.started_at)
    return ModelList(data=[card(r, created) for r in gw.table.routes])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, response_model_exclude_none=True)
async def get_model(model_id: str, gw: Gateway = Depends(get_gateway)) -> ModelCard:
    return card(gw.table.resolve(model_id), int(gw.started_at))
