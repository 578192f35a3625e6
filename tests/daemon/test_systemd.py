"""The unit files pass `systemd-analyze verify` and rate OK or better in `systemd-analyze security`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from depositwatch.cli import main

UNITS = Path(__file__).resolve().parents[2] / "systemd"
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


def base_system(root: Path, *, program: bool = True) -> None:
    """What the units rely on from the system itself: systemd's own units and /bin/kill (ExecReload=); with
    `program`, this checkout's launcher at ExecStart's path standing in for the installed program."""
    (root / "usr" / "lib" / "systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/kill", root / "bin" / "kill")
    if program:
        launcher = root / INSTALLED.lstrip("/")
        launcher.parent.mkdir(parents=True)
        shutil.copy2(Path(sys.executable).with_name("depositwatch"), launcher)


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
    """Type=notify with a watchdog, the static user, state directory, resource and network limits, restarts."""
    text = (UNITS / "depositwatch.service").read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "User=depositwatch",
        "Group=depositwatch",
        "StateDirectory=depositwatch",
        "ExecStart=/opt/depositwatch/bin/depositwatch --config /etc/depositwatch/depositwatch.toml run",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "PrivateMounts=yes",
        "MemoryMax=",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
    ):
        assert setting in text, setting


def settings(unit: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, by key, in order."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_units_load_no_fixed_credentials() -> None:
    """A site loads the credentials its config names (a generated drop-in), so an EVM-only site does not
    fail on a Bitcoin password it has not got."""
    for unit in ("depositwatch.service", "depositwatch-replay@.service"):
        assert "LoadCredential" not in settings(unit), unit


def test_replay_shares_the_daemons_user_store_and_config() -> None:
    """The replay job reaches the daemon's SQLite store: same static user, same state directory, same config."""
    daemon, replay = settings("depositwatch.service"), settings("depositwatch-replay@.service")
    for key in ("User", "Group", "StateDirectory", "WorkingDirectory", "MemoryMax", "IPAddressDeny", "IPAddressAllow"):
        assert daemon[key] == replay[key], key
    assert "DynamicUser" not in daemon and "DynamicUser" not in replay
    config = "--config /etc/depositwatch/depositwatch.toml"
    assert config in daemon["ExecStart"][0] and config in replay["ExecStart"][0]
    assert "%S/depositwatch/replay-%i.jsonl" in replay["ExecStart"][0]


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    """systemd-sysusers makes the user and group the units run as, from the shipped file."""
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "depositwatch.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    assert "depositwatch" in users and "depositwatch" in groups
    assert 0 < int(users["depositwatch"][2]) < 1000  # a system uid, not root
    assert users["depositwatch"][6] in {"/usr/sbin/nologin", "/sbin/nologin"}


EVM_CHAIN = '[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = 1\nrpc_urls = ["http://127.0.0.1:8545"]\n'
BTC_CHAIN = '[[chains]]\nname = "btc"\nkind = "bitcoin"\nrpc_urls = ["http://127.0.0.1:8332"]\nrpc_user = "dw"\n'
HOOK = '[[sinks]]\nname = "soc"\ntype = "webhook"\nurl = "https://soc.example.com/hook"\n'


def credentials_command(
    tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    path = tmp_path / "depositwatch.toml"
    path.write_text(config)
    code = main(["--config", str(path), "systemd", "credentials", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def loaded(drop_in: str) -> list[str]:
    return [line.removeprefix("LoadCredential=") for line in drop_in.splitlines() if line.startswith("LoadCredential=")]


@pytest.mark.parametrize(
    ("site", "config", "expected"),
    [
        ("evm-only", EVM_CHAIN + HOOK + 'secret = { file = "webhook-secret" }\n', ["webhook-secret"]),
        ("bitcoin-only", BTC_CHAIN + 'rpc_password = { file = "btc-rpc-password" }\n', ["btc-rpc-password"]),
        (
            "mixed",
            '[store]\nurl = "postgresql://dw@db.example.com/dw"\npassword = { file = "db-password" }\n'
            + BTC_CHAIN
            + 'rpc_password = { file = "btc-rpc-password" }\n'
            + EVM_CHAIN
            + HOOK
            + 'secret = { file = "webhook-secret" }\n'
            + '[[sinks]]\nname = "pd"\ntype = "pagerduty"\nsecret = { file = "webhook-secret" }\n',
            ["db-password", "btc-rpc-password", "webhook-secret"],
        ),
        ("no secrets", EVM_CHAIN, []),
    ],
)
def test_credentials_drop_in_loads_what_the_config_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], site: str, config: str, expected: list[str]
) -> None:
    """One LoadCredential= per secret file of this site's config, each once, from the credentials directory."""
    code, out, err = credentials_command(tmp_path, config, capsys)
    assert code == 0, err
    assert out.splitlines()[2] == "[Service]", out
    assert loaded(out) == [f"{name}:/etc/depositwatch/credentials/{name}" for name in expected], site


def test_credentials_drop_in_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed drop-in is a valid [Service] section for both units, in another credentials directory too."""
    config = BTC_CHAIN + 'rpc_password = { file = "btc-rpc-password" }\n'
    code, out, err = credentials_command(tmp_path, config, capsys, "--directory", "/srv/dw-creds")
    assert code == 0, err
    assert loaded(out) == ["btc-rpc-password:/srv/dw-creds/btc-rpc-password"]
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    for unit in ("depositwatch.service", "depositwatch-replay@.service"):
        (system / f"{unit}.d").mkdir(parents=True)
        (system / f"{unit}.d" / "credentials.conf").write_text(out)
        shutil.copy(UNITS / unit, system / unit)
    base_system(root)
    for unit in ("depositwatch.service", "depositwatch-replay@breach.service"):
        done = analyze("verify", f"--root={root}", unit, cwd=root)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (
            '{ env = "DW_HOOK" }',
            "sinks.soc.secret: environment variable DW_HOOK is not passed by the units; name a credential instead",
        ),
        ('{ file = "/root/hook" }', "sinks.soc.secret: file '/root/hook' is not a credential name"),
        ('{ file = "creds/hook" }', "sinks.soc.secret: file 'creds/hook' is not a credential name"),
        ('{ file = "-hook" }', "sinks.soc.secret: file '-hook' is not a credential name"),
    ],
)
def test_credentials_refuses_secrets_the_units_cannot_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], secret: str, message: str
) -> None:
    """An environment secret or a path is refused naming the key: the unit would start without it."""
    code, out, err = credentials_command(tmp_path, EVM_CHAIN + HOOK + f"secret = {secret}\n", capsys)
    assert code == 2
    assert out == ""
    assert message in err, err


def test_credentials_needs_an_absolute_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """systemd reads the source files as root from /: a relative directory is refused."""
    code, out, err = credentials_command(tmp_path, EVM_CHAIN, capsys, "--directory", "creds")
    assert (code, out) == (2, "")
    assert "--directory must be absolute" in err
