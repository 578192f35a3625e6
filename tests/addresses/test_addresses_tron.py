"""TRON address codec: the published vectors, exact rejection, and round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depositwatch.addresses.base58 import b58check_encode
from depositwatch.addresses.common import AddressError
from depositwatch.addresses.tron import account_from_hex, parse_tron_address, tron_address, tron_hex
from tests.realdata import realdata

VECTORS = json.loads(realdata("tron", "address_vectors.json").read_text())
VALID = [(v["base58"], v["hex"]) for v in VECTORS["valid_pairs"]]
INVALID = [v["input"] for v in VECTORS["invalid"]]


@pytest.mark.parametrize(("base58", "hex_form"), VALID)
def test_vectors_decode_to_their_hex_and_back(base58: str, hex_form: str) -> None:
    """Each published pair: base58 and 41-hex parse to the same 20 bytes, shown as the base58 text."""
    from_base58 = parse_tron_address(base58)
    from_hex = parse_tron_address(hex_form)
    assert from_base58 == from_hex
    assert from_base58.key == bytes.fromhex(hex_form)[1:]
    assert from_base58.address == base58
    assert from_base58.type == "tron"
    assert tron_hex(from_base58.key) == hex_form
    assert parse_tron_address(hex_form.upper()).key == from_base58.key


@pytest.mark.parametrize("text", INVALID)
def test_published_invalid_inputs_are_refused(text: str) -> None:
    """Too short, EVM form, another coin's version byte, a flipped checksum letter: all refused."""
    with pytest.raises(AddressError):
        parse_tron_address(text)


def test_wrong_version_byte_with_a_valid_checksum_is_named() -> None:
    """A well-formed base58check payload of 21 bytes with version 0x42 says which version it found."""
    text = b58check_encode(b"\x42" + bytes(range(20)))
    with pytest.raises(AddressError, match="version byte 0x42"):
        parse_tron_address(text)


def test_hex_with_another_prefix_is_refused() -> None:
    """42 hex digits that do not start with 41 are not a TRON account."""
    with pytest.raises(AddressError, match="version byte 0xa0"):
        account_from_hex("a0" + "00" * 20)


@pytest.mark.parametrize("text", [" TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t\n"])
def test_surrounding_whitespace_is_refused(text: str) -> None:
    """The codec is strict; callers strip."""
    with pytest.raises(AddressError):
        parse_tron_address(text)


@given(st.binary(min_size=20, max_size=20))
def test_round_trip(key: bytes) -> None:
    """Any 20 bytes encode to a 34-character T... address that parses back to them."""
    text = tron_address(key)
    assert text.startswith("T") and len(text) == 34
    assert parse_tron_address(text).key == key
    assert parse_tron_address(tron_hex(key)).key == key


@given(st.binary(min_size=20, max_size=20), st.integers(min_value=0, max_value=33), st.sampled_from("1A2b3C"))
def test_any_single_character_change_is_caught(key: bytes, position: int, replacement: str) -> None:
    """Changing one character either leaves the text as it was or makes it invalid (the checksum)."""
    text = tron_address(key)
    changed = text[:position] + replacement + text[position + 1 :]
    if changed == text:
        return
    with pytest.raises(AddressError):
        parse_tron_address(changed)
