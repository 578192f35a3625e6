"""docs/report.md's example is real: its commands, run as written (the store and image paths moved to a
temporary folder), print exactly the outputs it shows, and its image is the plot those commands draw."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from depositwatch.cli import main
from depositwatch.commands.report import PLOT_SIZE
from tests.report.test_report import png_size
from tests.store.rigs import _reset_logging  # noqa: F401 (_reset_logging: an autouse fixture)

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "report.md").read_text()
STORE = "sqlite:///report-example.db"
IMAGE = "docs/img/report.png"


def example_commands() -> list[str]:
    """The lines of the example's sh block."""
    block = re.search(r"## Example\n.*?```sh\n(.*?)```", DOC, re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def shown_outputs() -> dict[str, str]:
    """Each `Output of `COMMAND`:` and the fenced block below it."""
    found = re.findall(r"Output of `([^`]+)`:\n\n```\w*\n(.*?)```", DOC, re.DOTALL)
    return dict(found)


async def test_the_documented_example_prints_what_the_doc_shows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    commands = example_commands()
    outputs = shown_outputs()
    assert commands[0] == f"python -m tests.report.test_report_example {STORE}"
    assert commands[1:] == list(outputs), "every report command of the example shows its output, in order"
    formats = [shlex.split(c)[shlex.split(c).index("--format") + 1] if "--format" in c else "md" for c in outputs]
    assert formats == ["md", "csv", "json"]

    store = f"sqlite:///{tmp_path}/report-example.db"
    image = tmp_path / "report.png"
    build = shlex.split(commands[0].replace(STORE, store))
    assert build[0] == "python"
    made = subprocess.run(
        [sys.executable, *build[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    capsys.readouterr()
    for command in commands[1:]:
        argv = shlex.split(command.replace(STORE, store).replace(IMAGE, str(image)))
        assert argv[0] == "depositwatch"
        code = await asyncio.to_thread(main, argv[1:])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert captured.out == outputs[command], f"docs/report.md shows another output of `{command}`"

    # The image the doc shows is the plot of that example: a real PNG of the documented size.
    assert f"]({IMAGE.removeprefix('docs/')})" in DOC
    assert png_size(image.read_bytes()) == PLOT_SIZE
    assert png_size((ROOT / IMAGE).read_bytes()) == PLOT_SIZE
