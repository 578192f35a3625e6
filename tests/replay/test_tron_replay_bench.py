"""bench/tron_replay.py, the command docs/performance.md records for the TRON replay, in a small form."""

from __future__ import annotations

import re

from tests.replay.benches import run_bench


def test_tron_replay_bench_runs_and_prints_every_figure() -> None:
    out = run_bench("tron_replay.py", "--blocks", "3", "--rounds", "2", timeout=300)
    assert re.search(
        r"^replay: [\d.]+ blocks/s, bare client [\d.]+ blocks/s: [\d.]+ of it \(3 blocks, ", out, re.MULTILINE
    )
    # two rounds side by side, each with its ratio
    assert len(re.findall(r"[\d.]+ / [\d.]+ = [\d.]+", out)) == 2
    for client in ("replay", "bare"):
        line = re.search(
            rf"^  client CPU per block, {client}: ([\d.]+) ms \(rounds (.*)\), of which garbage"
            rf" collection (.*) ms$",
            out,
            re.MULTILINE,
        )
        assert line is not None, out
        assert len(line.group(2).split(", ")) == 2 and len(line.group(3).split(", ")) == 2
        assert float(line.group(1)) > 0
