"""The anvil dev node and its helpers, against a real anvil (`bash scripts/install-anvil.sh`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account

from depositwatch.devnet import (
    ANVIL_ENV,
    DEFAULT_MNEMONIC,
    Anvil,
    AnvilError,
    AnvilNotFound,
    deploy_nft,
    deploy_token,
    failing_transfer,
    find_anvil,
    impersonate,
    load_artefact,
    mint_nft,
    mint_token,
    reorg,
    rpc,
    send_eth,
    send_token,
    send_token_many,
    set_automine,
    set_balance,
    snapshot,
    transfer_nft,
    wait_receipt,
)

TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
REVOKED = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
async def node() -> AsyncIterator[Anvil]:
    async with Anvil(chain_id=31337) as started:
        yield started


async def test_starts_answers_and_stops() -> None:
    anvil = Anvil(chain_id=4242)
    async with anvil as node:
        assert node.running
        assert node.http_url.startswith("http://127.0.0.1:")
        assert node.ws_url == node.http_url.replace("http://", "ws://")
        assert int(await node.rpc("eth_chainId"), 16) == 4242
        pid = node.pid
        assert pid is not None
    assert not anvil.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_two_nodes_get_their_own_ports() -> None:
    async with Anvil() as first, Anvil() as second:
        assert first.port != second.port
        assert await first.block_number() == await second.block_number() == 0


async def test_accounts_and_keys_match(node: Anvil) -> None:
    assert len(node.accounts) == 10
    for account in node.accounts:
        assert Account.from_key(account.private_key).address == account.address
    Account.enable_unaudited_hdwallet_features()
    first = Account.from_mnemonic(DEFAULT_MNEMONIC, account_path="m/44'/60'/0'/0/0")
    assert node.accounts[0].address == first.address


async def test_more_accounts_are_derived() -> None:
    async with Anvil(accounts=12) as node:
        assert len(node.accounts) == 12
        for account in node.accounts[10:]:
            assert Account.from_key(account.private_key).address == account.address


def test_find_anvil_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ANVIL_ENV, str(tmp_path / "missing"))
    with pytest.raises(AnvilNotFound, match=ANVIL_ENV):
        find_anvil()
    monkeypatch.delenv(ANVIL_ENV)
    assert find_anvil().name == "anvil"


async def test_a_binary_that_dies_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(AnvilError, match="cannot start"):
        async with Anvil(binary=fake):
            pass


async def test_tokens_and_nfts(node: Anvil) -> None:
    w3, alice, bob, carol = node.w3, *(a.address for a in node.accounts[:3])
    token = await deploy_token(w3, alice, "USDT", 6)
    assert load_artefact("TestToken")["bytecode"].startswith("0x")
    receipt = await wait_receipt(w3, await mint_token(w3, token, alice, bob, 5_000))
    assert receipt["status"] == "0x1"
    assert receipt["logs"][0]["topics"][0] == TRANSFER
    receipt = await wait_receipt(w3, await send_token(w3, token, bob, carol, 1_000))
    assert int(receipt["logs"][0]["data"], 16) == 1_000
    receipt = await wait_receipt(w3, await send_token_many(w3, token, bob, [alice, carol] * 5, list(range(1, 11))))
    assert [int(entry["data"], 16) for entry in receipt["logs"]] == list(range(1, 11))
    receipt = await wait_receipt(w3, await failing_transfer(w3, token, bob, carol, 1))
    assert receipt["status"] == "0x0"
    assert receipt["logs"] == []

    nft = await deploy_nft(w3, alice)
    await wait_receipt(w3, await mint_nft(w3, nft, alice, bob, 7))
    receipt = await wait_receipt(w3, await transfer_nft(w3, nft, bob, carol, 7))
    assert len(receipt["logs"][0]["topics"]) == 4


async def test_plain_eth_to_the_token_reverts(node: Anvil) -> None:
    w3, alice = node.w3, node.accounts[0].address
    token = await deploy_token(w3, alice, "TT", 18)
    receipt = await wait_receipt(w3, await send_eth(w3, alice, token, 1, gas=100_000))
    assert receipt["status"] == "0x0"


async def test_impersonation_sends_from_any_address(node: Anvil) -> None:
    w3 = node.w3
    await set_balance(w3, REVOKED, 10**18)
    assert int(await rpc(w3, "eth_getBalance", REVOKED, "latest"), 16) == 10**18
    await impersonate(w3, REVOKED)
    receipt = await wait_receipt(w3, await send_eth(w3, REVOKED, node.accounts[1].address, 12345))
    assert receipt["status"] == "0x1"
    assert receipt["from"] == REVOKED.lower()


async def test_no_mining_packs_transactions_into_one_block() -> None:
    async with Anvil(no_mining=True) as node:
        w3, alice, bob = node.w3, node.accounts[0].address, node.accounts[1].address
        token = await deploy_token(w3, alice, "USDT", 6)  # mines its own block
        height = await node.block_number()
        hashes = [await send_eth(w3, alice, bob, n + 1) for n in range(5)]
        hashes.append(await mint_token(w3, token, alice, bob, 10))
        assert await node.block_number() == height
        await node.mine()
        block = await rpc(w3, "eth_getBlockByNumber", hex(height + 1), False)
        assert block["transactions"] == hashes


async def test_automine_can_be_switched_off(node: Anvil) -> None:
    w3, alice, bob = node.w3, node.accounts[0].address, node.accounts[1].address
    await set_automine(w3, False)
    await send_eth(w3, alice, bob, 1)
    assert await node.block_number() == 0
    await node.mine(3)
    assert await node.block_number() == 3


async def test_snapshot_and_revert_make_a_reorg(node: Anvil) -> None:
    w3, alice, bob, carol = node.w3, *(a.address for a in node.accounts[:3])
    await node.mine(2)
    saved = await snapshot(w3)
    await wait_receipt(w3, await send_eth(w3, alice, bob, 1))  # mined before the block is read
    first = await rpc(w3, "eth_getBlockByNumber", "0x3", False)
    assert await node.revert(saved)
    assert await node.block_number() == 2
    await wait_receipt(w3, await send_eth(w3, alice, carol, 2))
    second = await rpc(w3, "eth_getBlockByNumber", "0x3", False)
    assert second["hash"] != first["hash"]
    assert second["parentHash"] == first["parentHash"]


async def test_anvil_reorg_replaces_the_last_blocks(node: Anvil) -> None:
    w3, alice, bob = node.w3, node.accounts[0].address, node.accounts[1].address
    for n in range(3):
        await send_eth(w3, alice, bob, n + 1)
    before = [(await rpc(w3, "eth_getBlockByNumber", hex(h), False))["hash"] for h in range(1, 4)]
    tx = {"from": alice, "to": bob, "value": hex(99)}
    await reorg(w3, 2, [(tx, 0)])
    after = [(await rpc(w3, "eth_getBlockByNumber", hex(h), True)) for h in range(1, 4)]
    assert after[0]["hash"] == before[0]
    assert after[1]["hash"] != before[1]
    assert after[2]["hash"] != before[2]
    assert [int(t["value"], 16) for t in after[1]["transactions"]] == [99]
