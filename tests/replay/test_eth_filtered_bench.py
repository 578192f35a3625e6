"""`python bench/eth_bench.py --filtered`, the command docs/performance.md records for the filtered replay,
on a small generated chain: both replays run, their outputs are compared, and the section is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.replay.benches import run_bench


def test_filtered_bench_runs_and_compares(tmp_path: Path) -> None:
    markdown, result = tmp_path / "filtered.md", tmp_path / "filtered.json"
    run_bench(
        "eth_bench.py", "--filtered", "--blocks", "12", "--rounds", "1", "--workload", str(tmp_path / "chain"),
        "--json", str(result), "--markdown", str(markdown), timeout=600,
    )  # fmt: skip
    (row,) = json.loads(result.read_text())["rows"]
    assert row["watched"] == 20 and row["blocks"] == 12
    assert row["same"] and row["matches"] > 0
    assert row["full_path"] == "full scan: filter_max_keys = 0"
    assert row["filtered_path"] == "filtered: 20 keys <= 1000, node has trace_filter"
    assert row["full_rate"] > 0 and row["filtered_rate"] > 0 and len(row["ratios"]) == 1
    text = markdown.read_text()
    assert text.startswith("## Filtered replay\n") and re.search(r"\|\s+yes\s+\|\n", text)
