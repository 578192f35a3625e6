"""The TRON test node: its answers decode with every integrity check, in both `visible` forms."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import aiohttp

from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains.tron_decode import TronTokens, decode_block
from depositwatch.models import Asset
from tests.tronnode.chain import TronChain, account, trc10, trc20, trx
from tests.tronnode.server import TronNodeServer

USDT_KEY = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t").key
TOKENS = TronTokens(trc20={USDT_KEY: Asset("USDT", 6, "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")})


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str) -> Any:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_blocks_decode_in_both_visible_forms() -> None:
    """A block of TRX, TRC-10 and USDT, fetched as hex and as base58, decodes to the same transfers."""
    chain = TronChain()
    a, b = account(1), account(2)
    chain.mine([trx(a, b, 5), trc10(a, b, "1002000", 9, nonce=1), trc20(a, b, USDT_KEY, 7, nonce=2)])
    async with TronNodeServer(chain) as node, aiohttp.ClientSession() as session:
        height = chain.tip
        _, infos = await _post(session, f"{node.url}/wallet/gettransactioninfobyblocknum", {"num": height})
        decoded = []
        for visible in (False, True):
            _, block = await _post(session, f"{node.url}/wallet/getblockbynum", {"num": height, "visible": visible})
            decoded.append(decode_block(block, infos, height, TOKENS))
        assert decoded[0] == decoded[1]
        assert [(t.asset.symbol, t.amount) for t in decoded[0].transfers] == [("TRX", 5), ("1002000", 9), ("USDT", 7)]


async def test_ranges_tip_and_solidified_head() -> None:
    """`getblockbylimitnext` is end-exclusive and linked; above the tip is `{}`; the solidified head is 19 back."""
    chain = TronChain()
    chain.mine(count=30)
    async with TronNodeServer(chain) as node, aiohttp.ClientSession() as session:
        _, now = await _post(session, f"{node.url}/wallet/getnowblock", {})
        assert now["block_header"]["raw_data"]["number"] == chain.tip
        _, solid = await _post(session, f"{node.url}/walletsolidity/getnowblock", {})
        assert solid["block_header"]["raw_data"]["number"] == chain.tip - 19
        _, ranged = await _post(session, f"{node.url}/wallet/getblockbylimitnext", {"startNum": 1001, "endNum": 1011})
        blocks = [decode_block(item, [], 1001 + n, TOKENS) for n, item in enumerate(ranged["block"])]
        assert len(blocks) == 10
        assert all(child.parent_hash == parent.hash for parent, child in pairwise(blocks))
        _, above = await _post(session, f"{node.url}/wallet/getblockbynum", {"num": chain.tip + 1})
        assert above == {}
        _, bad = await _post(session, f"{node.url}/wallet/getblockbynum", {"num": "x"})
        assert "Error" in bad


KEY = {"TRON-PRO-API-KEY": "k-123"}


async def test_api_key_reorg_and_internal_setting() -> None:
    """No key: 401. A reorg gives new ids at the same heights. Without saveInternalTx, no internal transactions."""
    chain = TronChain(save_internal=False)
    internal = [{"caller_address": "41" + account(5).hex(), "transferTo_address": "41" + account(6).hex(),
                 "callValueInfo": [{"callValue": 10}]}]  # fmt: skip
    chain.mine([trc20(account(1), account(2), USDT_KEY, 3, internal=internal)])
    async with TronNodeServer(chain, api_key="k-123") as node, aiohttp.ClientSession() as session:
        status, _ = await _post(session, f"{node.url}/wallet/getnowblock", {})
        assert status == 401
        status, before = await _post(session, f"{node.url}/wallet/getnowblock", {}, **KEY)
        assert status == 200
        _, infos = await _post(
            session,
            f"{node.url}/wallet/gettransactioninfobyblocknum",
            {"num": chain.tip},
            **KEY,
        )
        assert "internal_transactions" not in infos[0]
        chain.reorg(1)
        _, after = await _post(
            session, f"{node.url}/wallet/getblockbynum", {"num": before["block_header"]["raw_data"]["number"]},
            **KEY,
        )  # fmt: skip
        assert after["blockID"] != before["blockID"]
