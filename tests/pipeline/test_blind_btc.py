"""Blind spot 4 of issue 18 on the Bitcoin test server: outputs paying a bare public key (P2PK).

A book entry whose public key is known (imported as `pk(HEX)` or as bare hex in the address column)
registers its P2PKH script and its P2PK script, so an output paying either form matches; revoking it
by its P2PKH address revokes both. Without the key (a P2PKH address alone) only P2PKH outputs match:
the key cannot be recovered from its hash.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from coincurve import PrivateKey

from depositwatch.addressbook import ChainDirectory, ChainInfo, read_address_list, read_import_csv
from depositwatch.addresses.hd import hash160
from depositwatch.models import AddressStatus
from depositwatch.registry import AddressRegistry
from depositwatch.store import Scope, SqlStore
from tests.btcnode import BitcoinRegtestServer, p2pk, p2pkh, script_to_address
from tests.pipeline.test_btc_follow import Rig

DIRECTORY = ChainDirectory({"btc": ChainInfo("bitcoin", "regtest")})
HOUR_AGO = int(time.time()) - 3600


def pubkeys() -> tuple[bytes, bytes, bytes]:
    """A compressed key, an uncompressed key, and a third compressed key (known only by its address)."""
    first, second, third = (PrivateKey(bytes([n]) * 32).public_key for n in (7, 8, 9))
    return first.format(compressed=True), second.format(compressed=False), third.format(compressed=True)


@pytest.fixture
async def node() -> AsyncIterator[BitcoinRegtestServer]:
    async with BitcoinRegtestServer() as server:
        server.chain.mine(110)
        yield server


async def import_csv(store: SqlStore, rows: list[str]) -> None:
    text = "chain,address,status,label,owner,revoked_at\n" + "\n".join(rows) + "\n"
    await store.import_addresses(read_import_csv(text, DIRECTORY))


def address_of(pubkey: bytes) -> str:
    address = script_to_address(p2pkh(hash160(pubkey)), "regtest")
    assert address is not None
    return address


def test_a_public_key_registers_both_scripts() -> None:
    """`pk(HEX)` and bare hex, compressed or uncompressed, give the P2PKH entry and its P2PK twin;
    keys off the curve and wrong prefixes are refused."""
    compressed, uncompressed, _ = pubkeys()
    for text, pubkey in (
        (f"pk({compressed.hex()})", compressed),
        (compressed.hex(), compressed),
        (uncompressed.hex().upper(), uncompressed),
    ):
        (_, first), (_, second) = read_import_csv(f"chain,address,status,label\nbtc,{text},active,x\n", DIRECTORY)
        assert (first.key, first.type, first.address) == (p2pkh(hash160(pubkey)), "p2pkh", address_of(pubkey))
        assert (second.key, second.type, second.address) == (p2pk(pubkey), "p2pk", address_of(pubkey))
    bad_point = "02" + "ff" * 32
    bad_prefix = "05" + compressed.hex()[2:]
    for text in (bad_point, bad_prefix, f"pk({compressed.hex()[:-2]})"):
        with pytest.raises(ValueError, match=r"btc.*:2"):
            read_import_csv(f"chain,address,status,label\nbtc,{text},active,x\n", DIRECTORY, source="btc")


@pytest.mark.parametrize("watched", [True, False], ids=["watched-path", "full-blocks"])
async def test_p2pk_and_p2pkh_outputs_of_a_known_key_both_match(
    node: BitcoinRegtestServer, store: SqlStore, watched: bool
) -> None:
    """Outputs paying the bare key and its P2PKH address both alert for a revoked key; a key known only
    by its P2PKH address matches its P2PKH output, not a bare output paying the key."""
    compressed, uncompressed, unknown = pubkeys()
    await import_csv(
        store,
        [
            f"btc,pk({compressed.hex()}),revoked,c,o1,{HOUR_AGO}",
            f"btc,{uncompressed.hex()},revoked,u,o2,{HOUR_AGO}",
            f"btc,{address_of(unknown)},revoked,n,o3,{HOUR_AGO}",
        ],
    )
    registry = await AddressRegistry.load(store, ["btc"])
    rig = Rig(node, store, registry)
    await rig.start(watched=watched)
    try:
        tx = node.chain.send(
            [
                (p2pk(compressed), 10_000),
                (p2pkh(hash160(compressed)), 20_000),
                (p2pk(uncompressed), 30_000),
                (p2pkh(hash160(uncompressed)), 40_000),
                (p2pk(unknown), 50_000),  # its key is not in the book: not matched
                (p2pkh(hash160(unknown)), 60_000),
            ]
        )
        node.chain.mine()
        await rig.drain()
    finally:
        await rig.stop()
    rows = await store.matches(Scope.live())
    assert {(r["txid"], r["idx"], r["kind"], r["amount"], r["label"]) for r in rows} == {
        (tx.txid, 0, "revoked_incoming", "10000", "c"),
        (tx.txid, 1, "revoked_incoming", "20000", "c"),
        (tx.txid, 2, "revoked_incoming", "30000", "u"),
        (tx.txid, 3, "revoked_incoming", "40000", "u"),
        (tx.txid, 5, "revoked_incoming", "60000", "n"),
    }
    shown = {r["idx"]: r["address"] for r in rows}
    assert shown[0] == shown[1] == address_of(compressed)


async def test_revoking_the_p2pkh_address_revokes_the_p2pk_twin(store: SqlStore) -> None:
    """`addresses revoke` takes the address users know; the bare P2PK script of the same key goes too."""
    compressed, _, _ = pubkeys()
    await import_csv(store, [f"btc,pk({compressed.hex()}),active,c,o1,"])
    keys = read_address_list([address_of(compressed)], ["btc"], DIRECTORY)
    assert keys == [p2pkh(hash160(compressed))]
    result = await store.revoke(["btc"], keys, HOUR_AGO, "leak")
    assert result.revoked == 2
    registry = await AddressRegistry.load(store, ["btc"])
    assert registry.lookup("btc", p2pk(compressed)) == (AddressStatus.REVOKED, HOUR_AGO)
    assert registry.lookup("btc", p2pkh(hash160(compressed))) == (AddressStatus.REVOKED, HOUR_AGO)
    # a revocation list naming the key itself gives both scripts
    both = read_address_list([f"pk({compressed.hex()})"], ["btc"], DIRECTORY)
    assert both == [p2pkh(hash160(compressed)), p2pk(compressed)]
