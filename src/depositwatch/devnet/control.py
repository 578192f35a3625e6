"""Chain control on a local node: JSON-RPC calls, mining, snapshots and reorgs, balances,
impersonation, and sending transactions from its unlocked (or impersonated) accounts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from eth_utils.address import to_checksum_address
from web3 import AsyncWeb3
from web3.types import RPCEndpoint

Web3 = AsyncWeb3[Any]


class AnvilError(Exception):
    """The node did not start, died, or refused a call."""


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
