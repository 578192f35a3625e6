"""bench/api_bench.py, the command docs/performance.md records, runs on both stores (small sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_api_bench_runs_and_reports_each_measurement() -> None:
    """Each store prints its four rows: single adds, batches, a revocation and history reads."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "api_bench.py"),
            "--singles",
            "5",
            "--batches",
            "2",
            "--batch-size",
            "20",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    measured = ["5 single adds, one after another", "2 batches of 20 new addresses", "revoke 20 listed addresses"]
    assert rows == 2 * ["what", *measured, "5 history reads"], done.stdout
    assert "**sqlite**" in done.stdout and "**postgres**" in done.stdout
