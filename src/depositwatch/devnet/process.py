"""A throw-away anvil node: finding the binary, starting it on a free port, stopping it.

`Anvil` is an async context manager: it starts the binary on a free 127.0.0.1 port with `--order fifo`
(fee ordering can drop a sender's later transactions when one block mixes transaction types), waits
until it answers, and stops it on exit (SIGTERM, or SIGINT when the state is dumped, then SIGKILL).

    async with Anvil(chain_id=31337) as node:
        token = await deploy_token(node.w3, node.accounts[0].address, "USDT", 6)
        await mint_token(node.w3, token, node.accounts[0].address, node.accounts[1].address, 10**6)

Transactions are sent with `eth_sendTransaction` from anvil's unlocked dev accounts, or from any
address after `impersonate` (a revoked address sweeping its funds, say). With automining (the default)
every transaction is mined at once in a block of its own; with `no_mining=True` they wait in the pool
until `mine` packs them into one block. Helpers return the transaction hash; `wait_receipt` waits for
the receipt. A reorg is simulated either with `snapshot`/`revert` and mining a different branch, or
with anvil's own `anvil_reorg` (`reorg`), which replaces the last blocks in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3

from depositwatch.devnet.control import AnvilError, Web3, mine, revert, rpc, snapshot
from depositwatch.devnet.keys import DEFAULT_MNEMONIC, DevAccount, dev_accounts

ANVIL_ENV = "DEPOSITWATCH_ANVIL"
DEFAULT_CHAIN_ID = 31337


class AnvilNotFound(AnvilError):
    """No anvil binary: run `bash scripts/install-anvil.sh` or set $DEPOSITWATCH_ANVIL."""


# --- finding the binary ------------------------------------------------------------------------------


def _platform_dirs() -> list[str]:
    import platform

    system = platform.system().lower()
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return [f"anvil-{system}-{arch}"]


def _tools_binary(root: Path) -> Path | None:
    base = root / ".tools" / "node_modules" / "@foundry-rs"
    if not base.is_dir():
        return None
    for name in _platform_dirs():
        candidate = base / name / "bin" / "anvil"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    for candidate in sorted(base.glob("anvil-*/bin/anvil")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_anvil() -> Path:
    """The anvil binary: $DEPOSITWATCH_ANVIL, else `.tools/` searched upward from the working directory
    and from this package's checkout, else PATH."""
    env = os.environ.get(ANVIL_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AnvilNotFound(f"${ANVIL_ENV} is {env!r}, which is not an executable file")
        return path
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    seen: set[Path] = set()
    for start in starts:
        for folder in (start, *start.parents):
            if folder in seen:
                continue
            seen.add(folder)
            found = _tools_binary(folder)
            if found is not None:
                return found
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise AnvilNotFound(
        f"anvil not found: run `bash scripts/install-anvil.sh` in the project folder, or set ${ANVIL_ENV} to the binary"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the node ----------------------------------------------------------------------------------------


class Anvil:
    """A local anvil node, started on entry and stopped on exit."""

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        no_mining: bool = False,
        block_time: float | None = None,
        accounts: int = 10,
        balance_eth: int | None = None,
        load_state: str | Path | None = None,
        dump_state: str | Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | Path | None = None,
        startup_timeout: float = 30.0,
        quiet: bool = True,
        port: int | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.no_mining = no_mining
        self.block_time = block_time
        self.account_count = accounts
        self.balance_eth = balance_eth
        self.load_state = Path(load_state) if load_state is not None else None
        self.dump_state = Path(dump_state) if dump_state is not None else None
        self.extra_args = list(extra_args)
        self.binary = Path(binary) if binary is not None else None
        self.startup_timeout = startup_timeout
        self.quiet = quiet
        self.fixed_port = port  # None: a free port is chosen at each start
        self.port = port or 0
        self.accounts: list[DevAccount] = []
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._w3: Web3 | None = None

    # urls and clients

    @property
    def http_url(self) -> str:
        """The JSON-RPC endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint (same port)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def w3(self) -> Web3:
        """An AsyncWeb3 client on this node, over a keep-alive session."""
        if self._w3 is None:
            raise AnvilError("anvil is not running")
        return self._w3

    @property
    def pid(self) -> int | None:
        """The node's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.returncode is None

    def command(self) -> list[str]:
        """The command line the node is started with (the port is chosen at start)."""
        binary = self.binary or find_anvil()
        args = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--order",
            "fifo",
            "--accounts",
            str(self.account_count),
            "--mnemonic",
            DEFAULT_MNEMONIC,
        ]
        if self.quiet:
            args.append("--quiet")
        if self.no_mining:
            args.append("--no-mining")
        if self.block_time is not None:
            args += ["--block-time", _number(self.block_time)]
        if self.balance_eth is not None:
            args += ["--balance", str(self.balance_eth)]
        if self.load_state is not None:
            args += ["--load-state", str(self.load_state)]
        if self.dump_state is not None:
            args += ["--dump-state", str(self.dump_state)]
        return args + self.extra_args

    # life cycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the node and wait until it answers JSON-RPC."""
        if self._process is not None:
            raise AnvilError("anvil is already running")
        last_error: AnvilError | None = None
        for _attempt in range(1 if self.fixed_port else 3):  # the free port may be taken before anvil binds it
            self.port = self.fixed_port or _free_port()
            try:
                await self._spawn()
            except AnvilError as exc:
                last_error = exc
                await self._reap()
                continue
            return
        assert last_error is not None
        raise last_error

    async def _spawn(self) -> None:
        args = self.command()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _reap
        self._process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16), timeout=aiohttp.ClientTimeout(total=60)
        )
        provider = AsyncHTTPProvider(self.http_url, exception_retry_configuration=None)
        await provider.cache_async_session(self._session)
        self._w3 = AsyncWeb3(provider)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        while True:
            if self._process.returncode is not None:
                raise AnvilError(f"anvil exited with status {self._process.returncode}: {self._log_tail()}")
            try:
                chain_id = await asyncio.wait_for(rpc(self._w3, "eth_chainId"), 2.0)
            except (aiohttp.ClientError, OSError, TimeoutError):
                if loop.time() > deadline:
                    raise AnvilError(
                        f"anvil did not answer within {self.startup_timeout} s: {self._log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            if int(chain_id, 16) != self.chain_id:
                raise AnvilError(f"anvil on port {self.port} reports chain id {int(chain_id, 16)}")
            break
        addresses = await rpc(self._w3, "eth_accounts")
        self.accounts = dev_accounts(addresses)

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - 2000))
        return self._log.read().decode(errors="replace").strip() or "(no output)"

    async def stop(self) -> None:
        """Stop the node: SIGTERM (SIGINT when dumping state, which anvil writes on SIGINT), then SIGKILL."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT if self.dump_state is not None else signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await self._reap()

    async def kill(self) -> None:
        """Kill the node at once (a crash, for tests)."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()

    async def _reap(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        self._process = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._w3 = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # shortcuts on this node

    async def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; a JSON-RPC error raises AnvilError."""
        return await rpc(self.w3, method, *params)

    async def mine(self, blocks: int = 1) -> None:
        """Mine `blocks` blocks now."""
        await mine(self.w3, blocks)

    async def block_number(self) -> int:
        """The current height."""
        return int(await rpc(self.w3, "eth_blockNumber"), 16)

    async def snapshot(self) -> str:
        """Save the chain state; `revert` returns to it."""
        return await snapshot(self.w3)

    async def revert(self, snapshot_id: str) -> bool:
        """Go back to a snapshot (the blocks after it disappear)."""
        return await revert(self.w3, snapshot_id)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
