"""The README's key-tree section, run as written: its CSV imports, its commands succeed and show what it says."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from depositwatch.addresses.derive import address_text, derive
from depositwatch.addresses.descriptors import parse_trees
from depositwatch.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("### Key trees") : README.index("## Running the daemon")]


def block(kind: str) -> str:
    found = re.search(rf"```{kind}\n(.*?)```", SECTION, re.DOTALL)
    assert found is not None, f"no {kind} block in the README's key-tree section"
    return found.group(1)


def test_readme_key_tree_commands_run_as_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The CSV imports (four trees: the multipath row is two); parse prints the first five of both
    branches; the revoke revokes the EVM tree; list shows every tree with its range."""
    (tmp_path / "trees.csv").write_text(block("csv"))
    url = f"sqlite:///{tmp_path}/book.db"
    outputs = []
    for line in block("sh").splitlines():
        argv = shlex.split(line)
        assert argv[0] == "depositwatch"
        if argv[1:3] != ["addresses", "parse"]:
            argv += ["--store", url]
        code = main([arg.replace("trees.csv", str(tmp_path / "trees.csv")) for arg in argv[1:]])
        captured = capsys.readouterr()
        assert code == 0, (line, captured.err)
        outputs.append(captured.out)
    imported, parsed, revoked, listed = outputs
    assert imported == "imported 3 row(s) (4 key tree(s)): 4 new, 0 updated, 0 unchanged\n"
    descriptor = re.search(r'--descriptor "([^"]+)" --range', block("sh"))
    assert descriptor is not None
    receive, change = parse_trees("bitcoin", descriptor.group(1))
    expected = [
        (tree.descriptor, i, address_text(tree, key)) for tree in (receive, change) for i, key in derive(tree, 0, 5)
    ]
    assert [(r["descriptor"], r["index"], r["address"]) for r in map(json.loads, parsed.splitlines())] == expected
    assert "revoked 1 key tree(s) on eth as of 2023-09-12T03:00:00Z" in revoked
    trees = [row for row in map(json.loads, listed.splitlines()) if "descriptor" in row]
    assert sorted((r["chain"], r["range"], r["status"]) for r in trees) == [
        ("btc", "0-19999", "revoked"),
        ("btc", "0-19999", "revoked"),
        ("btc", "0-9999", "active"),
        ("eth", "0-9999", "revoked"),
    ]


def test_tree_bench_runs_and_reports_both_loads(tmp_path: Path) -> None:
    """bench/tree_bench.py, the command docs/performance.md records, at a small size: a row with the
    expansion, both loads (tree cache and the same keys as plain entries) and memory per key, and a row
    with the expansion's parts (derivation rate, cache writes) and the resident memory."""
    root = Path(__file__).resolve().parents[2]
    section = tmp_path / "section.md"
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "tree_bench.py"), "--sizes", "2000", "--stores", "sqlite",
         "--workdir", str(tmp_path), "--markdown", str(section)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = section.read_text()
    assert text.startswith("## Key trees: the derivation cache\n")
    totals, parts = [line for line in text.splitlines() if line.startswith("| 2,000 ")]
    cells = [cell.strip() for cell in totals.strip("|").split("|")]
    assert cells[1] == "sqlite" and len(cells) == 10
    cells = [cell.strip() for cell in parts.strip("|").split("|")]  # derivation, cache writes, resident memory
    assert cells[1] == "sqlite" and len(cells) == 9 and "-" not in cells
    assert int(cells[3].replace(",", "")) > 0 and float(cells[4]) >= 0 and float(cells[7]) > 0
