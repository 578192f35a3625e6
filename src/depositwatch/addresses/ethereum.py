"""Ethereum (and any EVM chain's) addresses: 20 bytes, written as 0x-hex with the EIP-55 checksum."""

from __future__ import annotations

from eth_utils.address import to_checksum_address

from depositwatch.addresses.common import AddressError, ParsedAddress, reject_surrounding_whitespace

_ADDRESS_LENGTH = 20
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def ethereum_checksum_address(key: bytes) -> str:
    """The EIP-55 form of a 20-byte address (`eth_utils`; the EVM source caches it per address)."""
    if len(key) != _ADDRESS_LENGTH:
        raise ValueError(f"an Ethereum address is {_ADDRESS_LENGTH} bytes, not {len(key)}")
    address: str = to_checksum_address(key)
    return address


def parse_ethereum_address(address: str) -> ParsedAddress:
    """Decode a 0x-prefixed Ethereum address; a mixed-case one must carry a correct EIP-55 checksum.

    All-lowercase and all-uppercase hex carry no checksum and are accepted as they are.
    """
    reject_surrounding_whitespace(address)
    if not address.startswith("0x"):
        reason = "prefix must be lowercase '0x'" if address.startswith("0X") else "missing 0x prefix"
        raise AddressError(address, reason)
    digits = address[2:]
    for position, char in enumerate(digits, start=2):
        if char not in _HEX_DIGITS:
            raise AddressError(address, f"non-hex character {char!r} at position {position}")
    if len(digits) != 2 * _ADDRESS_LENGTH:
        raise AddressError(address, f"expected {2 * _ADDRESS_LENGTH} hex digits after 0x, got {len(digits)}")
    key = bytes.fromhex(digits)
    checksummed = ethereum_checksum_address(key)
    if digits not in (digits.lower(), digits.upper()) and address != checksummed:
        raise AddressError(address, "EIP-55 checksum mismatch")
    return ParsedAddress(address=checksummed, key=key, type="ethereum")
