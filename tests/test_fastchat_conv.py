"""The gateway's port of FastChat's prompt building, against FastChat's own output for every
separator style (tests/fixtures/fastchat_prompts.json, recorded from the real fschat 0.2.36)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.fastchat_conv import STYLES, render, stop_params
from gateway.errors import InvalidRequest

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "fastchat_prompts.json").read_text())
CASES = FIXTURES["cases"]


def test_every_separator_style_is_covered() -> None:
    assert {c["sep_style_name"] for c in CASES} == set(STYLES)
    assert len(STYLES) == len(FIXTURES["sep_styles"])


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_prompt_matches_fastchat(case: dict) -> None:
    template = FIXTURES["templates"][case["template"]]
    conv = template.get("conv", template)
    assert render(conv, case["messages"]) == case["prompt"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_stops_and_stop_token_ids_match_fastchat(case: dict) -> None:
    """The recorded `stop` (request stops | the template's stop_str, sorted) and `stop_token_ids`."""
    template = FIXTURES["templates"][case["template"]]
    conv = template.get("conv", template)
    stops, ids = stop_params(conv, case.get("request_stop"))
    assert sorted(stops) == sorted(case["stop"] or [])
    assert ids == case["stop_token_ids"]


def test_request_stops_come_first_and_are_not_repeated() -> None:
    conv = {"stop_str": ["###", "</s>"], "stop_token_ids": [2]}
    assert stop_params(conv, ["</s>", "END"]) == (["</s>", "END", "###"], [2])
    assert stop_params(conv, "END") == (["END", "###", "</s>"], [2])
    assert stop_params({"stop_str": None, "stop_token_ids": []}, None) == ([], None)


def test_roles_fastchat_cannot_place_are_a_clear_400() -> None:
    conv = FIXTURES["templates"]["vicuna_v1.1"]
    conv = conv.get("conv", conv)
    with pytest.raises(InvalidRequest, match="tool"):
        render(conv, [{"role": "tool", "content": "42"}])
