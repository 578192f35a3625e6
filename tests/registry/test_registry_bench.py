"""bench/registry_bench.py, the command docs/performance.md records for the address registry, at a small
size on both stores, with a baseline tree (this one) measured beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_registry_bench_measures_both_stores_and_the_baseline(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "figures.json"
    command = [sys.executable, str(root / "bench" / "registry_bench.py"), "--sizes", "3000", "--stores"]
    command += ["sqlite,postgres", "--queries", "2000", "--passes", "2", "--repeat", "1", "--baseline", str(root)]
    command += ["--json", str(out), "--workdir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert sorted((f["store"], f["code"]) for f in figures) == [
        ("postgres", "baseline"),
        ("postgres", "this tree"),
        ("sqlite", "baseline"),
        ("sqlite", "this tree"),
    ]
    assert all(f["loaded"] == 3000 for f in figures)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 3,000")]
    assert len(rows) == 4, done.stdout
    assert "3,000 addresses in at most 600 MB RSS: met" in done.stdout
    assert "3,000 from postgres, against the baseline: load" in done.stdout
