"""Types shared by the address codecs: the parse error and the parsed result."""

from __future__ import annotations

from dataclasses import dataclass


class AddressError(ValueError):
    """An address that cannot be parsed; .address is the input, .reason a short human reason."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"{address!r}: {reason}")
        self.address = address
        self.reason = reason

    def __reduce__(self) -> tuple[type[AddressError], tuple[str, str]]:
        # ValueError pickles its args (the formatted message), which would not fit __init__;
        # errors cross process boundaries in the importer, so pickle the real fields.
        return (type(self), (self.address, self.reason))


@dataclass(frozen=True, slots=True)
class ParsedAddress:
    """An address decoded into the bytes the matcher keys on.

    `address` is the normalised text (bech32 lowercased, base58 as given, Ethereum in EIP-55 form),
    `key` the output script for Bitcoin or the 20 address bytes for Ethereum, and `type` one of
    "p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr", "witness_unknown" or "ethereum".
    """

    address: str
    key: bytes
    type: str
    # Other output scripts that pay the same key, registered with it (`address` stays the text
    # shown): a public key's bare P2PK script beside its P2PKH one. As (key, type) pairs.
    also: tuple[tuple[bytes, str], ...] = ()


def reject_surrounding_whitespace(address: str) -> None:
    """Refuse text with leading or trailing whitespace: the codecs are strict, callers strip."""
    if address != address.strip():
        raise AddressError(address, "leading or trailing whitespace")
