"""The README's promises that code can check: its commands and its receiver snippet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_signing import check_documented_receiver, python_blocks

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_first_lines_give_the_two_commands() -> None:
    """The README opens with the demo command and the test command; CI runs the latter."""
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    assert README.index("make demo") < 200
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.parametrize("marker", ["standardwebhooks", "def verify_request"])
async def test_receiver_examples_verify_real_deliveries_and_refuse_garbage(marker: str) -> None:
    """The README's two receivers (the library one and the hand-written fallback), run as written: real
    deliveries are stored once, garbage headers, wrong keys, stale or re-keyed requests get 400."""
    [code] = python_blocks(README, marker)
    await check_documented_receiver(code, "README.md")
