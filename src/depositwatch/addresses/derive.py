"""Expansion of a key tree into the bytes the registry keys on, and their address text.

Bitcoin children become output scripts: P2PKH, P2SH-P2WPKH, P2WPKH and P2TR with the BIP86 tweak
(key path only, no script tree). EVM and TRON children become the 20-byte account, keccak-256 of the
uncompressed public key; TRON writes the same 20 bytes in base58check with version 0x41.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from coincurve import PublicKey
from eth_hash.auto import keccak

from depositwatch.addresses.bitcoin import BitcoinNetwork, bitcoin_script_to_address, p2pkh_script, p2sh_script
from depositwatch.addresses.bitcoin import witness_script as _witness_script
from depositwatch.addresses.descriptors import KeyTree, ScriptType
from depositwatch.addresses.ethereum import ethereum_checksum_address
from depositwatch.addresses.hd import HARDENED, KeyNetwork, child, hash160, public_children
from depositwatch.addresses.tron import tron_address

_TAP_TWEAK_TAG = hashlib.sha256(b"TapTweak").digest() * 2  # BIP340 tagged hash: the tag's hash, twice
_FIELD_P = 2**256 - 2**32 - 977
_P2WPKH_REDEEM_PREFIX = b"\x00\x14"


def _pkh(point: PublicKey) -> bytes:
    return p2pkh_script(hash160(point.format()))


def _sh_wpkh(point: PublicKey) -> bytes:
    return p2sh_script(hash160(_P2WPKH_REDEEM_PREFIX + hash160(point.format())))


def _wpkh(point: PublicKey) -> bytes:
    return _witness_script(0, hash160(point.format()))


def _tr(point: PublicKey) -> bytes:
    # BIP86: Q = lift_x(P) + int(hash_TapTweak(x(P)))G. lift_x is the even-y point; negating y of the
    # uncompressed form avoids the square root a 02-prefixed parse would cost.
    full = point.format(compressed=False)
    x = full[1:33]
    if full[64] & 1:
        full = b"\x04" + x + (_FIELD_P - int.from_bytes(full[33:], "big")).to_bytes(32, "big")
    tweak = hashlib.sha256(_TAP_TWEAK_TAG + x).digest()
    return _witness_script(1, PublicKey(full).add(tweak).format()[1:])


def _account(point: PublicKey) -> bytes:
    return bytes(keccak(point.format(compressed=False)[1:])[12:])


_ENCODERS: dict[ScriptType, Callable[[PublicKey], bytes]] = {
    ScriptType.PKH: _pkh,
    ScriptType.SH_WPKH: _sh_wpkh,
    ScriptType.WPKH: _wpkh,
    ScriptType.TR: _tr,
    ScriptType.EVM: _account,
    ScriptType.TRON: _account,
}


def derive(tree: KeyTree, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(index, key bytes) for indexes start..stop-1 (stop exclusive, as range) of `tree`.

    Key bytes are the output script for Bitcoin and the 20-byte account for EVM and TRON. An index
    BIP32 has no key for (probability below 2^-127) is left out, as wallets skip it.
    """
    if not 0 <= start <= stop <= HARDENED:
        raise ValueError(f"index range {start}..{stop} is outside 0..2^31 (stop exclusive)")
    branch = tree.key
    for step in tree.path:
        branch = child(branch, step)
    encode = _ENCODERS[tree.script]
    for index, point in public_children(branch, start, stop):
        try:
            key = encode(point)
        except ValueError:
            continue  # BIP341: a tweak at or above the group order has no output key; skip as above
        yield index, key


def _pk(point: PublicKey) -> bytes:
    return b"\x21" + point.format() + b"\xac"  # <33-byte key> OP_CHECKSIG


_WATCH_EXTRA: dict[ScriptType, Callable[[PublicKey], bytes]] = {ScriptType.PKH: _pk}


def watch_keys(tree: KeyTree, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(index, key bytes) the registry watches for indexes start..stop-1: `derive`'s keys and, for a
    pkh() tree, also the bare P2PK script of the same key (an output that pays the key itself)."""
    if not 0 <= start <= stop <= HARDENED:
        raise ValueError(f"index range {start}..{stop} is outside 0..2^31 (stop exclusive)")
    extra = _WATCH_EXTRA.get(tree.script)
    if extra is None:
        yield from derive(tree, start, stop)
        return
    branch = tree.key
    for step in tree.path:
        branch = child(branch, step)
    encode = _ENCODERS[tree.script]
    for index, point in public_children(branch, start, stop):
        yield index, encode(point)
        yield index, extra(point)


def network_matches(tree: KeyTree, network: BitcoinNetwork | str) -> bool:
    """Whether a Bitcoin tree's key version (xpub or tpub family) fits the chain's network."""
    mainnet = BitcoinNetwork(network) is BitcoinNetwork.MAINNET
    return mainnet == (tree.network is KeyNetwork.MAINNET)


def address_text(tree: KeyTree, key: bytes, network: BitcoinNetwork | str = BitcoinNetwork.MAINNET) -> str:
    """The address a derived key is written as: Bitcoin on `network`, EIP-55 for EVM, base58 for TRON."""
    if tree.script is ScriptType.EVM:
        return ethereum_checksum_address(key)
    if tree.script is ScriptType.TRON:
        return tron_address(key)
    if tree.script is ScriptType.PKH and len(key) == 35 and key[0] == 0x21 and key[-1] == 0xAC:
        key = p2pkh_script(hash160(key[1:34]))  # a bare P2PK output has no address: its key's P2PKH one
    address = bitcoin_script_to_address(key, network)
    assert address is not None  # every script this module builds has an address
    return address
