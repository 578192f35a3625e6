"""Bitcoin addresses to output scripts and back, for mainnet, testnet, signet and regtest."""

from __future__ import annotations

import re
from enum import StrEnum

from depositwatch.addresses.base58 import b58check_decode, b58check_encode
from depositwatch.addresses.bech32 import bech32_decode, decode_segwit_address, encode_bech32_address
from depositwatch.addresses.common import AddressError, ParsedAddress, reject_surrounding_whitespace


class BitcoinNetwork(StrEnum):
    """The Bitcoin networks an address can belong to."""

    MAINNET = "mainnet"
    TESTNET = "testnet"
    SIGNET = "signet"
    REGTEST = "regtest"


# Testnet and signet share every prefix, so an address alone cannot tell them apart.
_HRP = {
    BitcoinNetwork.MAINNET: "bc",
    BitcoinNetwork.TESTNET: "tb",
    BitcoinNetwork.SIGNET: "tb",
    BitcoinNetwork.REGTEST: "bcrt",
}
_HRP_OWNERS = {"bc": "mainnet", "tb": "testnet and signet", "bcrt": "regtest"}
_SEGWIT_PREFIXES = tuple(f"{hrp}1" for hrp in _HRP_OWNERS)

_P2PKH_VERSION = {network: 0x00 if network is BitcoinNetwork.MAINNET else 0x6F for network in BitcoinNetwork}
_P2SH_VERSION = {network: 0x05 if network is BitcoinNetwork.MAINNET else 0xC4 for network in BitcoinNetwork}
_VERSION_OWNERS = {
    0x00: "a mainnet P2PKH version",
    0x05: "a mainnet P2SH version",
    0x6F: "the testnet, signet and regtest P2PKH version",
    0xC4: "the testnet, signet and regtest P2SH version",
}
_HASH_LENGTH = 20
# Long enough for any 21-byte payload (34 characters) with room to report a wrong length,
# short enough that decoding arbitrary input stays cheap.
_MAX_BASE58_LENGTH = 64

_OP_0 = 0x00
_OP_1 = 0x51
_OP_16 = 0x60
_OP_DUP = 0x76
_OP_HASH160 = 0xA9
_OP_EQUAL = 0x87
_OP_EQUALVERIFY = 0x88
_OP_CHECKSIG = 0xAC


def _as_network(network: BitcoinNetwork | str) -> BitcoinNetwork:
    try:
        return BitcoinNetwork(network)
    except ValueError:
        choices = ", ".join(member.value for member in BitcoinNetwork)
        raise ValueError(f"unknown Bitcoin network {network!r}; expected one of {choices}") from None


def p2pkh_script(key_hash: bytes) -> bytes:
    """OP_DUP OP_HASH160 <20-byte hash> OP_EQUALVERIFY OP_CHECKSIG."""
    return bytes([_OP_DUP, _OP_HASH160, _HASH_LENGTH]) + key_hash + bytes([_OP_EQUALVERIFY, _OP_CHECKSIG])


def p2sh_script(script_hash: bytes) -> bytes:
    """OP_HASH160 <20-byte hash> OP_EQUAL."""
    return bytes([_OP_HASH160, _HASH_LENGTH]) + script_hash + bytes([_OP_EQUAL])


def witness_script(version: int, program: bytes) -> bytes:
    """OP_n followed by a direct push of the witness program (OP_0 for version 0, 0x50 + n above)."""
    opcode = _OP_0 if version == 0 else _OP_1 - 1 + version
    return bytes([opcode, len(program)]) + program


def witness_program(script: bytes) -> tuple[int, bytes] | None:
    """The (version, program) of a witness output script, or None for any other script.

    Same shape test as Bitcoin Core's IsWitnessProgram: 4 to 42 bytes, a version opcode, then one
    direct push covering the rest.
    """
    if not 4 <= len(script) <= 42 or script[1] + 2 != len(script):
        return None
    if script[0] == _OP_0:
        return 0, script[2:]
    if _OP_1 <= script[0] <= _OP_16:
        return script[0] - _OP_1 + 1, script[2:]
    return None


def _witness_type(version: int, program: bytes) -> str | None:
    if version == 0:
        # Version 0 programs of other lengths are unspendable, and no address can express them.
        return {20: "p2wpkh", 32: "p2wsh"}.get(len(program))
    if version == 1 and len(program) == 32:
        return "p2tr"
    return "witness_unknown"


_PUBKEY_TEXT = re.compile(r"(?:pk\(([0-9a-fA-F]{66}|[0-9a-fA-F]{130})\)|([0-9a-fA-F]{66}|[0-9a-fA-F]{130}))\Z")


def p2pk_script(pubkey: bytes) -> bytes:
    """The bare pay-to-public-key script: push the 33- or 65-byte key, OP_CHECKSIG."""
    return bytes([len(pubkey)]) + pubkey + bytes([_OP_CHECKSIG])


def looks_like_pubkey(text: str) -> bool:
    """Whether `text` is meant as a public key (`pk(HEX)` or 66/130 hex digits), not an address: no base58
    address holds a 0 and no bech32 one starts with a digit, so the forms never overlap."""
    return text.startswith("pk(") or (len(text) in (66, 130) and all(c in "0123456789abcdefABCDEF" for c in text))


def parse_bitcoin_pubkey(text: str, network: BitcoinNetwork | str) -> ParsedAddress:
    """A public key (`pk(HEX)` or bare hex, compressed or uncompressed): its P2PKH address, registered with
    its bare P2PK script too (`also`), so an output paying either form matches. Raises AddressError."""
    from coincurve import PublicKey

    from depositwatch.addresses.hd import hash160

    net = _as_network(network)
    found = _PUBKEY_TEXT.match(text)
    if found is None:
        raise AddressError(text, "not a public key: expected pk(HEX) or 33 or 65 bytes of hex")
    pubkey = bytes.fromhex(found.group(1) or found.group(2))
    if pubkey[0] not in ((2, 3) if len(pubkey) == 33 else (4,)):
        raise AddressError(text, f"a {len(pubkey)}-byte public key cannot start with 0x{pubkey[0]:02x}")
    try:
        PublicKey(pubkey)
    except ValueError:
        raise AddressError(text, "not a point on secp256k1") from None
    key_hash = hash160(pubkey)
    return ParsedAddress(
        address=b58check_encode(bytes([_P2PKH_VERSION[net]]) + key_hash),
        key=p2pkh_script(key_hash),
        type="p2pkh",
        also=((p2pk_script(pubkey), "p2pk"),),
    )


def script_type(script: bytes) -> str | None:
    """Classify an output script as p2pkh, p2sh, p2wpkh, p2wsh, p2tr or witness_unknown; None otherwise."""
    if (
        len(script) == 25
        and script[:3] == bytes([_OP_DUP, _OP_HASH160, _HASH_LENGTH])
        and script[23:] == bytes([_OP_EQUALVERIFY, _OP_CHECKSIG])
    ):
        return "p2pkh"
    if len(script) == 23 and script[:2] == bytes([_OP_HASH160, _HASH_LENGTH]) and script[22] == _OP_EQUAL:
        return "p2sh"
    witness = witness_program(script)
    if witness is None:
        return None
    return _witness_type(*witness)


def bitcoin_script_to_address(script: bytes, network: BitcoinNetwork | str) -> str | None:
    """The address that pays to `script` on `network`, or None for scripts without one (OP_RETURN, P2PK...)."""
    net = _as_network(network)
    kind = script_type(script)
    if kind == "p2pkh":
        return b58check_encode(bytes([_P2PKH_VERSION[net]]) + script[3:23])
    if kind == "p2sh":
        return b58check_encode(bytes([_P2SH_VERSION[net]]) + script[2:22])
    if kind is None:
        return None
    witness = witness_program(script)
    assert witness is not None  # script_type found a witness type
    return encode_bech32_address(_HRP[net], *witness)


def _foreign_hrp_reason(hrp: str, network: BitcoinNetwork) -> str:
    owner = _HRP_OWNERS.get(hrp)
    if owner is None:
        return f"human-readable part {hrp!r} is not a Bitcoin network's ({network.value} uses {_HRP[network]!r})"
    return f"human-readable part {hrp!r} belongs to {owner}, not {network.value} ({_HRP[network]!r})"


def _parse_segwit(address: str, network: BitcoinNetwork) -> ParsedAddress:
    hrp, version, program = decode_segwit_address(address)
    expected = _HRP[network]
    if hrp != expected:
        raise AddressError(address, _foreign_hrp_reason(hrp, network))
    kind = _witness_type(version, program)
    assert kind is not None  # decode_segwit_address already refused invalid version 0 lengths
    return ParsedAddress(address=address.lower(), key=witness_script(version, program), type=kind)


def _parse_base58(address: str, network: BitcoinNetwork) -> ParsedAddress:
    if len(address) > _MAX_BASE58_LENGTH:
        raise AddressError(address, f"too long for a base58 address ({len(address)} characters)")
    payload = b58check_decode(address)
    if len(payload) != 1 + _HASH_LENGTH:
        raise AddressError(address, f"payload is {len(payload)} bytes, expected {1 + _HASH_LENGTH}")
    version, body = payload[0], payload[1:]
    if version == _P2PKH_VERSION[network]:
        return ParsedAddress(address=address, key=p2pkh_script(body), type="p2pkh")
    if version == _P2SH_VERSION[network]:
        return ParsedAddress(address=address, key=p2sh_script(body), type="p2sh")
    owner = _VERSION_OWNERS.get(version)
    suffix = f" (it is {owner})" if owner else ""
    raise AddressError(address, f"version byte 0x{version:02x} is not valid on {network.value}{suffix}")


def parse_bitcoin_address(address: str, network: BitcoinNetwork | str) -> ParsedAddress:
    """Decode a Bitcoin address of `network` into its output script; raises AddressError."""
    net = _as_network(network)
    reject_surrounding_whitespace(address)
    if not address:
        raise AddressError(address, "empty address")
    if looks_like_pubkey(address):
        return parse_bitcoin_pubkey(address, net)
    # No base58 P2PKH or P2SH address of any network starts with b or t, so the prefix decides.
    if address.lower().startswith(_SEGWIT_PREFIXES):
        return _parse_segwit(address, net)
    try:
        return _parse_base58(address, net)
    except AddressError as base58_error:
        # A well-formed bech32 string with a foreign prefix (an altcoin, a mistyped hrp) deserves
        # that reason rather than a complaint about base58 characters. Base58 goes first so that a
        # valid legacy address can never be refused for happening to look like bech32.
        try:
            hrp, _, _ = bech32_decode(address)
        except AddressError:
            raise base58_error from None
        raise AddressError(address, _foreign_hrp_reason(hrp, net)) from None
