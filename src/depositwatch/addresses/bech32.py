"""Bech32 (BIP173) and bech32m (BIP350) strings, and the segwit addresses built on them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from depositwatch.addresses.common import AddressError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {char: value for value, char in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_LENGTH = 90
_CHECKSUM_LENGTH = 6


class Encoding(Enum):
    """The two checksum variants; the value is the constant the checksum polymod must equal."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


def _polymod(values: Iterable[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = ((checksum & 0x1FFFFFF) << 5) ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]


def bech32_encode(hrp: str, data: Sequence[int], encoding: Encoding) -> str:
    """Encode a human-readable part and 5-bit values with the checksum of `encoding`."""
    if not hrp or any(not 33 <= ord(char) <= 126 for char in hrp) or hrp != hrp.lower():
        raise ValueError(f"invalid human-readable part {hrp!r}")
    if any(not 0 <= value < 32 for value in data):
        raise ValueError("data values must be 5-bit")
    polymod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ encoding.value
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_LENGTH)]
    text = hrp + "1" + "".join(CHARSET[value] for value in [*data, *checksum])
    if len(text) > MAX_LENGTH:
        raise ValueError(f"encoded string would be {len(text)} characters, over {MAX_LENGTH}")
    return text


def bech32_decode(text: str) -> tuple[str, list[int], Encoding]:
    """Split a bech32 or bech32m string into its lowercased hrp, data values and encoding.

    Raises AddressError naming the first rule the string breaks.
    """
    if len(text) > MAX_LENGTH:
        raise AddressError(text, f"longer than {MAX_LENGTH} characters ({len(text)})")
    for position, char in enumerate(text):
        if not 33 <= ord(char) <= 126:
            raise AddressError(text, f"character {char!r} at position {position} is outside printable ASCII")
    if text.lower() != text and text.upper() != text:
        raise AddressError(text, "mixed case")
    lowered = text.lower()
    separator = lowered.rfind("1")
    if separator == -1:
        raise AddressError(text, "no separator '1'")
    if separator == 0:
        raise AddressError(text, "empty human-readable part")
    if len(lowered) - separator - 1 < _CHECKSUM_LENGTH:
        raise AddressError(text, "checksum too short")
    data: list[int] = []
    checksum_start = len(lowered) - _CHECKSUM_LENGTH
    for position in range(separator + 1, len(lowered)):
        value = _CHARSET_INDEX.get(lowered[position])
        if value is None:
            where = "checksum" if position >= checksum_start else "data"
            raise AddressError(text, f"invalid {where} character {text[position]!r} at position {position}")
        data.append(value)
    hrp = lowered[:separator]
    constant = _polymod([*_hrp_expand(hrp), *data])
    for encoding in Encoding:
        if constant == encoding.value:
            return hrp, data[:-_CHECKSUM_LENGTH], encoding
    raise AddressError(text, "bad checksum")


def convert_bits(values: Iterable[int], from_bits: int, to_bits: int, *, pad: bool) -> list[int]:
    """Regroup a stream of `from_bits`-bit values into `to_bits`-bit values.

    Without `pad`, leftover bits must be fewer than `from_bits` and all zero, else ValueError:
    that strictness is what makes each program have exactly one address.
    """
    accumulator = 0
    bits = 0
    result: list[int] = []
    max_value = (1 << to_bits) - 1
    # Only the bits not yet emitted matter; masking keeps the accumulator small.
    max_accumulator = (1 << (from_bits + to_bits - 1)) - 1
    for value in values:
        if value < 0 or value >> from_bits:
            raise ValueError(f"value {value} does not fit in {from_bits} bits")
        accumulator = ((accumulator << from_bits) | value) & max_accumulator
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            result.append((accumulator >> bits) & max_value)
    if pad:
        if bits:
            result.append((accumulator << (to_bits - bits)) & max_value)
    elif bits >= from_bits:
        raise ValueError(f"padding of {bits} bits, more than 4")
    elif (accumulator << (to_bits - bits)) & max_value:
        raise ValueError("non-zero padding bits")
    return result


def _check_program(version: int, length: int) -> str | None:
    """The reason a witness version and program length cannot form an address, or None."""
    if not 2 <= length <= 40:
        return f"witness program length {length} is outside 2..40 bytes"
    if version > 16:
        return f"witness version {version} is above 16"
    if version == 0 and length not in (20, 32):
        return f"version 0 witness program must be 20 or 32 bytes, not {length}"
    return None


def decode_segwit_address(address: str) -> tuple[str, int, bytes]:
    """Decode a segwit address into (hrp, witness version, program) without judging the network.

    Checks follow the BIP350 reference decoder's order, so each BIP vector fails for its stated reason.
    """
    hrp, data, encoding = bech32_decode(address)
    if not data:
        raise AddressError(address, "empty data section")
    version = data[0]
    try:
        program = bytes(convert_bits(data[1:], 5, 8, pad=False))
    except ValueError as exc:
        raise AddressError(address, str(exc)) from None
    reason = _check_program(version, len(program))
    if reason is not None:
        raise AddressError(address, reason)
    expected = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    if encoding is not expected:
        raise AddressError(
            address,
            f"witness version {version} must use {expected.name.lower()}, not {encoding.name.lower()}",
        )
    return hrp, version, program


def encode_bech32_address(hrp: str, witver: int, program: bytes) -> str:
    """Encode a segwit address: bech32 for witness version 0, bech32m for versions 1 to 16."""
    if not 0 <= witver <= 16:
        raise ValueError(f"witness version {witver} is outside 0..16")
    reason = _check_program(witver, len(program))
    if reason is not None:
        raise ValueError(reason)
    encoding = Encoding.BECH32 if witver == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [witver, *convert_bits(program, 8, 5, pad=True)], encoding)
