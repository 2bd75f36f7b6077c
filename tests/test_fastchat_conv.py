"""The gateway's port of FastChat's prompt building, against FastChat's own output for every
separator style (tests/fixtures/fastchat_prompts.json, recorded from the real fschat 0.2.36)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.fastchat_conv import STYLES, render
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


def test_roles_fastchat_cannot_place_are_a_clear_400() -> None:
    conv = FIXTURES["templates"]["vicuna_v1.1"]
    conv = conv.get("conv", conv)
    with pytest.raises(InvalidRequest, match="tool"):
        render(conv, [{"role": "tool", "content": "42"}])
