"""TronSource against the TRON test node: tip, ids, ranges, infos only where needed, network and internal checks."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains.base import BadNodeAnswer, WrongChain
from depositwatch.chains.tron import TronSource
from depositwatch.chains.tron_decode import TronTokens
from depositwatch.models import Asset
from tests.tronnode.chain import TronChain, account, trc20, trx
from tests.tronnode.client import PlainTransport
from tests.tronnode.server import TronNodeServer

USDT_KEY = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t").key
TOKENS = TronTokens(trc20={USDT_KEY: Asset("USDT", 6, "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")})


def _internal(n: int) -> list[dict[str, Any]]:
    return [
        {
            "caller_address": "41" + account(50).hex(),
            "transferTo_address": "41" + account(51).hex(),
            "callValueInfo": [{"callValue": n}],
        }
    ]


async def test_follows_blocks_and_fetches_infos_only_for_contract_calls() -> None:
    """A range of 150 blocks (two range calls); infos are asked only for the block with a contract call."""
    chain = TronChain()
    chain.mine(count=60)
    chain.mine([trx(account(1), account(2), 10)])
    chain.mine([trc20(account(1), account(2), USDT_KEY, 20, internal=_internal(5))])
    chain.mine(count=90)
    async with TronNodeServer(chain) as node:
        source = TronSource("tron", PlainTransport(node.url), TOKENS, internal=True)
        try:
            await source.open()
            tip = await source.tip()
            assert tip.height == chain.tip
            assert await source.hash_at(chain.tip) == tip.hash
            assert await source.hash_at(chain.tip + 1) is None
            node.calls.clear()
            blocks = await source.fetch(1000, chain.tip + 5)
            assert [b.height for b in blocks] == list(range(1000, chain.tip + 1))
            assert all(b.parent_hash == a.hash for a, b in pairwise(blocks))
            moved = [(b.height, t.asset.symbol, t.amount, t.index) for b in blocks for t in b.transfers]
            assert moved == [(1061, "TRX", 10, None), (1062, "USDT", 20, 0), (1062, "TRX", 5, -1)]
            assert node.calls["/wallet/gettransactioninfobyblocknum"] == 1
            assert node.calls["/wallet/getblockbylimitnext"] == 2
        finally:
            await source.close()


async def test_internal_transactions_are_detected_at_start() -> None:
    """`internal=None`: a node that saves internal transactions shows some in recent blocks; one that does not, none."""
    for saves in (True, False):
        chain = TronChain(save_internal=saves)
        chain.mine([trc20(account(1), account(2), USDT_KEY, 20, internal=_internal(5))])
        async with TronNodeServer(chain) as node:
            source = TronSource("tron", PlainTransport(node.url), TOKENS)
            try:
                await source.open()
                assert source.internal is saves
            finally:
                await source.close()


async def test_a_node_on_another_network_is_refused() -> None:
    """The config says mainnet; the node's block 0 is not mainnet's: WrongChain, naming both."""
    async with TronNodeServer(TronChain()) as node:
        source = TronSource("tron", PlainTransport(node.url), TOKENS, network="mainnet")
        try:
            with pytest.raises(WrongChain, match="network = 'mainnet'"):
                await source.open()
        finally:
            await source.close()


async def test_node_error_answers_are_typed() -> None:
    """java-tron's HTTP 200 `{"Error": ...}` is a BadNodeAnswer naming the call."""
    async with TronNodeServer(TronChain()) as node:
        source = TronSource("tron", PlainTransport(node.url), TOKENS, internal=False)
        try:
            with pytest.raises(BadNodeAnswer, match=r"getblockbylimitnext.*the node says"):
                await source._call("/wallet/getblockbylimitnext", {"startNum": 5, "endNum": 1})
        finally:
            await source.close()


async def test_watched_fetch_gives_the_same_matches_as_the_full_fetch() -> None:
    """With a registry attached, only transfers touching its keys are built, and matching them gives the
    same matches as matching every transfer."""
    from depositwatch.matcher import match_block
    from depositwatch.models import AddressStatus
    from depositwatch.registry import AddressRegistry, ChainBook

    chain = TronChain()
    watched_active, watched_revoked = account(2), account(3)
    for n in range(5):
        chain.mine(
            [
                trx(account(1), watched_active, 10 + n, nonce=chain.next_nonce()),
                trx(account(1), account(9), 99, nonce=chain.next_nonce()),
                trc20(watched_revoked, account(8), USDT_KEY, 20 + n, nonce=chain.next_nonce()),
                trc20(account(7), account(8), USDT_KEY, 30 + n, nonce=chain.next_nonce()),
            ]
        )
    book = ChainBook()
    book.add(watched_active, AddressStatus.ACTIVE, None)
    book.add(watched_revoked, AddressStatus.REVOKED, 0)
    registry = AddressRegistry({"tron": book})
    async with TronNodeServer(chain) as node:
        full = TronSource("tron", PlainTransport(node.url), TOKENS, internal=False)
        narrow = TronSource("tron", PlainTransport(node.url), TOKENS, internal=False)
        narrow.watch(registry)
        try:
            every, watched = await full.fetch(1000, chain.tip + 1), await narrow.fetch(1000, chain.tip + 1)
        finally:
            await full.close()
            await narrow.close()
    assert sum(len(b.transfers) for b in every) == 20
    assert sum(len(b.transfers) for b in watched) == 10
    assert [b.hash for b in every] == [b.hash for b in watched]
    full_matches = [m for b in every for m in match_block("tron", b, registry.book("tron"))]
    narrow_matches = [m for b in watched for m in match_block("tron", b, registry.book("tron"))]
    assert full_matches == narrow_matches
    assert len(full_matches) == 10
