"""The README's promises that code can check: its commands and its receiver snippet."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.alerts.test_signing import check_documented_receiver, python_blocks

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_first_lines_give_the_two_commands() -> None:
    """The README opens with the demo command and the test command; CI runs the latter."""
    block = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    assert README.index("make demo") < 200
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.parametrize("marker", ["standardwebhooks", "def verify_request"])
async def test_receiver_examples_verify_real_deliveries_and_refuse_garbage(marker: str) -> None:
    """The README's two receivers (the library one and the hand-written fallback), run as written: real
    deliveries are stored once, garbage headers, wrong keys, stale or re-keyed requests get 400."""
    [code] = python_blocks(README, marker)
    await check_documented_receiver(code, "README.md")


def test_make_test_measures_branch_coverage_of_the_package_and_of_the_processes_tests_start(tmp_path: Path) -> None:
    """`make test` (README, Tests) measures coverage on every run, in CI too: the test script passes the
    coverage options to pytest, and with the project's settings a test that runs the CLI as a process
    records branch data for the package, the process's lines included."""
    root = Path(__file__).resolve().parents[2]
    assert "make test" in README and "branch coverage" in README
    script = (root / "scripts" / "test.sh").read_text()
    pytest_line = next(line for line in script.splitlines() if line.startswith("exec .venv/bin/pytest"))
    assert "--cov --cov-report=term" in pytest_line
    data = tmp_path / "coverage"
    # A test that only runs the CLI as a process (`depositwatch --version`), as the suite's tests do.
    probe = tmp_path / "test_cli_process.py"
    probe.write_text(
        "import subprocess, sys\n\n"
        "def test_the_cli_as_a_process():\n"
        "    command = [sys.executable, '-m', 'depositwatch', '--version']\n"
        "    run = subprocess.run(command, capture_output=True, check=True)\n"
        "    assert run.stdout.strip()\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "-c",
            str(root / "pyproject.toml"),
            "--rootdir",
            str(root),
            "--cov",
            "--cov-report=json:" + str(tmp_path / "report.json"),
            str(probe),
        ],
        cwd=root,
        env={**os.environ, "COVERAGE_FILE": str(data)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["branch_coverage"] is True
    files = report["files"]
    assert all("depositwatch" in name for name in files)
    cli = next(v for k, v in files.items() if k.endswith("depositwatch/cli.py"))
    assert cli["summary"]["covered_lines"] > 0  # only the CLI processes the test starts run cli.py
