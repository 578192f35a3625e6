"""A throw-away anvil node, and helpers that deploy the test contracts and move funds on it.

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
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint

ANVIL_ENV = "DEPOSITWATCH_ANVIL"
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_CHAIN_ID = 31337

# anvil's well-known dev keys for DEFAULT_MNEMONIC (m/44'/60'/0'/0/i); public test keys, never funded on
# any real chain.
_DEFAULT_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)

Web3 = AsyncWeb3[Any]


class AnvilError(Exception):
    """The node did not start, died, or refused a call."""


class AnvilNotFound(AnvilError):
    """No anvil binary: run `bash scripts/install-anvil.sh` or set $DEPOSITWATCH_ANVIL."""


@dataclass(frozen=True, slots=True)
class DevAccount:
    """A funded, unlocked dev account."""

    address: str  # EIP-55
    private_key: str  # 0x-prefixed hex


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

    async def __aenter__(self) -> Anvil:
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
        self.accounts = _dev_accounts(addresses)

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


def _dev_accounts(addresses: Iterable[str]) -> list[DevAccount]:
    keys = _default_keys_by_address()
    accounts = []
    for index, address in enumerate(addresses):
        checksummed = to_checksum_address(address)
        key = keys.get(checksummed.lower()) or _derive_key(index)
        accounts.append(DevAccount(checksummed, key))
    return accounts


@cache
def _default_keys_by_address() -> dict[str, str]:
    from eth_account import Account

    return {Account.from_key(key).address.lower(): key for key in _DEFAULT_KEYS}


def _derive_key(index: int) -> str:
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(account.key).hex()


# --- JSON-RPC and chain control ----------------------------------------------------------------------


async def rpc(w3: Web3, method: str, *params: Any) -> Any:
    """Call `method` on the node behind `w3`; a JSON-RPC error raises AnvilError naming it."""
    response = await w3.provider.make_request(RPCEndpoint(method), list(params))
    if "error" in response:
        raise AnvilError(f"{method} failed: {response['error']}")
    return response.get("result")


def _hex(value: int) -> str:
    return hex(value)


async def mine(w3: Web3, blocks: int = 1, interval: int | None = None) -> None:
    """Mine `blocks` blocks at once (`anvil_mine`), optionally `interval` seconds apart."""
    params: list[Any] = [_hex(blocks)]
    if interval is not None:
        params.append(_hex(interval))
    await rpc(w3, "anvil_mine", *params)


async def set_automine(w3: Web3, enabled: bool) -> None:
    """Switch automining on or off."""
    await rpc(w3, "evm_setAutomine", enabled)


async def snapshot(w3: Web3) -> str:
    """Save the chain state (`evm_snapshot`); returns the snapshot id."""
    result = await rpc(w3, "evm_snapshot")
    return str(result)


async def revert(w3: Web3, snapshot_id: str) -> bool:
    """Return to a snapshot (`evm_revert`): blocks mined since it are gone; mine again for a new branch."""
    return bool(await rpc(w3, "evm_revert", snapshot_id))


async def reorg(w3: Web3, depth: int, transactions: Sequence[tuple[dict[str, Any], int]] = ()) -> None:
    """Replace the last `depth` blocks with new ones (`anvil_reorg`); `transactions` are (tx, block offset)
    pairs to include in the new branch (offset 0 is the first replaced height)."""
    await rpc(w3, "anvil_reorg", depth, [[tx, offset] for tx, offset in transactions])


async def set_balance(w3: Web3, address: str, wei: int) -> None:
    """Set an address's ETH balance (`anvil_setBalance`)."""
    await rpc(w3, "anvil_setBalance", to_checksum_address(address), _hex(wei))


async def impersonate(w3: Web3, address: str) -> None:
    """Let `eth_sendTransaction` send from `address` without its key (`anvil_impersonateAccount`)."""
    await rpc(w3, "anvil_impersonateAccount", to_checksum_address(address))


async def stop_impersonating(w3: Web3, address: str) -> None:
    """Undo `impersonate`."""
    await rpc(w3, "anvil_stopImpersonatingAccount", to_checksum_address(address))


# --- transactions ------------------------------------------------------------------------------------


async def send_transaction(
    w3: Web3,
    sender: str,
    to: str | None = None,
    *,
    value: int = 0,
    data: bytes | str | None = None,
    gas: int | None = None,
) -> str:
    """Send a transaction from an unlocked or impersonated account; returns its hash.

    Give `gas` for a transaction that will revert: otherwise the node's gas estimate refuses it.
    """
    tx: dict[str, Any] = {"from": to_checksum_address(sender), "value": _hex(value)}
    if to is not None:
        tx["to"] = to_checksum_address(to)
    if data is not None:
        tx["data"] = data if isinstance(data, str) else "0x" + data.hex()
    if gas is not None:
        tx["gas"] = _hex(gas)
    return str(await rpc(w3, "eth_sendTransaction", tx))


async def wait_receipt(w3: Web3, tx_hash: str, timeout: float = 30.0) -> dict[str, Any]:
    """The receipt of `tx_hash` (a raw JSON-RPC dict), waiting up to `timeout` seconds for it to be mined."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        receipt = await rpc(w3, "eth_getTransactionReceipt", tx_hash)
        if receipt is not None:
            return dict(receipt)
        if loop.time() > deadline:
            raise AnvilError(f"no receipt for {tx_hash} after {timeout} s (is mining off?)")
        await asyncio.sleep(0.02)


async def send_eth(w3: Web3, sender: str, to: str, value: int, *, gas: int | None = None) -> str:
    """Send `value` wei; returns the transaction hash."""
    return await send_transaction(w3, sender, to, value=value, gas=gas)


@cache
def load_artefact(name: str) -> dict[str, Any]:
    """A compiled test contract, {"abi": [...], "bytecode": "0x..."}: `TestToken` or `TestNFT`."""
    text = resources.files("depositwatch.devnet").joinpath(f"{name}.json").read_text()
    artefact: dict[str, Any] = json.loads(text)
    return artefact


def _call_data(signature: str, types: Sequence[str], args: Sequence[Any]) -> bytes:
    return function_signature_to_4byte_selector(signature) + abi_encode(list(types), list(args))


async def _deploy(w3: Web3, deployer: str, name: str, types: Sequence[str], args: Sequence[Any]) -> str:
    bytecode = bytes.fromhex(load_artefact(name)["bytecode"].removeprefix("0x"))
    data = bytecode + abi_encode(list(types), list(args))
    tx_hash = await send_transaction(w3, deployer, None, data=data, gas=5_000_000)
    if not await rpc(w3, "anvil_getAutomine"):  # mining is off: mine the pool now so the contract exists
        await mine(w3)
    receipt = await wait_receipt(w3, tx_hash, timeout=10.0)
    if receipt.get("status") != "0x1" or not receipt.get("contractAddress"):
        raise AnvilError(f"deploying {name} failed: {receipt}")
    return to_checksum_address(receipt["contractAddress"])


async def deploy_token(w3: Web3, deployer: str, symbol: str, decimals: int, *, name: str | None = None) -> str:
    """Deploy a `TestToken`; returns its checksummed address. Mines a block if mining is off."""
    return await _deploy(
        w3, deployer, "TestToken", ("string", "string", "uint8"), (name or f"Test {symbol}", symbol, decimals)
    )


async def deploy_nft(w3: Web3, deployer: str) -> str:
    """Deploy a `TestNFT` (ERC-721); returns its checksummed address. Mines a block if mining is off."""
    return await _deploy(w3, deployer, "TestNFT", (), ())


async def mint_token(w3: Web3, token: str, sender: str, to: str, amount: int) -> str:
    """Mint `amount` base units to `to` (anyone may mint a TestToken)."""
    data = _call_data("mint(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=200_000)


async def send_token(w3: Web3, token: str, sender: str, to: str, amount: int, *, gas: int | None = None) -> str:
    """ERC-20 `transfer` from `sender`; returns the transaction hash."""
    data = _call_data("transfer(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=gas or 200_000)


async def send_token_many(w3: Web3, token: str, sender: str, recipients: Sequence[str], amounts: Sequence[int]) -> str:
    """`transferMany`: one transaction, one Transfer log per recipient."""
    data = _call_data(
        "transferMany(address[],uint256[])",
        ("address[]", "uint256[]"),
        ([to_checksum_address(r) for r in recipients], list(amounts)),
    )
    return await send_transaction(w3, sender, token, data=data, gas=100_000 + 40_000 * len(recipients))


async def failing_transfer(w3: Web3, token: str, sender: str, to: str, amount: int) -> str:
    """`failingTransfer`: emits a Transfer, then reverts; mined with status 0 and no logs."""
    data = _call_data("failingTransfer(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=200_000)


async def odd_transfer_log(w3: Web3, token: str, sender: str, to: str, amount: int) -> str:
    """`oddTransferLog`: a three-topic Transfer log with 64 bytes of data (not a valid ERC-20 Transfer)."""
    data = _call_data("oddTransferLog(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=200_000)


async def forward_eth(w3: Web3, token: str, sender: str, recipients: Sequence[str], amounts: Sequence[int]) -> str:
    """`forward` on a TestToken: the contract passes the ETH on, internal transfers only traces show."""
    data = _call_data(
        "forward(address[],uint256[])",
        ("address[]", "uint256[]"),
        ([to_checksum_address(r) for r in recipients], list(amounts)),
    )
    return await send_transaction(
        w3, sender, token, value=sum(amounts), data=data, gas=100_000 + 50_000 * len(recipients)
    )


async def mint_nft(w3: Web3, nft: str, sender: str, to: str, token_id: int) -> str:
    """Mint ERC-721 `token_id` to `to`."""
    data = _call_data("mint(address,uint256)", ("address", "uint256"), (to_checksum_address(to), token_id))
    return await send_transaction(w3, sender, nft, data=data, gas=200_000)


async def transfer_nft(w3: Web3, nft: str, sender: str, to: str, token_id: int) -> str:
    """ERC-721 `transferFrom(sender, to, token_id)`: a four-topic Transfer log."""
    data = _call_data(
        "transferFrom(address,address,uint256)",
        ("address", "address", "uint256"),
        (to_checksum_address(sender), to_checksum_address(to), token_id),
    )
    return await send_transaction(w3, sender, nft, data=data, gas=200_000)
