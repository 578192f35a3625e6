"""Base58 and Base58Check, the encoding of legacy Bitcoin addresses."""

from __future__ import annotations

import hashlib

from depositwatch.addresses.common import AddressError

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ALPHABET_INDEX = {char: value for value, char in enumerate(ALPHABET)}
_CHECKSUM_LENGTH = 4


def checksum(payload: bytes) -> bytes:
    """The first four bytes of the double SHA-256 of `payload`."""
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:_CHECKSUM_LENGTH]


def b58encode(data: bytes) -> str:
    """Encode bytes in base58; each leading zero byte becomes a leading '1'."""
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(ALPHABET[remainder])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Decode base58 text; raises AddressError on a character outside the alphabet."""
    number = 0
    for position, char in enumerate(text):
        value = _ALPHABET_INDEX.get(char)
        if value is None:
            raise AddressError(text, f"invalid base58 character {char!r} at position {position}")
        number = number * 58 + value
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * zeros + body


def b58check_encode(payload: bytes) -> str:
    """Append the checksum to `payload` and encode the result in base58."""
    return b58encode(payload + checksum(payload))


def b58check_decode(text: str) -> bytes:
    """Decode Base58Check text and return the payload with its checksum verified and removed."""
    raw = b58decode(text)
    if len(raw) <= _CHECKSUM_LENGTH:
        raise AddressError(text, f"decodes to {len(raw)} bytes, too short for a checksum")
    payload, check = raw[:-_CHECKSUM_LENGTH], raw[-_CHECKSUM_LENGTH:]
    if checksum(payload) != check:
        raise AddressError(text, "bad checksum")
    return payload
