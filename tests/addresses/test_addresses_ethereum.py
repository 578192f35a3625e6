"""Ethereum address codec: EIP-55 vectors, strictness about format, and round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from depositwatch.addresses import AddressError, ParsedAddress, ethereum_checksum_address, parse_ethereum_address

# The example addresses of EIP-55 (https://eips.ethereum.org/EIPS/eip-55), each already in checksum form:
# the first two groups happen to checksum to all capitals and all lowercase.
EIP55_ALL_CAPS = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
]
EIP55_ALL_LOWER = [
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
]
EIP55_NORMAL = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
EIP55_ALL = EIP55_ALL_CAPS + EIP55_ALL_LOWER + EIP55_NORMAL

# Mainnet token contracts as their issuers publish them.
USDT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"


@pytest.mark.parametrize("address", [*EIP55_ALL, USDT, USDC])
def test_eip55_examples_are_valid_and_already_normal(address: str) -> None:
    """Each example parses to its own text, and the checksum of its bytes reproduces it."""
    parsed = parse_ethereum_address(address)
    assert parsed == ParsedAddress(address=address, key=bytes.fromhex(address[2:]), type="ethereum")
    assert ethereum_checksum_address(parsed.key) == address


@pytest.mark.parametrize("address", [*EIP55_ALL, USDT, USDC])
def test_single_case_forms_need_no_checksum(address: str) -> None:
    """All-lowercase and all-uppercase hex are accepted and normalised to the EIP-55 form."""
    for text in ("0x" + address[2:].lower(), "0x" + address[2:].upper()):
        assert parse_ethereum_address(text).address == address


def _case_flips(address: str) -> list[str]:
    """Every variant of `address` with exactly one hex letter's case flipped."""
    return [
        address[:i] + address[i].swapcase() + address[i + 1 :] for i in range(2, len(address)) if address[i].isalpha()
    ]


@pytest.mark.parametrize("address", EIP55_ALL)
def test_flipping_one_letter_breaks_the_checksum(address: str) -> None:
    """A single letter in the wrong case makes the address mixed-case with a wrong checksum."""
    flips = _case_flips(address)
    assert flips
    for flipped in flips:
        with pytest.raises(AddressError) as caught:
            parse_ethereum_address(flipped)
        assert caught.value.reason == "EIP-55 checksum mismatch"
        assert caught.value.address == flipped


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("52908400098527886E0F7030069857D2E4169EE7", "missing 0x prefix"),
        ("0X52908400098527886E0F7030069857D2E4169EE7", "prefix must be lowercase '0x'"),
        ("", "missing 0x prefix"),
        ("0x", "expected 40 hex digits after 0x, got 0"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe", "expected 40 hex digits after 0x, got 39"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed0", "expected 40 hex digits after 0x, got 41"),
        ("0x" + "00" * 32, "expected 40 hex digits after 0x, got 64"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "non-hex character 'g' at position 41"),
        ("0x5aAeb6053F3E94C9b9A09f33 669435E7Ef1BeAe", "non-hex character ' ' at position 26"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA\uff10d", "non-hex character '\uff10' at position 40"),
        ("0x0x5aAeb6053F3E94C9b9A09f33669435E7Ef1B", "non-hex character 'x' at position 3"),
        (" 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "leading or trailing whitespace"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\n", "leading or trailing whitespace"),
    ],
)
def test_malformed_addresses(address: str, reason: str) -> None:
    """Malformed text is refused with a specific reason; the codec does not strip or guess."""
    with pytest.raises(AddressError) as caught:
        parse_ethereum_address(address)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{address!r}: {reason}"


@pytest.mark.parametrize("length", [0, 19, 21, 32])
def test_checksum_address_needs_20_bytes(length: int) -> None:
    """Only 20-byte keys have an Ethereum address."""
    with pytest.raises(ValueError, match=f"20 bytes, not {length}"):
        ethereum_checksum_address(bytes(length))


def test_real_log_emitters_round_trip() -> None:
    """Lowercase addresses as nodes and ethereum-etl report them map to the published checksum forms."""
    for lower, published in [
        ("0xdac17f958d2ee523a2206206994597c13d831ec7", USDT),
        ("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", USDC),
    ]:
        parsed = parse_ethereum_address(lower)
        assert parsed.address == published
        assert parsed.key.hex() == lower[2:]


# --- properties ---------------------------------------------------------------------------------

_keys = st.binary(min_size=20, max_size=20)


@given(_keys)
def test_checksum_address_round_trips(key: bytes) -> None:
    """Random 20 bytes: the checksum form, and both single-case forms, parse back to the same key."""
    address = ethereum_checksum_address(key)
    assert address.lower() == "0x" + key.hex()
    expected = ParsedAddress(address=address, key=key, type="ethereum")
    assert parse_ethereum_address(address) == expected
    assert parse_ethereum_address("0x" + key.hex()) == expected
    assert parse_ethereum_address("0x" + key.hex().upper()) == expected


@given(_keys, st.data())
def test_one_case_flip_is_refused_unless_it_makes_the_address_single_case(key: bytes, data: st.DataObject) -> None:
    """Flipping one letter's case breaks EIP-55, except where the result has no mixed case left."""
    address = ethereum_checksum_address(key)
    flips = _case_flips(address)
    assume(flips)
    flipped = data.draw(st.sampled_from(flips))
    digits = flipped[2:]
    if digits in (digits.lower(), digits.upper()):
        assert parse_ethereum_address(flipped).key == key
    else:
        with pytest.raises(AddressError, match="EIP-55 checksum mismatch"):
            parse_ethereum_address(flipped)


@given(_keys, st.data())
def test_changed_digit_never_yields_the_original_key(key: bytes, data: st.DataObject) -> None:
    """Substituting any one character of a checksummed address never parses to the original key."""
    address = ethereum_checksum_address(key)
    position = data.draw(st.integers(min_value=0, max_value=len(address) - 1))
    replacement = data.draw(st.sampled_from("0123456789abcdefABCDEFxXg "))
    mutated = address[:position] + replacement + address[position + 1 :]
    assume(mutated.lower() != address.lower())
    try:
        parsed = parse_ethereum_address(mutated)
    except AddressError:
        return
    assert parsed.key != key


@given(st.text(max_size=60))
def test_arbitrary_text_is_parsed_or_refused_cleanly(text: str) -> None:
    """No input makes the parser fail with anything but AddressError."""
    try:
        parsed = parse_ethereum_address(text)
    except AddressError as exc:
        refused = exc
    else:
        assert parse_ethereum_address(parsed.address) == parsed
        return
    assert refused.address == text
