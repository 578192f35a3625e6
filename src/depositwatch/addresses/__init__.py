"""Address codecs: decode Bitcoin and Ethereum addresses into the bytes the matcher keys on.

Bitcoin addresses become output scripts (scriptPubKey), because blocks carry scripts and a script
has one meaning whatever text was used to write it; Ethereum addresses become their 20 bytes.
"""

from __future__ import annotations

from depositwatch.addresses.bech32 import encode_bech32_address
from depositwatch.addresses.bitcoin import (
    BitcoinNetwork,
    bitcoin_script_to_address,
    parse_bitcoin_address,
    script_type,
)
from depositwatch.addresses.common import AddressError, ParsedAddress
from depositwatch.addresses.ethereum import ethereum_checksum_address, parse_ethereum_address

__all__ = [
    "AddressError",
    "BitcoinNetwork",
    "ParsedAddress",
    "bitcoin_script_to_address",
    "encode_bech32_address",
    "ethereum_checksum_address",
    "normalise_key",
    "parse_bitcoin_address",
    "parse_ethereum_address",
    "script_type",
]


def normalise_key(chain_kind: str, address: str, network: str | None) -> ParsedAddress:
    """Parse `address` for a chain kind ("bitcoin", "evm" or "tron"); Bitcoin's network defaults to mainnet.

    EVM and TRON addresses look the same on every network, so `network` is ignored for them.
    """
    if chain_kind == "bitcoin":
        return parse_bitcoin_address(address, network if network is not None else BitcoinNetwork.MAINNET)
    if chain_kind == "evm":
        return parse_ethereum_address(address)
    if chain_kind == "tron":
        from depositwatch.addresses.tron import parse_tron_address

        return parse_tron_address(address)
    raise ValueError(f"unknown chain kind {chain_kind!r}; expected 'bitcoin', 'evm' or 'tron'")
