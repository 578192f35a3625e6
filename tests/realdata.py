"""Where the shared real chain data lives: `shared/realdata` beside the repository checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def realdata(*parts: str) -> Path:
    """The path of a real-data file, e.g. `realdata("btc", "block413567.raw")`; fails the test (never
    skips it) when the file is missing."""
    path = REALDATA.joinpath(*parts)
    if not path.is_file():
        pytest.fail(
            f"real chain data {path} is missing: the shared data must be checked out beside the "
            f"repository, as {REALDATA}",
            pytrace=False,
        )
    return path
