"""docs/operations.md, walked: the install, config, credentials, units, first start, replay job, backup,
upgrade and a second instance, for an EVM-only, a Bitcoin-only and a mixed site.

The commands run are the ones in the document's `<!-- walk: NAME -->` blocks, with two differences
only, both mechanical: every path of the install (/opt/depositwatch, /etc/depositwatch, ...) is moved
under a temporary root, and a few system commands are shims that act on that root:
`systemd-sysusers` and `systemd-analyze` get `--root`, `install -o/-g depositwatch` and
`runuser -u depositwatch --` use the ids the root's user database gives (runuser becomes `setpriv`),
and `systemctl` only records what it was asked (no service manager runs here). Where the document
starts a unit, the test starts what the installed unit file and its drop-ins say, as systemd would:
as the unit's user, in its working directory, with its environment and a credentials directory
holding a copy of each `LoadCredential=`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from depositwatch.devnet import Anvil
from tests.btcnode import BitcoinRegtestServer, p2wpkh, script_to_address
from tests.daemon.test_daemon import CHAIN_ID, REVOKED, NotifySocket, free_port, pay, wait_for
from tests.daemon.test_systemd import base_system
from tests.receivers import WEBHOOK_SECRET, Receiver

pytestmark = [
    pytest.mark.filterwarnings("ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="the install walk sets file owners and switches to the service's uid, as root does (CI runs as root)",
    ),
]

CHECKOUT = Path(__file__).resolve().parents[2]
DOC = CHECKOUT / "docs" / "operations.md"
# Every path the install writes; the walk moves them under its root.
PREFIXES = (
    "/opt/depositwatch",
    "/etc/depositwatch",
    "/etc/systemd/system",
    "/etc/sysusers.d",
    "/var/lib/depositwatch",
    "/var/backups/depositwatch",
)
_PATH = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, PREFIXES)) + r")(?![\w.-])")
BTC_REVOKED = p2wpkh(b"\xa1" * 20)
SECRETS = {"webhook-secret": WEBHOOK_SECRET, "btc-rpc-password": ""}  # the node's password at run time

# Shims for the system commands that act on the whole machine; each acts on $DW_ROOT instead.
SHIMS = r"""
set -euo pipefail
__id() {  # -o NAME | -g NAME: the id in the root's database, or NAME as it is when it is not there
    local db=passwd; [ "$1" = -g ] && db=group
    local id; id=$(awk -F: -v n="$2" '$1 == n {print $3}' "$DW_ROOT/etc/$db")
    echo "${id:-$2}"
}
install() {
    local args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            -o|-g) args+=("$1" "$(__id "$1" "$2")"); shift 2 ;;
            *) args+=("$1"); shift ;;
        esac
    done
    command install "${args[@]}"
}
runuser() {
    [ "$1" = -u ] && [ "$3" = -- ] || { echo "runuser shim: expected -u USER -- COMMAND" >&2; return 2; }
    local uid gid home; uid=$(__id -o "$2"); gid=$(__id -g "$2")
    home=$(awk -F: -v n="$2" '$1 == n {print $6}' "$DW_ROOT/etc/passwd")
    local user="$2"; shift 3
    # runuser sets HOME, SHELL, USER and LOGNAME from the target's passwd entry.
    HOME="$DW_ROOT$home" SHELL=/usr/sbin/nologin USER="$user" LOGNAME="$user" \
        setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
}
systemd-sysusers() { command systemd-sysusers --root="$DW_ROOT" "$@"; }
systemd-analyze() { command systemd-analyze "$1" --root="$DW_ROOT" "${@:2}"; }
systemctl() { echo "$*" >> "$DW_ROOT/systemctl.log"; }
"""


def doc_blocks() -> dict[str, str]:
    """The document's walked blocks, by name."""
    found = dict(re.findall(r"<!-- walk: ([\w-]+) -->\n```sh\n(.*?)```", DOC.read_text(), re.DOTALL))
    assert set(found) >= {"install", "credential", "units", "network", "check", "migrate", "start"}, sorted(found)
    return found


@contextlib.asynccontextmanager
async def checkout_build(*, exclusive: bool) -> AsyncIterator[None]:
    """Held while a walked block builds the program from the checkout: pip builds in the checkout's
    `build/`, so two walks building at once (parallel test workers) would remove each other's files."""
    if not exclusive:
        yield
        return
    name = hashlib.sha256(str(CHECKOUT).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"depositwatch-build-{name}.lock").open("a") as lock:
        await asyncio.to_thread(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def rooted(text: str, root: Path) -> str:
    """`text` with every install path moved under `root`."""
    return _PATH.sub(lambda m: f"{root}{m.group(1)}", text)


@dataclass
class Host:
    """A temporary root with depositwatch installed in it as the document says."""

    root: Path
    blocks: dict[str, str] = field(default_factory=doc_blocks)

    async def walk(
        self, name: str, *, cwd: Path | None = None, stdin: str = "", replace: dict[str, str] | None = None
    ) -> str:
        """Run the document's block `name` in bash with the shims; its stdout, or AssertionError with its output."""
        script = self.blocks[name]
        for old, new in (replace or {}).items():
            assert old in script, (name, old)
            script = script.replace(old, new)
        async with checkout_build(exclusive="pip install" in script):
            return await self._run(name, script, cwd, stdin)

    async def _run(self, name: str, script: str, cwd: Path | None, stdin: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            SHIMS + rooted(script, self.root),
            cwd=cwd or CHECKOUT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "DW_ROOT": str(self.root)},
        )
        out, errs = await asyncio.wait_for(process.communicate(stdin.encode()), 600)
        assert process.returncode == 0, f"walk {name}: exit {process.returncode}\n{out.decode()}\n{errs.decode()}"
        return out.decode()

    def path(self, installed: str) -> Path:
        """Where an installed path is in the root."""
        return self.root / installed.lstrip("/")

    def ids(self) -> tuple[int, int]:
        """The uid and gid of the user the units run as, from the root's database."""
        passwd = (self.root / "etc" / "passwd").read_text().splitlines()
        entry = next(line.split(":") for line in passwd if line.startswith("depositwatch:"))
        return int(entry[2]), int(entry[3])

    def systemctl(self) -> list[str]:
        """What the walked blocks asked systemctl, in order."""
        log = self.root / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def reset_site(self) -> None:
        """Forget the previous site: its secrets, drop-ins, state and the systemctl log."""
        for path in (*self.path("/etc/depositwatch/credentials").iterdir(), self.root / "systemctl.log"):
            path.unlink(missing_ok=True)
        for path in (*self.path("/etc/systemd/system").glob("*.d"), self.path("/var/backups/depositwatch")):
            shutil.rmtree(path, ignore_errors=True)
        for path in self.path("/var/lib/depositwatch").iterdir():
            path.unlink()
        for path in self.path("/etc/systemd/system").glob("depositwatch-b.service"):
            path.unlink()


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """The install block walked once into a root every uid can traverse (a venv is slow to build)."""
    root = Path(tempfile.mkdtemp(prefix="dw-install-", dir="/tmp"))
    root.chmod(0o755)
    try:
        base_system(root, program=False)  # the program comes from the walk
        found = Host(root)
        asyncio.run(found.walk("install"))
        yield found
    finally:
        shutil.rmtree(root, ignore_errors=True)


def unit_settings(host: Host, unit: str) -> dict[str, list[str]]:
    """The unit file as installed and its drop-ins (in name order), as `Key: [values]`."""
    template = re.sub(r"@[^.]+\.", "@.", unit)
    system = host.path("/etc/systemd/system")
    files = [system / template, *sorted((system / f"{template}.d").glob("*.conf"))]
    found: dict[str, list[str]] = {}
    for path in files:
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, value = line.split("=", 1)
                found.setdefault(key, []).append(value)
    return found


@dataclass
class Started:
    """A unit's process, started as systemd would."""

    process: asyncio.subprocess.Process
    notify: NotifySocket
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def start_unit(host: Host, unit: str, *, where: Path) -> Started:
    """Start the unit as its installed file and drop-ins say: User=/Group= (setpriv), WorkingDirectory=,
    Environment=, EnvironmentFile=, a $CREDENTIALS_DIRECTORY with a copy of each LoadCredential=, a
    notify socket, and ExecStart= with its specifiers (%i, %S, %E) and ${VARS} expanded."""
    settings = unit_settings(host, unit)
    instance = unit.split("@", 1)[1].rsplit(".", 1)[0] if "@" in unit else ""
    uid, gid = host.ids()
    assert settings["User"] == ["depositwatch"] and settings["Group"] == ["depositwatch"]

    def expand(text: str) -> str:
        return text.replace("%i", instance).replace("%S", "/var/lib").replace("%E", "/etc").replace("%%", "%")

    environment: dict[str, str] = {}
    for path in settings.get("EnvironmentFile", []):
        for line in host.path(expand(path)).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                environment[key] = value
    for line in settings.get("Environment", []):
        for item in shlex.split(line):
            key, value = item.split("=", 1)
            environment[key] = value
    credentials = where / f"credentials-{unit}"
    credentials.mkdir(mode=0o500)
    for line in settings.get("LoadCredential", []):
        name, source = line.split(":", 1)
        shutil.copyfile(host.path(source), credentials / name)
        (credentials / name).chmod(0o400)
        os.chown(credentials / name, uid, gid)
    os.chown(credentials, uid, gid)
    notify = NotifySocket(where / f"notify-{unit}.sock")
    (where / f"notify-{unit}.sock").chmod(0o777)
    state = f"/var/lib/{settings['StateDirectory'][0]}"
    (exec_start,) = settings["ExecStart"]
    argv = [
        rooted(re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], expand(a)), host.root)
        for a in shlex.split(exec_start)
    ]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(host.path(state)),
        "USER": "depositwatch",
        "LOGNAME": "depositwatch",
        "STATE_DIRECTORY": str(host.path(state)),
        "CREDENTIALS_DIRECTORY": str(credentials),
        "NOTIFY_SOCKET": str(notify.path),
        **environment,
    }
    log = where / f"{unit}.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--",
            *argv,
            cwd=host.path(expand(settings["WorkingDirectory"][0])),
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Started(process, notify, log)


async def stop_unit(started: Started) -> int:
    """SIGTERM, as `systemctl stop` sends; the exit code."""
    if started.process.returncode is None:
        started.process.terminate()
    try:
        return await asyncio.wait_for(started.process.wait(), 60)
    finally:
        started.notify.close()


@pytest.fixture
def work(host: Host) -> Iterator[Path]:
    """A folder for the test's own files (sockets, credential copies, the book), readable by the unit's user."""
    host.reset_site()
    folder = Path(tempfile.mkdtemp(prefix="dw-work-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Site:
    """What a site follows and where its alerts go."""

    anvil: Anvil | None
    btc: BitcoinRegtestServer | None
    receiver: Receiver
    http_port: int = field(default_factory=free_port)

    def config(self, host: Host, store: str | None = None) -> str:
        """The config an operator writes after editing the example: store in the state directory."""
        url = store or f"sqlite:///{host.path('/var/lib/depositwatch/depositwatch.db')}"
        text = (
            f'[store]\nurl = "{url}"\n[http]\nlisten = "127.0.0.1:{self.http_port}"\n[alerts]\npoll_interval = 0.05\n'
        )
        if self.btc is not None:
            text += (
                '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
                f'rpc_urls = ["{self.btc.url}"]\nrpc_user = "{self.btc.user}"\n'
                'rpc_password = { file = "btc-rpc-password" }\n'
                f"confirmations = 1\npoll_interval = 0.1\nmempool = false\nstart_height = {self.btc.chain.height + 1}\n"
            )
        if self.anvil is not None:
            text += (
                f'[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = {CHAIN_ID}\nrpc_urls = ["{self.anvil.http_url}"]\n'
                "confirmations = 1\npoll_interval = 0.1\nbatch_blocks = 3\nstart_height = 1\n"
            )
        return text + (
            f'[[sinks]]\nname = "soc"\ntype = "webhook"\nurl = "{self.receiver.url}"\n'
            'secret = { file = "webhook-secret" }\nkinds = ["revoked_incoming"]\n'
            "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
        )

    def credentials(self) -> dict[str, str]:
        """The secrets this site's config names, by credential name."""
        found = {"webhook-secret": SECRETS["webhook-secret"]}
        if self.btc is not None:
            found["btc-rpc-password"] = self.btc.password
        return found

    def book(self) -> str:
        rows = ["chain,address,status,label,owner,revoked_at,reason"]
        if self.btc is not None:
            rows.append(
                f"btc,{script_to_address(BTC_REVOKED, 'regtest')},revoked,b1,cust-b1,2020-01-01T00:00:00Z,breach"
            )
        if self.anvil is not None:
            rows.append(f"eth,{REVOKED},revoked,r1,cust-r1,2020-01-01T00:00:00Z,breach")
        return "\n".join(rows) + "\n"

    async def pay_revoked(self) -> None:
        """One payment to a revoked address on each chain of the site, mined."""
        if self.btc is not None:
            self.btc.chain.send([(BTC_REVOKED, 50_000)])
            self.btc.chain.mine()
        if self.anvil is not None:
            await pay(self.anvil, REVOKED, 1)

    def alerted_chains(self) -> set[str]:
        return {r.json()["chain"] for r in self.receiver.accepted if r.json()["kind"] == "revoked_incoming"}

    def chains(self) -> set[str]:
        return {name for name, node in (("btc", self.btc), ("eth", self.anvil)) if node is not None}


@pytest.fixture(params=["evm-only", "bitcoin-only", "mixed"])
async def site(request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    """Real nodes on loopback (anvil, the Bitcoin test node) as the site needs, and a real receiver."""
    evm, btc = request.param != "bitcoin-only", request.param != "evm-only"
    async with Receiver() as receiver:
        anvil = Anvil(chain_id=CHAIN_ID) if evm else None
        node = BitcoinRegtestServer() if btc else None
        try:
            if anvil is not None:
                await anvil.start()
            if node is not None:
                await node.__aenter__()
                node.chain.mine(101)
            yield Site(anvil, node, receiver)
        finally:
            if node is not None:
                await node.__aexit__(None, None, None)
            if anvil is not None:
                await anvil.stop()


async def configure(host: Host, site: Site, work: Path, store: str | None = None) -> None:
    """Edit the config, write the credentials, the drop-ins; check, as the document says."""
    config = host.path("/etc/depositwatch/depositwatch.toml")
    config.write_text(site.config(host, store))  # the operator's edit: the file keeps its owner and mode
    for name, secret in site.credentials().items():
        await host.walk("credential", replace={"NAME": name}, stdin=secret + "\n")
    await host.walk("units")
    await host.walk("network")
    (work / "book.csv").write_text(site.book())


async def test_walk_install_config_credentials_units_and_run(host: Host, site: Site, work: Path) -> None:
    """The documented install works for this site: the service user reads the config and exactly the
    credentials its drop-in loads, the units verify as installed and rate SAFE or OK, and the daemon and
    the replay job, started as the units say, reach the nodes, the receiver and one shared store."""
    uid, gid = host.ids()
    assert 0 < uid < 1000 and 0 < gid < 1000
    documentation = unit_settings(host, "depositwatch.service")["Documentation"][0]
    assert host.path(documentation.removeprefix("file:")).is_file(), documentation
    config = host.path("/etc/depositwatch/depositwatch.toml")
    assert (config.stat().st_mode & 0o777, config.stat().st_uid, config.stat().st_gid) == (0o640, 0, gid)
    await configure(host, site, work)
    for name in site.credentials():
        secret = host.path(f"/etc/depositwatch/credentials/{name}")
        assert (secret.stat().st_mode & 0o777, secret.stat().st_uid) == (0o600, 0)
    for unit in ("depositwatch.service", "depositwatch-replay@breach.service"):
        loaded = [line.split(":")[0] for line in unit_settings(host, unit)["LoadCredential"]]
        assert sorted(loaded) == sorted(site.credentials()), unit

    checked = await host.walk("check")
    found = re.search(r"Overall exposure level for depositwatch\.service: (\d+\.\d+) (\w+)", checked)
    assert found and found.group(2) in {"SAFE", "OK"}, checked

    # The service user reads the config and the unit's credentials, and not the credentials' sources.
    program = str(host.path("/opt/depositwatch/bin/depositwatch"))
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", program, "--config", str(config)]
    creds = work / "unit-credentials"
    creds.mkdir(mode=0o500)
    for line in unit_settings(host, "depositwatch.service")["LoadCredential"]:
        name, source = line.split(":", 1)
        shutil.copyfile(host.path(source), creds / name)
        os.chown(creds / name, uid, gid)
        (creds / name).chmod(0o400)
    os.chown(creds, uid, gid)
    for directory, expected in ((creds, 0), (host.path("/etc/depositwatch/credentials"), 2)):
        done = subprocess.run(
            [*as_user, "check-config", "--resolve-secrets"],
            env={**os.environ, "CREDENTIALS_DIRECTORY": str(directory)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == expected, (directory, done.stderr)
    assert SECRETS["webhook-secret"] not in done.stdout + done.stderr

    await host.walk("start", cwd=work)
    assert host.systemctl() == ["daemon-reload", "enable --now depositwatch"]
    daemon = await start_unit(host, "depositwatch.service", where=work)
    try:
        await daemon.notify.wait_for("READY=1")
        await site.pay_revoked()
        await wait_for(lambda: site.alerted_chains() == site.chains(), 60, "an alert per chain")
        await host.walk("backup")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{daemon.output()}") from None
    finally:
        assert await stop_unit(daemon) == 0, daemon.output()
    backup = host.path(f"/var/backups/depositwatch/depositwatch-{datetime.now(UTC):%Y-%m-%d}.db")
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM addresses").fetchone() == (len(site.chains()),)
    assert backup.stat().st_uid == uid

    # The replay job: same user, store, config and credentials as the daemon.
    chain = "btc" if site.btc is not None else "eth"
    await host.walk("replay")
    env_file = host.path("/etc/depositwatch/replay-breach.env")
    assert set(dict(line.split("=", 1) for line in env_file.read_text().splitlines())) == {"CHAIN", "FROM", "TO"}
    top = site.btc.chain.height if site.btc is not None else await site.anvil.w3.eth.block_number  # type: ignore[union-attr]
    env_file.write_text(f"CHAIN={chain}\nFROM=1\nTO={top}\n")  # this site's range
    replay = await start_unit(host, "depositwatch-replay@breach.service", where=work)
    assert await asyncio.wait_for(replay.process.wait(), 120) == 0, replay.output()
    replay.notify.close()
    matches = host.path("/var/lib/depositwatch/replay-breach.jsonl").read_text().splitlines()
    assert any('"revoked_incoming"' in line for line in matches), matches
    assert host.systemctl()[-1] == "start depositwatch-replay@breach"


async def test_walk_db_migrate_on_a_fresh_store(host: Host, work: Path) -> None:
    """The documented first `db migrate`, as the service user, creates the store in the state directory."""
    async with Receiver() as receiver:
        site = Site(None, None, receiver)
        await configure(host, site, work)
        await host.walk("migrate")
    store = host.path("/var/lib/depositwatch/depositwatch.db")
    assert store.stat().st_uid == host.ids()[0]


async def test_walk_upgrade_and_restore(host: Host, work: Path) -> None:
    """The documented upgrade (program, units, `db migrate` on the existing store) and a restore of the
    documented backup keep the store and leave every file of it the service's."""
    async with Anvil(chain_id=CHAIN_ID) as anvil, Receiver() as receiver:
        site = Site(anvil, None, receiver)
        await configure(host, site, work)
        await host.walk("start", cwd=work)
        await host.walk("backup")
        await host.walk("upgrade")
        assert host.systemctl()[-3:] == ["stop depositwatch", "daemon-reload", "start depositwatch"]
        today = f"{datetime.now(UTC):%Y-%m-%d}"
        await host.walk("restore", replace={"2026-01-31": today})
        daemon = await start_unit(host, "depositwatch.service", where=work)
        try:
            await daemon.notify.wait_for("READY=1")
            await site.pay_revoked()
            await wait_for(lambda: site.alerted_chains() == {"eth"}, 60, "an alert after the restore")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.output()}") from None
        finally:
            assert await stop_unit(daemon) == 0, daemon.output()
    uid = host.ids()[0]
    for path in host.path("/var/lib/depositwatch").iterdir():
        assert path.stat().st_uid == uid, path


async def test_walk_second_instance_on_one_host(host: Host, work: Path, pg_url: str) -> None:
    """The documented second unit on the same host runs beside the first on one PostgreSQL store, each
    with its own HTTP endpoint: one leads, the other stands by."""
    async with Anvil(chain_id=CHAIN_ID) as anvil, Receiver() as receiver:
        site = Site(anvil, None, receiver)
        await configure(host, site, work, store=pg_url)
        await host.walk("start", cwd=work)
        await host.walk("second-instance")
        port = int(re.findall(r"DEPOSITWATCH_LISTEN=127\.0\.0\.1:(\d+)", host.blocks["second-instance"])[0])
        first = await start_unit(host, "depositwatch.service", where=work)
        second = await start_unit(host, "depositwatch-b.service", where=work)
        try:
            await first.notify.wait_for("READY=1")
            await second.notify.wait_for("READY=1", timeout=30)
            # READY comes before the chains settle: wait until one instance leads and the other stands by
            deadline = asyncio.get_running_loop().time() + 30
            async with aiohttp.ClientSession() as session:
                while True:
                    states = []
                    for listen in (site.http_port, port):
                        async with session.get(f"http://127.0.0.1:{listen}/healthz") as resp:
                            states.append((await resp.json())["chains"]["eth"]["state"])
                    if sorted(states) == ["following", "standby"] or asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.2)
            assert sorted(states) == ["following", "standby"], states
        finally:
            for started in (first, second):
                await stop_unit(started)
