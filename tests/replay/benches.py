"""The benchmark scripts of bench/ run as docs/performance.md records them, in the tests' small forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float, cwd: Path | None = None) -> str:
    """`python bench/SCRIPT ARGS`, which must exit 0 within `timeout` seconds; its standard output."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        cwd=cwd,
    )
    return done.stdout
