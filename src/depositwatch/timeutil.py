"""Timestamps: unix seconds inside, ISO 8601 UTC at the edges."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> int:
    """The current unix time in whole seconds."""
    return int(time.time())


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a trailing Z, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(text: str) -> int:
    """Accept ISO 8601 (a date, or a date and time with an offset or Z) or unix seconds.

    A date and time without an offset is refused: a revocation time must not depend on the host's zone.
    """
    text = text.strip()
    if text.isdigit():
        return _in_range(int(text), text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a timestamp: {text!r} (use ISO 8601 like 2023-09-12T00:00:00Z, or unix seconds)"
        ) from None
    if parsed.tzinfo is None:
        if len(text) == 10:  # a bare date means midnight UTC
            parsed = parsed.replace(tzinfo=UTC)
        else:
            raise ValueError(f"timestamp {text!r} has no time zone (add Z or an offset like +00:00)")
    return _in_range(int(parsed.timestamp()), text)


# Bitcoin's genesis block to the end of year 9999: anything else is a typo, and would not fit the store.
_EARLIEST, _LATEST = 1_231_006_505, 253_402_300_799


def _in_range(ts: int, text: str) -> int:
    if not _EARLIEST <= ts <= _LATEST:
        raise ValueError(f"timestamp {text!r} is outside 2009-01-03 .. 9999-12-31")
    return ts
