"""The model list routes (routes/misc.py): the loaded model's card and the fake OpenAI cards; credit grants."""

from __future__ import annotations

from aiohttp import web

from .responses import detail, json_response
from .state import State


FAKE_MODELS = [
    {
        "id": "gpt-3.5-turbo",
        "object": "model",
        "created": 1677610602,
        "owned_by": "openai",
        "permission": [
            {
                "id": "modelperm-zy5TOjnE2zVaicIcKO9bQDgX",
                "object": "model_permission",
                "created": 1690864883,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
        "root": "gpt-3.5-turbo",
        "parent": None,
    },
    {
        "id": "text-davinci-003",
        "object": "model",
        "created": 1669599635,
        "owned_by": "openai-internal",
        "permission": [
            {
                "id": "modelperm-a6niqBmW2JaGmo0fDO7FEt1n",
                "object": "model_permission",
                "created": 1690930172,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
        "root": "text-davinci-003",
        "parent": None,
    },
]


def model_card(st: State) -> dict:
    name = st.model.name if st.model else "rwkv"
    return {"id": name, "object": "model", "owned_by": "rwkv", "root": name, "parent": None}


async def models(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    return json_response({"object": "list", "data": [model_card(st), *FAKE_MODELS]})


async def one_model(request: web.Request) -> web.Response:
    st: State = request.app["state"]
    model_id = request.match_info["model_id"]
    for fake in FAKE_MODELS:
        if fake["id"] == model_id:
            return json_response(fake)
    if "rwkv" in model_id.lower():
        return json_response(model_card(st))
    return detail(404, {"error": {"message": f"The model '{model_id}' does not exist",
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_not_found"}})


async def credit_grants(request: web.Request) -> web.Response:
    grant = {"object": "credit_grant", "grant_amount": 10000, "used_amount": 0, "effective_at": 1672531200,
             "expires_at": 33229440000}
    return json_response({"object": "credit_summary", "total_granted": 10000, "total_used": 0,
                          "total_available": 10000, "grants": {"object": "list", "data": [grant]}})
