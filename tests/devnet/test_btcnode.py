"""The Bitcoin Core stand-in is faithful: real blocks, Core's JSON shapes, error codes and HTTP behaviour.

Every block is fetched over HTTP and re-checked with `btc_wire` and `btc_decode` (hash, merkle root,
witness commitment, proof of work), and every JSON view is compared with the raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from depositwatch.chains.btc_decode import decode_block, decode_tx
from depositwatch.chains.btc_serialize import serialize_tx
from depositwatch.chains.btc_wire import RawBlock, block_hash, merkle_root
from tests.btcnode import (
    COIN,
    REGTEST_GENESIS_HASH,
    BitcoinRegtestServer,
    ChainRuleError,
    RegtestChain,
    address_to_script,
    op_return,
    p2pk,
    p2pkh,
    p2sh,
    p2tr,
    p2wpkh,
    p2wsh,
    script_asm,
    script_to_address,
    witness_program,
)
from tests.btcnode.chain import FAKE_PUBKEY, bits_to_target
from tests.btcnode.server import descriptor_checksum, infer_descriptor

H20 = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")
H32 = bytes.fromhex("1863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262")
XONLY = bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


class Rpc:
    """A bare JSON-RPC client over aiohttp, numbers parsed as Decimal, to see exactly what comes back."""

    def __init__(self, session: aiohttp.ClientSession, node: BitcoinRegtestServer) -> None:
        self.session = session
        self.node = node
        self.auth = {"Authorization": aiohttp.encode_basic_auth(node.user, node.password)}

    async def post(self, payload: Any, *, path: str = "/") -> tuple[int, Any]:
        async with self.session.post(self.node.url + path, data=json.dumps(payload), headers=self.auth) as resp:
            text = await resp.text()
            return resp.status, json.loads(text, parse_float=Decimal) if text else None

    async def raw(self, method: str, *params: Any) -> tuple[int, Any]:
        return await self.post({"jsonrpc": "1.0", "id": "t", "method": method, "params": list(params)})

    async def __call__(self, method: str, *params: Any) -> Any:
        status, body = await self.raw(method, *params)
        assert status == 200 and body["error"] is None, (method, status, body)
        return body["result"]

    async def error(self, method: str, *params: Any) -> tuple[int, int, str]:
        status, body = await self.raw(method, *params)
        assert body["result"] is None and body["id"] == "t", body
        return status, body["error"]["code"], body["error"]["message"]


@pytest.fixture
async def node() -> AsyncIterator[BitcoinRegtestServer]:
    async with BitcoinRegtestServer() as server:
        yield server


@pytest.fixture
async def rpc(node: BitcoinRegtestServer) -> AsyncIterator[Rpc]:
    async with aiohttp.ClientSession() as session:
        yield Rpc(session, node)


async def fetch_block(rpc: Rpc, height: int) -> tuple[str, RawBlock, bytes]:
    block_id = await rpc("getblockhash", height)
    raw = bytes.fromhex(await rpc("getblock", block_id, 0))
    return block_id, decode_block(raw), raw


def sats(value: Decimal) -> int:
    assert value == value.quantize(Decimal("0.00000001"))
    return int(value * COIN)


def busy_chain(chain: RegtestChain) -> dict[str, bytes]:
    """101 blocks, then one block paying every script type, then one spending some of them."""
    chain.mine(101)
    scripts = {
        "pubkeyhash": p2pkh(H20),
        "scripthash": p2sh(H20),
        "witness_v0_keyhash": p2wpkh(H20),
        "witness_v0_scripthash": p2wsh(H32),
        "witness_v1_taproot": p2tr(XONLY),
        "witness_unknown": witness_program(2, b"\x01\x02"),
        "nulldata": op_return(b"depositwatch"),
        "pubkey": p2pk(FAKE_PUBKEY),
        "multisig": b"\x51" + bytes((33,)) + FAKE_PUBKEY + b"\x51\xae",
        "nonstandard": b"\x00\x01\x02",
    }
    pay = chain.send([(script, 10_000 + i) for i, script in enumerate(scripts.values())], fee=2_345)
    chain.mine()
    spend = chain.spend([(pay.txid, n) for n in range(5)], [(p2wpkh(b"\x22" * 20), 40_000)])
    chain.spend([(spend.txid, 0)], [(p2tr(XONLY), 39_000)])
    chain.mine()
    return scripts


# ---------------------------------------------------------------------------------------------
# Blocks


async def test_genesis_is_regtest_genesis(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    block_id, block, raw = await fetch_block(rpc, 0)
    assert block_id == REGTEST_GENESIS_HASH == block.header.hash == block_hash(raw[:80])
    assert block.header.merkle_root == block.txs[0].txid
    assert (block.header.time, block.header.nonce, block.header.bits) == (1296688602, 2, 0x207FFFFF)
    assert await rpc("getbestblockhash") == REGTEST_GENESIS_HASH
    assert await rpc("getblockcount") == 0
    info = await rpc("getblockchaininfo")
    assert list(info) == [
        "chain", "blocks", "headers", "bestblockhash", "difficulty", "time", "mediantime",
        "verificationprogress", "initialblockdownload", "chainwork", "size_on_disk", "pruned", "warnings",
    ]  # fmt: skip
    assert info["chain"] == "regtest" and info["blocks"] == info["headers"] == 0
    assert info["initialblockdownload"] is True  # the genesis block is from 2011
    assert info["chainwork"] == "0" * 63 + "2"
    assert info["difficulty"] == Decimal("4.656542373906925E-10")
    assert info["verificationprogress"] == 1 and info["pruned"] is False and info["warnings"] == ""
    async with rpc.session.post(node.url, data='{"method":"getblockchaininfo"}', headers=rpc.auth) as resp:
        text = await resp.text()
    assert '"difficulty":4.656542373906925e-10,' in text and '"verificationprogress":1,' in text
    assert text.startswith('{"result":{"chain":"regtest"') and text.endswith(',"error":null,"id":null}\n')


async def test_mined_blocks_are_real_blocks(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    busy_chain(node.chain)
    info = await rpc("getblockchaininfo")
    assert info["blocks"] == 103 and info["initialblockdownload"] is False
    assert int(info["chainwork"], 16) == 2 * 104
    previous = REGTEST_GENESIS_HASH
    for height in range(1, 104):
        block_id, block, raw = await fetch_block(rpc, height)  # decode_block checks merkle root and commitment
        assert block.header.hash == block_id and block.header.prev_hash == previous
        assert int(block_id, 16) <= bits_to_target(block.header.bits) and block.header.bits == 0x207FFFFF
        assert merkle_root([bytes.fromhex(tx.txid)[::-1] for tx in block.txs])[::-1].hex() == block.header.merkle_root
        coinbase = block.txs[0]
        assert coinbase.is_coinbase and coinbase.inputs[0].witness == (bytes(32),)
        expected_height_push = bytes((0x50 + height,)) if height <= 16 else bytes((1, height))
        assert coinbase.inputs[0].script_sig == expected_height_push + b"\x00"  # BIP34, as Core writes it
        assert coinbase.outputs[-1].script[:6] == bytes.fromhex("6a24aa21a9ed")
        assert await rpc("getblockheader", block_id, False) == raw[:80].hex()
        previous = block_id
    assert len(block.txs) == 3 and block.txs[1].has_witness


async def test_getblock_verbosities_agree_with_the_raw_block(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    scripts = busy_chain(node.chain)
    for height in (102, 103):
        block_id, block, raw = await fetch_block(rpc, height)
        v1 = await rpc("getblock", block_id)
        assert v1 == await rpc("getblock", block_id, 1) == await rpc("getblock", block_id, True)
        assert v1["tx"] == [tx.txid for tx in block.txs]
        assert (v1["size"], v1["nTx"], v1["height"], v1["merkleroot"]) == (
            len(raw),
            len(block.txs),
            height,
            block.header.merkle_root,
        )
        assert v1["confirmations"] == 104 - height and v1["versionHex"] == "20000000" and v1["bits"] == "207fffff"
        v2 = await rpc("getblock", block_id, 2)
        v3 = await rpc("getblock", block_id, 3)
        assert [tx["txid"] for tx in v2["tx"]] == v1["tx"]
        for tx, j2, j3 in zip(block.txs, v2["tx"], v3["tx"], strict=True):
            assert j2["hex"] == serialize_tx(tx).hex() and decode_tx(bytes.fromhex(j2["hex"])) == tx
            assert (j2["hash"], j2["version"], j2["locktime"]) == (tx.wtxid, tx.version, tx.locktime)
            assert (
                j2["size"] == len(serialize_tx(tx))
                and j2["weight"] == 3 * len(serialize_tx(tx, witness=False)) + j2["size"]
            )
            assert [sats(out["value"]) for out in j2["vout"]] == [out.value for out in tx.outputs]
            assert [out["scriptPubKey"]["hex"] for out in j2["vout"]] == [out.script.hex() for out in tx.outputs]
            assert [out["n"] for out in j2["vout"]] == list(range(len(tx.outputs)))
            assert "blockhash" not in j2 and "prevout" not in json.dumps(j2, default=str)
            if tx.is_coinbase:
                assert "fee" not in j2 and list(j2["vin"][0]) == ["coinbase", "txinwitness", "sequence"]
                continue
            spent_values = [sats(vin["prevout"]["value"]) for vin in j3["vin"]]
            assert sats(j2["fee"]) == sats(j3["fee"]) == sum(spent_values) - sum(o.value for o in tx.outputs)
            for vin, txin in zip(j3["vin"], tx.inputs, strict=True):
                assert (vin["txid"], vin["vout"], vin["sequence"]) == (
                    txin.prev_txid_hex,
                    txin.prev_vout,
                    txin.sequence,
                )
                assert vin.get("txinwitness", []) == [w.hex() for w in txin.witness]
                assert list(vin["prevout"]) == ["generated", "height", "value", "scriptPubKey"]
    coinbase_out = (await rpc("getblock", await rpc("getblockhash", 102), 2))["tx"][0]["vout"][0]
    assert sats(coinbase_out["value"]) == 50 * COIN + 2_345
    assert coinbase_out["scriptPubKey"]["type"] == "witness_v0_keyhash"
    paid = (await rpc("getblock", await rpc("getblockhash", 102), 2))["tx"][1]["vout"]
    assert [out["scriptPubKey"]["type"] for out in paid[: len(scripts)]] == list(scripts)


async def test_amounts_are_numbers_with_eight_decimals(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    node.chain.mine(1)
    block_id = node.chain.tip.hash
    async with rpc.session.post(
        node.url, data=json.dumps({"method": "getblock", "params": [block_id, 2], "id": 7}), headers=rpc.auth
    ) as resp:
        text = await resp.text()
    assert '"value":50.00000000,"n":0,' in text and '"value":0.00000000,"n":1,' in text


async def test_script_json_types_addresses_and_descriptors() -> None:
    main = "main"
    cases = {
        p2pkh(bytes.fromhex("11b366edfc0a8b66feebae5c2e25a7b6a5d1cf31")): (
            "pubkeyhash",
            "12cbQLTFMXRnSzktFkuoG3eHoMeFtpTu3S",
        ),
        p2wpkh(H20): ("witness_v0_keyhash", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
        p2wsh(H32): ("witness_v0_scripthash", "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"),
        p2tr(XONLY): ("witness_v1_taproot", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"),
        p2pkh(bytes(20)): ("pubkeyhash", "1111111111111111111114oLvT2"),
    }
    for script, (_, address) in cases.items():
        assert script_to_address(script, main) == address
        assert address_to_script(address, main) == script
    # Core's own example: raw(76a914...88ac)#fm24fxxy is mainnet address 12cbQLTFMXRnSzktFkuoG3eHoMeFtpTu3S
    assert descriptor_checksum("raw(76a91411b366edfc0a8b66feebae5c2e25a7b6a5d1cf3188ac)") == "fm24fxxy"
    first = next(iter(cases))
    assert infer_descriptor(first, main).startswith("addr(12cbQLTFMXRnSzktFkuoG3eHoMeFtpTu3S)#")
    assert infer_descriptor(p2tr(XONLY), main) == f"rawtr({XONLY.hex()})#" + descriptor_checksum(
        f"rawtr({XONLY.hex()})"
    )
    assert infer_descriptor(p2tr(b"\xff" * 32), main).startswith("addr(bc1p")  # not a curve point: no rawtr()
    assert infer_descriptor(p2pk(FAKE_PUBKEY)).startswith(f"pk({FAKE_PUBKEY.hex()})#")
    assert infer_descriptor(op_return(b"hi")).startswith("raw(6a026869)#")
    regtest = {
        p2pkh(H20): ("m", "n"),
        p2sh(H20): ("2",),
        p2wpkh(H20): ("bcrt1q",),
        p2tr(XONLY): ("bcrt1p",),
    }
    for script, prefixes in regtest.items():
        encoded = script_to_address(script, "regtest")
        assert encoded is not None and encoded.startswith(prefixes)
        assert address_to_script(encoded, "regtest") == script
        with pytest.raises(ValueError):
            address_to_script(encoded, "main")
    assert script_to_address(p2pk(FAKE_PUBKEY)) == script_to_address(op_return(b"x")) is None
    assert script_asm(p2pkh(H20)) == f"OP_DUP OP_HASH160 {H20.hex()} OP_EQUALVERIFY OP_CHECKSIG"
    assert script_asm(op_return(b"\x01\x02")) == "OP_RETURN 513"
    assert script_asm(b"\x00\x4c") == "0 [error]"


async def test_scriptpubkey_json_follows_core(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    scripts = busy_chain(node.chain)
    tx = (await rpc("getblock", await rpc("getblockhash", 102), 2))["tx"][1]
    by_type = {out["scriptPubKey"]["type"]: out["scriptPubKey"] for out in tx["vout"]}
    assert set(scripts) <= set(by_type)
    for kind, spk in by_type.items():
        has_address = kind not in {"pubkey", "multisig", "nulldata", "nonstandard"}
        assert list(spk) == ["asm", "desc", "hex"] + (["address"] if has_address else []) + ["type"], kind
        assert spk["desc"][-9] == "#" and descriptor_checksum(spk["desc"][:-9]) == spk["desc"][-8:]
    assert by_type["pubkeyhash"]["address"] == script_to_address(p2pkh(H20), "regtest")
    assert by_type["witness_v1_taproot"]["desc"].startswith("rawtr(")
    assert by_type["multisig"]["desc"].startswith(f"multi(1,{FAKE_PUBKEY.hex()})#")
    assert by_type["nulldata"]["asm"] == "OP_RETURN " + b"depositwatch".hex()
    spend = (await rpc("getblock", node.chain.tip.hash, 2))["tx"][1]
    p2pkh_in = next(vin for vin in spend["vin"] if vin["scriptSig"]["hex"])
    assert p2pkh_in["scriptSig"]["asm"].endswith(f"[ALL] {FAKE_PUBKEY.hex()}")
    node.chain_name = "main"
    tx = (await rpc("getblock", await rpc("getblockhash", 102), 2))["tx"][1]
    assert tx["vout"][2]["scriptPubKey"]["address"] == "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"


# ---------------------------------------------------------------------------------------------
# HTTP, auth, errors, batches


async def test_authentication_is_required(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    payload = json.dumps({"method": "getblockcount", "id": 1})
    for headers in (
        {},
        {"Authorization": aiohttp.encode_basic_auth(node.user, "wrong")},
        {"Authorization": aiohttp.encode_basic_auth("other", node.password)},
        {"Authorization": "Bearer " + node.password},
    ):
        async with rpc.session.post(node.url, data=payload, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="jsonrpc"'
            assert await resp.read() == b""
    async with rpc.session.get(node.url, headers=rpc.auth) as resp:
        assert resp.status == 405 and await resp.text() == "JSONRPC server handles only POST requests"
    async with rpc.session.get(f"{node.url}/rest/chaininfo.json") as resp:  # REST needs no auth
        assert resp.status == 200
    async with rpc.session.post(f"{node.url}/nowhere", data=payload, headers=rpc.auth) as resp:
        assert resp.status == 404


async def test_error_codes_and_http_statuses(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    node.chain.mine(2)
    assert await rpc.error("getblockhash", 3) == (500, -8, "Block height out of range")
    assert await rpc.error("getblockhash", -1) == (500, -8, "Block height out of range")
    assert await rpc.error("getblockhash", 1.5) == (500, -1, "JSON integer out of range")
    status, code, message = await rpc.error("getblockhash", "1")
    assert (status, code) == (500, -3)
    assert message == (
        "Wrong type passed:\n{\n"
        '    "Position 1 (height)": "JSON value of type string is not of expected type number"\n}'
    )
    status, code, message = await rpc.error("getblockhash")
    assert (status, code) == (500, -1) and message.startswith("getblockhash height\n")
    assert await rpc.error("getblockheader", "00" * 32) == (500, -5, "Block not found")
    assert await rpc.error("getblock", "00" * 32, 2) == (500, -5, "Block not found")
    assert await rpc.error("getblock", "abc") == (500, -8, "blockhash must be of length 64 (not 3, for 'abc')")
    assert await rpc.error("getblock", "zz" * 32) == (
        500,
        -8,
        f"blockhash must be hexadecimal string (not '{'zz' * 32}')",
    )
    assert await rpc.error("getrawtransaction", "11" * 32) == (
        500,
        -5,
        "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
    )
    assert (await rpc.error("getrawtransaction", node.chain.genesis.txs[0].txid))[1] == -5
    assert await rpc.error("getmempoolentry", "11" * 32) == (500, -5, "Transaction not in mempool")
    assert await rpc.error("nosuchmethod") == (404, -32601, "Method not found")
    assert await rpc.error("getrawmempool", True, True) == (
        500,
        -8,
        "Verbose results cannot contain mempool sequence values.",
    )
    status, body = await rpc.post({"id": 5, "method": 7})
    assert (status, body) == (
        400,
        {"result": None, "error": {"code": -32600, "message": "Method must be a string"}, "id": 5},
    )
    async with rpc.session.post(node.url, data=b"{not json", headers=rpc.auth) as resp:
        assert resp.status == 500
        assert await resp.json() == {"result": None, "error": {"code": -32700, "message": "Parse error"}, "id": None}
    assert (await rpc.post(3))[1]["error"] == {"code": -32700, "message": "Top-level object parse error"}
    status, body = await rpc.post({"id": 1, "method": "getblockhash", "params": {"height": 2}})
    assert body["result"] == node.chain.active[2]
    status, body = await rpc.post({"id": 1, "method": "getblockhash", "params": {"heigth": 2}})
    assert body["error"] == {"code": -8, "message": "Unknown named parameter heigth"}
    status, body = await rpc.post({"id": 1, "method": "getblockcount"}, path="/wallet/somewallet")
    assert (status, body["result"]) == (200, 2)


async def test_batches_answer_each_request(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    node.chain.mine(1)
    status, body = await rpc.post(
        [
            {"jsonrpc": "1.0", "id": 1, "method": "getblockcount"},
            {"jsonrpc": "1.0", "id": 2, "method": "nosuch"},
            {"jsonrpc": "2.0", "id": 3, "method": "getblockhash", "params": [9]},
            "not an object",
            {"id": 5, "method": "getbestblockhash"},
        ]
    )
    assert status == 200
    assert body == [
        {"result": 1, "error": None, "id": 1},
        {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": 2},
        {"result": None, "error": {"code": -8, "message": "Block height out of range"}, "id": 3},
        {"result": None, "error": {"code": -32600, "message": "Invalid Request object"}, "id": None},
        {"result": node.chain.tip.hash, "error": None, "id": 5},
    ]
    assert await rpc.post([]) == (200, [])


async def test_jsonrpc_2_semantics_of_core_28() -> None:
    async with BitcoinRegtestServer(version=280000) as node, aiohttp.ClientSession() as session:
        rpc = Rpc(session, node)
        status, body = await rpc.post({"jsonrpc": "2.0", "id": 1, "method": "getblockhash", "params": [5]})
        assert (status, body) == (
            200,
            {"jsonrpc": "2.0", "error": {"code": -8, "message": "Block height out of range"}, "id": 1},
        )
        status, body = await rpc.post({"jsonrpc": "2.0", "id": 2, "method": "getblockcount"})
        assert (status, body) == (200, {"jsonrpc": "2.0", "result": 0, "id": 2})
        assert await rpc.post({"jsonrpc": "2.0", "method": "getblockcount"}) == (204, None)
        status, body = await rpc.post({"jsonrpc": "1.0", "id": 3, "method": "nosuch"})
        assert status == 404 and body["result"] is None  # legacy requests keep the legacy answers
        assert (await rpc("getblockchaininfo"))["warnings"] == []


# ---------------------------------------------------------------------------------------------
# Mempool, transactions, UTXO scans


async def test_mempool_and_transaction_lookups(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    chain = node.chain
    chain.mine(101)
    assert (await rpc("getblockchaininfo"))["initialblockdownload"] is False
    parent = chain.send([(p2wpkh(H20), 70_000)], fee=1_500)
    child = chain.spend([(parent.txid, 0)], [(p2tr(XONLY), 69_000)])
    assert await rpc("getrawmempool") == [parent.txid, child.txid]
    sequence = await rpc("getrawmempool", False, True)
    assert sequence["txids"] == [parent.txid, child.txid] and isinstance(sequence["mempool_sequence"], int)
    verbose = await rpc("getrawmempool", True)
    entry = verbose[child.txid]
    assert entry == await rpc("getmempoolentry", child.txid)
    assert list(entry) == [
        "vsize", "weight", "time", "height", "descendantcount", "descendantsize", "ancestorcount",
        "ancestorsize", "wtxid", "fees", "depends", "spentby", "bip125-replaceable", "unbroadcast",
    ]  # fmt: skip
    assert entry["depends"] == [parent.txid] and verbose[parent.txid]["spentby"] == [child.txid]
    assert (entry["ancestorcount"], verbose[parent.txid]["descendantcount"]) == (2, 2)
    assert sats(entry["fees"]["base"]) == 1_000 and sats(verbose[parent.txid]["fees"]["base"]) == 1_500
    assert entry["bip125-replaceable"] is True and entry["height"] == 101 and entry["wtxid"] == child.wtxid
    assert await rpc("getrawtransaction", child.txid) == serialize_tx(child).hex()
    unconfirmed = await rpc("getrawtransaction", child.txid, True)
    assert "blockhash" not in unconfirmed and "confirmations" not in unconfirmed
    block = chain.mine()[0]
    assert await rpc("getrawmempool") == []
    confirmed = await rpc("getrawtransaction", child.txid, 1)
    assert (confirmed["blockhash"], confirmed["confirmations"], confirmed["time"]) == (block.hash, 1, block.header.time)
    assert list(confirmed)[-4:] == ["blockhash", "confirmations", "time", "blocktime"]
    detailed = await rpc("getrawtransaction", child.txid, 2)
    assert sats(detailed["fee"]) == 1_000 and sats(detailed["vin"][0]["prevout"]["value"]) == 70_000
    in_block = await rpc("getrawtransaction", child.txid, True, block.hash)
    assert in_block["in_active_chain"] is True and next(iter(in_block)) == "in_active_chain"
    hex_tx = serialize_tx(chain.send([(p2sh(H20), 5_000)], submit=False)).hex()
    sent = await rpc("sendrawtransaction", hex_tx)
    assert await rpc("getrawmempool") == [sent]
    assert await rpc.error("sendrawtransaction", hex_tx[:-2]) == (
        500,
        -22,
        "TX decode failed. Make sure the tx has at least one input.",
    )
    assert (await rpc.error("sendrawtransaction", serialize_tx(child).hex()))[1:] == (
        -27,
        "Transaction already in block chain",
    )
    double = chain.spend([(sent, 0)], [(p2wpkh(H20), 4_000)], submit=False)
    chain.add_tx(double)
    conflict = chain.spend([(sent, 0)], [(p2wpkh(H20), 3_000)], submit=False)
    assert (await rpc.error("sendrawtransaction", serialize_tx(conflict).hex()))[1:] == (-26, "txn-mempool-conflict")


async def test_chain_rules_for_spends() -> None:
    chain = RegtestChain()
    chain.mine(99)  # as in Core, the coinbase of block 1 can go in block 101, not sooner
    young = chain.coins(chain.miner_script, mature_only=False)[-1][0]
    with pytest.raises(ChainRuleError, match="premature-spend-of-coinbase"):
        chain.spend([young], [(p2wpkh(H20), 1_000)])
    with pytest.raises(ChainRuleError, match="Insufficient funds"):
        chain.send([(p2wpkh(H20), 1_000)])
    chain.mine()
    tx = chain.send([(p2wpkh(H20), 1_000)])
    with pytest.raises(ChainRuleError, match="bad-txns-in-belowout"):
        chain.spend([(tx.txid, 0)], [(p2wpkh(H20), 1_001)])
    with pytest.raises(ChainRuleError, match="bad-txns-inputs-missingorspent"):
        chain.spend([("ab" * 32, 0)], [(p2wpkh(H20), 1)])
    replacement = chain.spend([(i.prev_txid_hex, i.prev_vout) for i in tx.inputs], [(p2sh(H20), 500)], submit=False)
    chain.replace_tx(tx.txid, replacement)
    assert chain.mempool_txs() == [replacement]
    assert chain.drop_tx(replacement.txid) == [replacement.txid] and not chain.mempool


async def test_scantxoutset(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    chain = node.chain
    chain.mine(101)
    target = p2wpkh(H20)
    first = chain.send([(target, 12_345)])
    chain.mine()
    second = chain.send([(target, 54_321), (p2pkh(H20), 1_000)])
    chain.mine()
    address = script_to_address(target, "regtest")
    result = await rpc("scantxoutset", "start", [f"raw({target.hex()})", {"desc": f"addr({address})"}])
    assert list(result) == ["success", "txouts", "height", "bestblock", "unspents", "total_amount"]
    assert result["success"] is True and result["height"] == 103 and result["bestblock"] == chain.tip.hash
    found = sorted((u["txid"], u["vout"], sats(u["amount"]), u["height"]) for u in result["unspents"])
    assert found == sorted([(first.txid, 0, 12_345, 102), (second.txid, 0, 54_321, 103)])
    assert {u["scriptPubKey"] for u in result["unspents"]} == {target.hex()}
    assert {u["desc"] for u in result["unspents"]} == {infer_descriptor(target)}
    assert sats(result["total_amount"]) == 66_666
    checksum = descriptor_checksum(f"raw({target.hex()})")
    assert len((await rpc("scantxoutset", "start", [f"raw({target.hex()})#{checksum}"]))["unspents"]) == 2
    assert await rpc.error("scantxoutset", "start", [f"raw({target.hex()})#qqqqqqqq"]) == (
        500,
        -5,
        f"Provided checksum 'qqqqqqqq' does not match computed checksum '{checksum}'",
    )
    assert await rpc.error("scantxoutset", "start", ["addr(notanaddress)"]) == (500, -5, "Address is not valid")
    assert await rpc.error("scantxoutset", "begin", []) == (500, -8, "Invalid action 'begin'")
    assert await rpc("scantxoutset", "status") is None


# ---------------------------------------------------------------------------------------------
# Reorgs


async def test_reorg_switches_branch(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    chain = node.chain
    chain.mine(101)
    tx = chain.send([(p2wpkh(H20), 30_000)])
    chain.mine(3)  # tx confirmed at 102
    old_102, old_tip = await rpc("getblockhash", 102), await rpc("getbestblockhash")
    assert (await rpc("getrawtransaction", tx.txid, True))["blockhash"] == old_102
    new_blocks = chain.reorg(3)  # 102..104 replaced by 102..105
    assert [b.height for b in new_blocks] == [102, 103, 104, 105]
    assert await rpc("getbestblockhash") == new_blocks[-1].hash != old_tip
    assert await rpc("getblockcount") == 105
    assert await rpc("getblockhash", 102) == new_blocks[0].hash != old_102
    stale = await rpc("getblock", old_102)
    assert stale["confirmations"] == -1 and "nextblockhash" not in stale
    assert (await rpc("getblockheader", new_blocks[0].prev_hash))["nextblockhash"] == new_blocks[0].hash
    assert await rpc("getrawmempool") == [tx.txid]  # back in the mempool, as after a real reorg
    again = await rpc("getrawtransaction", tx.txid, True)
    assert "blockhash" not in again
    tips = await rpc("getchaintips")
    assert tips[0] == {"height": 105, "hash": new_blocks[-1].hash, "branchlen": 0, "status": "active"}
    assert {"height": 104, "hash": old_tip, "branchlen": 3, "status": "invalid"} in tips
    in_stale = await rpc("getrawtransaction", tx.txid, True, old_102)
    assert (in_stale["in_active_chain"], in_stale["confirmations"]) == (False, 0)
    for height in range(100, 106):  # the new branch is as real as the old one
        block_id, block, _ = await fetch_block(rpc, height)
        assert block.header.hash == block_id
    remined = chain.mine()[0]
    assert tx.txid in [t.txid for t in remined.txs]
    assert (await rpc("getrawtransaction", tx.txid, True))["blockhash"] == remined.hash


# ---------------------------------------------------------------------------------------------
# REST


async def test_rest_matches_rpc(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    busy_chain(node.chain)
    session, url = rpc.session, node.url
    for height in (0, 102, 103):
        block_id = await rpc("getblockhash", height)
        async with session.get(f"{url}/rest/block/{block_id}.bin") as resp:
            assert resp.status == 200 and resp.content_type == "application/octet-stream"
            assert (await resp.read()).hex() == await rpc("getblock", block_id, 0)
        async with session.get(f"{url}/rest/block/{block_id}.hex") as resp:
            assert await resp.text() == await rpc("getblock", block_id, 0) + "\n"
        async with session.get(f"{url}/rest/block/{block_id}.json") as resp:
            assert json.loads(await resp.text(), parse_float=Decimal) == await rpc("getblock", block_id, 2)
        async with session.get(f"{url}/rest/block/notxdetails/{block_id}.json") as resp:
            assert json.loads(await resp.text(), parse_float=Decimal) == await rpc("getblock", block_id, 1)
        async with session.get(f"{url}/rest/blockhashbyheight/{height}.hex") as resp:
            assert await resp.text() == block_id + "\n"
    async with session.get(f"{url}/rest/block/{'00' * 32}.bin") as resp:
        assert (resp.status, await resp.text()) == (404, f"{'00' * 32} not found\r\n")
    async with session.get(f"{url}/rest/block/xyz.bin") as resp:
        assert (resp.status, await resp.text()) == (400, "Invalid hash: xyz\r\n")
    async with session.get(f"{url}/rest/block/{node.chain.tip.hash}.xml") as resp:
        assert resp.status == 404
    async with session.get(f"{url}/rest/chaininfo.json") as resp:
        assert json.loads(await resp.text(), parse_float=Decimal) == await rpc("getblockchaininfo")
    tx = node.chain.tip.txs[1]
    async with session.get(f"{url}/rest/tx/{tx.txid}.bin") as resp:
        assert await resp.read() == serialize_tx(tx)
    node.rest = False
    async with session.get(f"{url}/rest/chaininfo.json") as resp:
        assert resp.status == 404


# ---------------------------------------------------------------------------------------------
# Faults


async def test_warming_up_answers_minus_28(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    node.warming_up(True)
    for method in ("getblockchaininfo", "getblockcount", "nosuchmethod"):
        assert await rpc.error(method) == (500, -28, "Loading block index…")
    status, body = await rpc.post([{"id": 1, "method": "getblockcount"}])
    assert status == 200 and body[0]["error"]["code"] == -28
    async with rpc.session.get(f"{node.url}/rest/chaininfo.json") as resp:
        assert resp.status == 503 and (await resp.text()).startswith("Service temporarily unavailable: Loading")
    node.warming_up(True, "Verifying blocks…")
    assert (await rpc.error("getblockcount"))[2] == "Verifying blocks…"
    node.warming_up(False)
    assert await rpc("getblockcount") == 0


async def test_going_down_and_coming_back_on_the_same_port(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    url = node.url
    assert await rpc("getblockcount") == 0
    await node.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await rpc.raw("getblockcount")
    node.chain.mine(2)
    await node.come_up()
    assert node.url == url
    assert await rpc("getblockcount") == 2


async def test_chain_name_is_settable(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    node.chain_name = "main"
    assert (await rpc("getblockchaininfo"))["chain"] == "main"
    assert await rpc("getblockhash", 0) == REGTEST_GENESIS_HASH  # only the name changes


async def test_in_flight_requests_are_counted(node: BitcoinRegtestServer, rpc: Rpc) -> None:
    import asyncio

    node.latency = 0.05
    await asyncio.gather(*(rpc("getblockcount") for _ in range(6)))
    assert node.max_in_flight == 6 and node.in_flight == 0
    assert node.calls.count("getblockcount") == 6


async def test_block_versions_signal_like_core_regtest() -> None:
    chain = RegtestChain()
    chain.mine(433)
    versions = {height: chain.block_at(height).header.version for height in (1, 143, 144, 431, 432, 433)}
    assert versions == {
        1: 0x20000000,
        143: 0x20000000,
        144: 0x30000000,
        431: 0x30000000,
        432: 0x20000000,
        433: 0x20000000,
    }


async def test_timestamps_are_controllable() -> None:
    chain = RegtestChain()
    chain.set_time(1_700_000_000)
    first = chain.mine()[0]
    assert first.header.time == 1_700_000_000
    block = chain.mine(time=1_700_000_500)[0]
    assert block.header.time == 1_700_000_500
    with pytest.raises(ChainRuleError, match="time-too-old"):
        chain.mine(time=1_600_000_000)
    assert chain.median_time_past() == 1_700_000_000
