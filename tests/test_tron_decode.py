"""TRON answers to transfers: real mainnet infos decode exactly; integrity failures are typed errors, never matches."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.tron_decode import TRX, TronTokens, decode_block, info_transfers
from depositwatch.models import Asset
from tests.realdata import realdata
from tests.tronnode.chain import account, block_json, infos_json, trc10, trc20, trx

USDT_KEY = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t").key
USDT = Asset(symbol="USDT", decimals=6, contract="TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")
TOKENS = TronTokens(trc20={USDT_KEY: USDT}, trc10={"1002000": Asset(symbol="BTT", decimals=6)})
PARENT = "00" * 32


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(realdata("tron", name).read_text())
    return data


def test_real_usdt_transfer_info_decodes_to_its_transfer() -> None:
    """Mainnet tx ec7c9584: one USDT Transfer log, 51.474803 USDT, accounts from the 20-byte topics."""
    info = _load("mainnet_72822854.gettransactioninfobyid_ec7c9584.json")
    (transfer,) = info_transfers(info, 72822854, TOKENS)
    assert transfer.asset == USDT
    assert transfer.amount == 0x3117173 == 51_474_803
    assert transfer.from_key == bytes.fromhex("f1553144fce31a96b9b575de3a3a0f853d072b64")
    assert transfer.to_key == bytes.fromhex("ad7e79abd49d4196b3bc7c16ad200b8d96e6c08c")
    assert transfer.index == 0
    assert transfer.txid == info["id"]
    assert transfer.to_address is not None and transfer.to_address.startswith("T")


def test_real_usdt_log_is_ignored_when_usdt_is_not_configured() -> None:
    """The same log with no TRC-20 configured: nothing (only configured contracts count)."""
    info = _load("mainnet_72822854.gettransactioninfobyid_ec7c9584.json")
    assert info_transfers(info, 72822854, TronTokens()) == []


def test_real_internal_trx_decodes() -> None:
    """Mainnet tx c3dcf82d: one internal call moving 300,000 sun from the contract to 419173...; its other
    log is not a Transfer."""
    info = _load("mainnet_84276720.gettransactioninfobyid_c3dcf82d_internal_trx.json")
    (transfer,) = info_transfers(info, 84276720, TOKENS)
    assert transfer.asset == TRX
    assert transfer.amount == 300_000
    assert transfer.from_key == bytes.fromhex("52a5f2a94125ef11673f86104e2ce3f86ece2c25")
    assert transfer.to_key == bytes.fromhex("9173b4004d81e3f1ae68d925dd9e874aa37edb2f")
    assert transfer.index == -1
    assert info_transfers(info, 84276720, TOKENS, internal=False) == []


def test_real_testnet_block_decodes_with_no_transfers() -> None:
    """The testnet block passes every integrity check; its calls move no TRX and have no infos here."""
    block = _load("testnet_55088560.getblockbynum.json")
    decoded = decode_block(block, [], 55088560, TOKENS)
    assert decoded.hash == block["blockID"]
    assert decoded.parent_hash == block["block_header"]["raw_data"]["parentHash"]
    assert decoded.tx_count == 3
    assert decoded.transfers == ()
    assert decoded.time == 1749121581


def _chain() -> tuple[list[Any], dict[str, Any], list[dict[str, Any]]]:
    a, b, c = account(1), account(2), account(3)
    txs = [
        trx(a, b, 1_500_000),
        trc10(a, c, "1002000", 42, nonce=1),
        trc10(a, c, "1000001", 7, nonce=2),
        trc20(b, c, USDT_KEY, 250_000_000, nonce=3),
        trc20(b, c, account(77), 999, nonce=4),  # another token: not configured
        trc20(b, c, USDT_KEY, 5, emitter=account(66), nonce=5),  # a fake contract emitting a Transfer
        trc20(b, c, USDT_KEY, 6, result="REVERT", receipt_result="REVERT", nonce=6),
        trc20(b, c, USDT_KEY, 7, result="OUT_OF_ENERGY", receipt_result="OUT_OF_ENERGY", nonce=7),
    ]
    return txs, block_json(100, PARENT, txs), infos_json(100, txs)


def test_a_block_of_every_kind() -> None:
    """TRX, a configured and an unconfigured TRC-10, USDT; a fake emitter, another token and failed calls ignored."""
    _, block, infos = _chain()
    decoded = decode_block(block, infos, 100, TOKENS)
    found = [(t.asset.symbol, t.amount, t.index) for t in decoded.transfers]
    assert found == [("TRX", 1_500_000, None), ("BTT", 42, None), ("1000001", 7, None), ("USDT", 250_000_000, 0)]
    assert decoded.transfers[0].from_key == account(1) and decoded.transfers[0].to_key == account(2)


def _mutated(change: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, block, infos = _chain()
    block, infos = copy.deepcopy(block), copy.deepcopy(infos)
    change(block, infos)
    return block, infos


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, i: b["transactions"][0]["raw_data"]["contract"][0]["parameter"]["value"].update(amount=9), "amount"),
        (
            lambda b, i: b["transactions"][0]["raw_data"]["contract"][0]["parameter"]["value"].update(
                to_address="41" + account(9).hex()
            ),
            "to_address",
        ),
        (lambda b, i: b["transactions"][0].update(txID="00" * 32), "txID"),
        (lambda b, i: b["transactions"][6]["ret"][0].update(contractRet="SUCCESS"), "txTrieRoot"),
        (lambda b, i: b.update(blockID="00" * 32), "blockID"),
        (lambda b, i: b["block_header"]["raw_data"].update(number=101), "answered block 101"),
        (lambda b, i: i[0].update(id="ab" * 32), "not in this block"),
        (lambda b, i: i[0].update(blockNumber=99), "another block"),
        (lambda b, i: i[3]["log"][0]["topics"].__setitem__(2, "ff" * 12 + account(3).hex()), "upper 12 bytes"),
        (lambda b, i: b["block_header"]["raw_data"].update(timestamp=2**256), "timestamp"),
        (lambda b, i: b["transactions"][1]["ret"][0].update(contractRet="MAYBE"), "unknown contractRet"),
    ],
)
def test_integrity_failures_are_typed_errors(change: Any, message: str) -> None:
    """Each lie about the signed bytes, the ids, the block or the topics is a BadNodeAnswer naming it."""
    block, infos = _mutated(change)
    with pytest.raises(BadNodeAnswer, match=message):
        decode_block(block, infos, 100, TOKENS)


def test_hostile_shapes_are_typed_errors() -> None:
    """Wrong types anywhere raise BadNodeAnswer, not KeyError or TypeError."""
    for block in (None, [], {"block_header": []}, {"block_header": {"raw_data": {"txTrieRoot": 5}}}):
        with pytest.raises(BadNodeAnswer):
            decode_block(block, [], 100, TOKENS)
    _, good, _ = _chain()
    with pytest.raises(BadNodeAnswer):
        decode_block(good, {"id": 1}, 100, TOKENS)
