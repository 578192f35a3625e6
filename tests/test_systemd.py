"""The unit files pass `systemd-analyze verify` and rate OK or better in `systemd-analyze security`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
INSTALLED = "/opt/depositwatch/bin/depositwatch"


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The unit files with ExecStart pointing at this checkout's program (verify checks it exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: `make test` installs Debian's systemd package")
    program = str(Path(sys.executable).with_name("depositwatch"))
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace(INSTALLED, program)
        name = unit.name.replace("@.", "@breach.")
        (tmp_path / name).write_text(text)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


@pytest.mark.parametrize("unit", ["depositwatch.service", "depositwatch-replay@breach.service"])
def test_verify_passes(units: Path, unit: str) -> None:
    """`systemd-analyze verify` finds nothing to complain about."""
    done = analyze("verify", f"./{unit}", cwd=units)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("unit", ["depositwatch.service", "depositwatch-replay@breach.service"])
def test_security_rating_is_ok(units: Path, unit: str) -> None:
    """The hardening rates in systemd's OK band or better."""
    done = analyze("security", "--offline=true", f"./{unit}", cwd=units)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert found, done.stdout + done.stderr
    level, band = float(found.group(1)), found.group(2)
    assert band in {"SAFE", "OK"}, (level, band)


def test_main_unit_has_the_promised_settings() -> None:
    """Type=notify with a watchdog, a dynamic user, state and config directories, credentials, restarts."""
    text = (UNITS / "depositwatch.service").read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "StateDirectory=depositwatch",
        "ConfigurationDirectory=depositwatch",
        "LoadCredential=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
    ):
        assert setting in text, setting
