"""The README's first command: `depositwatch demo` runs to its end and shows signed alerts."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_to_the_end() -> None:
    """The demo starts anvil, runs the daemon, shows the revoked alerts, the sweep and the deposit, cleans up."""
    done = subprocess.run(
        [sys.executable, "-m", "depositwatch", "demo"], capture_output=True, text=True, timeout=170, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("ALERT revoked_incoming (detected, critical)") == 2
    assert out.count("ALERT revoked_outgoing (detected, critical)") == 2
    assert "signature verified" in out and "0 rejected signatures" in out
    assert "recorded for customer-4712" in out
    assert "the demo cleaned up" in out
