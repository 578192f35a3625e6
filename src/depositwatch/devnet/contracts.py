"""The test contracts (`TestToken`, an ERC-20; `TestNFT`, an ERC-721) on a local node: deploy, mint, transfer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

from depositwatch.devnet.control import AnvilError, Web3, mine, rpc, send_transaction, wait_receipt


@cache
def load_artefact(name: str) -> dict[str, Any]:
    """A compiled test contract, {"abi": [...], "bytecode": "0x..."}: `TestToken` or `TestNFT`."""
    text = resources.files("depositwatch.devnet").joinpath(f"{name}.json").read_text()
    artefact: dict[str, Any] = json.loads(text)
    return artefact


def call_data(signature: str, types: Sequence[str], args: Sequence[Any]) -> bytes:
    return function_signature_to_4byte_selector(signature) + abi_encode(list(types), list(args))


async def deploy(w3: Web3, deployer: str, name: str, types: Sequence[str], args: Sequence[Any]) -> str:
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
    return await deploy(
        w3, deployer, "TestToken", ("string", "string", "uint8"), (name or f"Test {symbol}", symbol, decimals)
    )


async def deploy_nft(w3: Web3, deployer: str) -> str:
    """Deploy a `TestNFT` (ERC-721); returns its checksummed address. Mines a block if mining is off."""
    return await deploy(w3, deployer, "TestNFT", (), ())


async def mint_token(w3: Web3, token: str, sender: str, to: str, amount: int) -> str:
    """Mint `amount` base units to `to` (anyone may mint a TestToken)."""
    data = call_data("mint(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=200_000)


async def send_token(w3: Web3, token: str, sender: str, to: str, amount: int, *, gas: int | None = None) -> str:
    """ERC-20 `transfer` from `sender`; returns the transaction hash."""
    data = call_data("transfer(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=gas or 200_000)


async def send_token_many(w3: Web3, token: str, sender: str, recipients: Sequence[str], amounts: Sequence[int]) -> str:
    """`transferMany`: one transaction, one Transfer log per recipient."""
    data = call_data(
        "transferMany(address[],uint256[])",
        ("address[]", "uint256[]"),
        ([to_checksum_address(r) for r in recipients], list(amounts)),
    )
    return await send_transaction(w3, sender, token, data=data, gas=100_000 + 40_000 * len(recipients))


async def failing_transfer(w3: Web3, token: str, sender: str, to: str, amount: int) -> str:
    """`failingTransfer`: emits a Transfer, then reverts; mined with status 0 and no logs."""
    data = call_data("failingTransfer(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=200_000)


async def odd_transfer_log(w3: Web3, token: str, sender: str, to: str, amount: int) -> str:
    """`oddTransferLog`: a three-topic Transfer log with 64 bytes of data (not a valid ERC-20 Transfer)."""
    data = call_data("oddTransferLog(address,uint256)", ("address", "uint256"), (to_checksum_address(to), amount))
    return await send_transaction(w3, sender, token, data=data, gas=200_000)


async def forward_eth(w3: Web3, token: str, sender: str, recipients: Sequence[str], amounts: Sequence[int]) -> str:
    """`forward` on a TestToken: the contract passes the ETH on, internal transfers only traces show."""
    data = call_data(
        "forward(address[],uint256[])",
        ("address[]", "uint256[]"),
        ([to_checksum_address(r) for r in recipients], list(amounts)),
    )
    return await send_transaction(
        w3, sender, token, value=sum(amounts), data=data, gas=100_000 + 50_000 * len(recipients)
    )


async def mint_nft(w3: Web3, nft: str, sender: str, to: str, token_id: int) -> str:
    """Mint ERC-721 `token_id` to `to`."""
    data = call_data("mint(address,uint256)", ("address", "uint256"), (to_checksum_address(to), token_id))
    return await send_transaction(w3, sender, nft, data=data, gas=200_000)


async def transfer_nft(w3: Web3, nft: str, sender: str, to: str, token_id: int) -> str:
    """ERC-721 `transferFrom(sender, to, token_id)`: a four-topic Transfer log."""
    data = call_data(
        "transferFrom(address,address,uint256)",
        ("address", "address", "uint256"),
        (to_checksum_address(sender), to_checksum_address(to), token_id),
    )
    return await send_transaction(w3, sender, nft, data=data, gas=200_000)
