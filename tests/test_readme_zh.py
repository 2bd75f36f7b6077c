"""README.zh-CN.md is a translation of parts of README.md: its commands and code must not drift from the
English ones. Every fenced block in it appears verbatim in README.md, and every `llm-gateway ...` command it
names inline is one README.md names too."""

from __future__ import annotations

import re

from tests.procs import ROOT

FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def test_every_code_block_is_the_english_ones() -> None:
    zh, en = (ROOT / "README.zh-CN.md").read_text(), (ROOT / "README.md").read_text()
    blocks = FENCE.findall(zh)
    assert len(blocks) >= 5
    for block in blocks:
        assert block in en, f"not in README.md:\n{block}"


def test_inline_commands_exist_in_the_english_readme() -> None:
    zh, en = (ROOT / "README.zh-CN.md").read_text(), (ROOT / "README.md").read_text()
    commands = set(re.findall(r"`(llm-gateway [a-z-]+(?: [a-z]+)?)", zh))
    assert {"llm-gateway serve", "llm-gateway keys new", "llm-gateway size", "llm-gateway usage"} <= commands
    for c in commands:
        assert c in en, c
    assert "README.zh-CN.md" in en  # the English README points to it
