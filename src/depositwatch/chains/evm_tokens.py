"""Unlisted ERC-20 tokens: what a contract says its symbol and decimals are, asked once and cached.

A Transfer log of a contract that is not among the chain's configured `tokens` is kept only when it
touches a revoked address (see `EvmSource.set_revoked`). Its asset is named from the contract itself:
`symbol()` and `decimals()` by `eth_call` at the latest block, once per contract, kept in memory and in
the store (`TokenMetadataCache`). The answers are hostile input:

- `symbol()` must be an ABI `string` of at most `MAX_SYMBOL` printable characters, or a `bytes32` of
  printable ASCII padded with zeros (older tokens such as MKR); anything else is unusable;
- `decimals()` must be one 32-byte word of at most `MAX_DECIMALS`;
- a revert, an empty answer (no code, or a contract that returns nothing) or anything unusable in either
  gives the placeholder: symbol `PLACEHOLDER_SYMBOL`, decimals 0, so amounts stay in base units.

Every such asset has `listed = False`: a contract may call itself "USDT", and only the configured
contract is the real one. A node error other than a revert (rate limit, node trouble) raises
`BadNodeAnswer`, so the block is fetched again later instead of caching a placeholder for good.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from depositwatch.addresses import ethereum_checksum_address
from depositwatch.chains.base import BadNodeAnswer, TokenMetadataCache
from depositwatch.chains.rpc import Call, RpcError
from depositwatch.models import Asset, TokenInfo

if TYPE_CHECKING:
    from depositwatch.chains.evm_rpc import _EvmRpc

SYMBOL_SELECTOR = "0x95d89b41"  # symbol()
DECIMALS_SELECTOR = "0x313ce567"  # decimals()
PLACEHOLDER_SYMBOL = "UNKNOWN"
MAX_SYMBOL = 32
MAX_DECIMALS = 36  # as for configured tokens
_ASK_AT_ONCE = 100  # contracts a JSON-RPC batch (two eth_call each)
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*\Z")
# What a node says when the call itself failed inside the contract (these get the placeholder).
_CONTRACT_FAILED = re.compile(
    r"revert|invalid opcode|invalid jump|out of gas|stack (under|over)flow|execution|opcode|bad instruction",
    re.IGNORECASE,
)


def _bytes(result: Any) -> bytes | None:
    if not isinstance(result, str) or len(result) > 2 + 2 * 4096 or not _HEX.match(result):
        return None
    return bytes.fromhex(result[2:])


def _clean(text: str) -> str | None:
    text = text.strip()
    if not text or len(text) > MAX_SYMBOL or not text.isprintable():
        return None
    return text


def decode_symbol(result: Any) -> str | None:
    """The symbol from a `symbol()` answer (ABI string or bytes32), None when unusable."""
    data = _bytes(result)
    if data is None:
        return None
    if len(data) == 32:  # bytes32, zero-padded on the right
        raw = data.rstrip(b"\0")
        if b"\0" in raw or not raw.isascii():
            return None
        return _clean(raw.decode("ascii"))
    if len(data) < 64 or len(data) % 32:
        return None
    offset = int.from_bytes(data[:32], "big")
    if offset != 32:
        return None
    length = int.from_bytes(data[32:64], "big")
    if length > 4 * MAX_SYMBOL or 64 + length > len(data):
        return None
    try:
        return _clean(data[64 : 64 + length].decode("utf-8"))
    except UnicodeDecodeError:
        return None


def decode_decimals(result: Any) -> int | None:
    """The decimals from a `decimals()` answer (one 32-byte word), None when unusable."""
    data = _bytes(result)
    if data is None or len(data) != 32:
        return None
    value = int.from_bytes(data, "big")
    return value if value <= MAX_DECIMALS else None


def asset_of(info: TokenInfo) -> Asset:
    """The unlisted asset a cached entry stands for."""
    return Asset(info.symbol, info.decimals, ethereum_checksum_address(bytes.fromhex(info.contract[2:])), listed=False)


class MetadataDirectory(ABC):
    """Assets of unlisted token contracts: memory, then the store's cache, then the contract itself.

    Chain-neutral: a subclass asks its chain's contracts (`_ask`) and names their assets (`_asset`),
    each contract keyed by the chain's text form of its address.
    """

    ask_at_once = _ASK_AT_ONCE

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.cache: TokenMetadataCache | None = None
        self._known: dict[str, Asset] = {}
        self.lookups = 0  # contracts asked (for tests and logs)

    async def assets(self, contracts: Collection[str]) -> dict[str, Asset]:
        """Each contract's asset (`listed = False`)."""
        missing = [c for c in set(contracts) if c not in self._known]
        if missing and self.cache is not None:
            for contract, info in (await self.cache.lookup(self.chain, missing)).items():
                self._known[contract] = self._asset(info)
            missing = [c for c in missing if c not in self._known]
        for first in range(0, len(missing), self.ask_at_once):
            infos = await self._ask(sorted(missing)[first : first + self.ask_at_once])
            self.lookups += len(infos)
            if self.cache is not None:
                await self.cache.save(self.chain, infos)
            for info in infos:
                self._known[info.contract] = self._asset(info)
        return {c: self._known[c] for c in contracts}

    @abstractmethod
    async def _ask(self, contracts: list[str]) -> list[TokenInfo]:
        """What each contract says about itself (a placeholder entry where it says nothing usable)."""

    @abstractmethod
    def _asset(self, info: TokenInfo) -> Asset:
        """The unlisted asset a cached entry stands for."""


def token_info(contract: str, symbol_result: Any, decimals_result: Any) -> TokenInfo:
    """The entry of a contract from its `symbol()` and `decimals()` return data (None: it failed)."""
    symbol = decode_symbol(symbol_result) if symbol_result is not None else None
    decimals = decode_decimals(decimals_result) if decimals_result is not None else None
    if symbol is None or decimals is None:
        return TokenInfo(contract, PLACEHOLDER_SYMBOL, 0, known=False)
    return TokenInfo(contract, symbol, decimals, known=True)


class TokenDirectory(MetadataDirectory):
    """Assets of unlisted ERC-20 contracts ("0x" + lower-case hex), asked over `eth_call`."""

    def __init__(self, chain: str, rpc: _EvmRpc) -> None:
        super().__init__(chain)
        self.rpc = rpc

    def _asset(self, info: TokenInfo) -> Asset:
        return asset_of(info)

    async def _ask(self, contracts: list[str]) -> list[TokenInfo]:
        calls = [
            Call("eth_call", ({"to": contract, "data": selector}, "latest"), f"{name} of {contract}")
            for contract in contracts
            for selector, name in ((SYMBOL_SELECTOR, "symbol()"), (DECIMALS_SELECTOR, "decimals()"))
        ]
        replies = await self.rpc.replies(calls)
        infos = []
        for n, contract in enumerate(contracts):
            (symbol_result, symbol_error), (decimals_result, decimals_error) = replies[2 * n : 2 * n + 2]
            for call, error in ((calls[2 * n], symbol_error), (calls[2 * n + 1], decimals_error)):
                if error is not None and not _reverted(error):
                    raise BadNodeAnswer(
                        f"chain {self.chain}: eth_call {call.what}: error {error.code}: {error.message[:300]}"
                    )
            symbol = symbol_result if symbol_error is None else None
            infos.append(token_info(contract, symbol, decimals_result if decimals_error is None else None))
        return infos


def _reverted(error: RpcError) -> bool:
    """Whether the call failed inside the contract (code 3 is geth's and anvil's revert with data)."""
    return error.code == 3 or bool(_CONTRACT_FAILED.search(error.message))
