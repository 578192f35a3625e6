"""TRON accounts: 20 bytes, written as base58check with version byte 0x41 (`T...`).

The node's HTTP API (`visible=false`) writes the same account as 21-byte hex with the `41` prefix,
event logs and ABI words carry the bare 20 bytes. The book accepts the base58 and the `41`-hex forms,
keys on the 20 bytes and shows base58.
"""

from __future__ import annotations

from depositwatch.addresses.base58 import b58check_decode, b58check_encode
from depositwatch.addresses.common import AddressError, ParsedAddress, reject_surrounding_whitespace

TRON_VERSION = 0x41
_ACCOUNT_LENGTH = 20
_BASE58_LENGTH = 34  # every 21-byte payload with its checksum encodes to 34 characters
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def tron_address(key: bytes) -> str:
    """The base58check text (`T...`) of a 20-byte account."""
    if len(key) != _ACCOUNT_LENGTH:
        raise ValueError(f"a TRON account is {_ACCOUNT_LENGTH} bytes, not {len(key)}")
    return b58check_encode(bytes([TRON_VERSION]) + key)


def tron_hex(key: bytes) -> str:
    """The node's hex form (`41` + 20 bytes) of a 20-byte account."""
    if len(key) != _ACCOUNT_LENGTH:
        raise ValueError(f"a TRON account is {_ACCOUNT_LENGTH} bytes, not {len(key)}")
    return f"{TRON_VERSION:02x}{key.hex()}"


def account_from_hex(text: str) -> bytes:
    """The 20 bytes of a node-API hex account (`41` + 40 hex digits); AddressError otherwise."""
    if len(text) != 2 * (_ACCOUNT_LENGTH + 1) or not _HEX_DIGITS.issuperset(text):
        raise AddressError(text, f"expected {2 * (_ACCOUNT_LENGTH + 1)} hex digits starting with 41")
    raw = bytes.fromhex(text)
    if raw[0] != TRON_VERSION:
        raise AddressError(text, f"version byte 0x{raw[0]:02x}, expected 0x{TRON_VERSION:02x}")
    return raw[1:]


def parse_tron_address(address: str) -> ParsedAddress:
    """Decode a TRON account from base58check (`T...`) or node hex (`41...`), checked exactly.

    A wrong checksum, a version byte other than 0x41 and a payload of any length but 21 bytes are
    refused. The EVM form (`0x` + 40 digits) is refused too: it names no chain, and a book row must
    say which account it means.
    """
    reject_surrounding_whitespace(address)
    if address.startswith(("0x", "0X")):
        raise AddressError(address, "an EVM-style 0x address; write TRON accounts as T... or 41... hex")
    if len(address) == 2 * (_ACCOUNT_LENGTH + 1) and _HEX_DIGITS.issuperset(address):
        key = account_from_hex(address)
        return ParsedAddress(address=tron_address(key), key=key, type="tron")
    if len(address) != _BASE58_LENGTH:
        raise AddressError(address, f"a TRON address has {_BASE58_LENGTH} characters, not {len(address)}")
    payload = b58check_decode(address)
    if len(payload) != _ACCOUNT_LENGTH + 1:
        raise AddressError(address, f"decodes to {len(payload)} bytes, expected {_ACCOUNT_LENGTH + 1}")
    if payload[0] != TRON_VERSION:
        raise AddressError(address, f"version byte 0x{payload[0]:02x}, expected 0x{TRON_VERSION:02x}")
    key = payload[1:]
    return ParsedAddress(address=tron_address(key), key=key, type="tron")
