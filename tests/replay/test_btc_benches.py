"""bench/btc_bench.py (its replay part) and bench/latency_btc_bench.py, the commands docs/performance.md
records for Bitcoin, in a small form: every figure printed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.replay.benches import run_bench

ROOT = Path(__file__).resolve().parents[2]


def test_btc_replay_bench_prints_each_part_with_its_ratio_and_cpu() -> None:
    out = run_bench(
        "btc_bench.py", "--only", "replay", "--blocks", "3", "--rounds", "2", "--replay-scripts", "1000",
        timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert "2 interleaved rounds" in out
    rows = re.findall(
        r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d., ]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.MULTILINE
    )
    parts = {row[0]: row for row in rows}
    assert set(parts) == {
        "transport only: getblock HASH 0, no decoding",
        "source.fetch, full path",
        "source.fetch, watched path",
        "replay() end to end (watched path, as the CLI runs it), SQLite store",
    }
    assert parts["transport only: getblock HASH 0, no decoding"][3] == "1.0"
    for name, row in parts.items():
        rounds = row[4].split(", ")
        assert len(rounds) == (1 if name == "source.fetch, full path" else 2)
        assert float(row[1]) > 0 and float(row[5]) > 0 and float(row[6]) > 0
    assert re.search(r"replay found \{'revoked_incoming': \d+, 'deposit': \d+, 'revoked_outgoing': \d+\}", out)


def test_btc_latency_bench_measures_zmq_and_polling() -> None:
    stdout = run_bench(
        "latency_btc_bench.py", "--blocks", "4", "--warmup", "1", "--modes", "zmq,0.2", timeout=600, cwd=ROOT
    )
    results = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in results] == [
        "ZMQ hashblock (polling every 5 s as a fallback)",
        "polling every 0.2 s",
    ]
    for result in results:
        assert result["blocks"] == 4 and result["bad_signatures"] == 0
        assert 0 < result["min"] <= result["p50"] <= result["p90"] <= result["p99"] <= result["max"]
