"""Unlisted TRC-20 tokens: what a contract says its symbol and decimals are, asked once and cached.

The TRON side of `chains/evm_tokens.py`: a Transfer log of a contract outside the chain's `tokens` is
kept only when it touches a revoked address, and its asset is named from the contract itself, `symbol()`
(0x95d89b41) and `decimals()` (0x313ce567) over `/wallet/triggerconstantcontract`, once per contract,
kept in memory and in the store (keyed by the contract's base58 address). The return data is read by
the same `decode_symbol` / `decode_decimals` as on Ethereum, with the same placeholder.

What java-tron answers (`TriggerConstantContractServlet`, `visible=false`, messages as hex of UTF-8):

- a served call: `{"result": {"result": true}, "energy_used": n, "constant_result": [hex], "transaction":
  {...}}`;
- a REVERT keeps that shape, with `result.message` ("REVERT opcode executed") and the transaction's
  `ret` FAILED: the contract failed, placeholder;
- another VM exception (invalid opcode, energy or time run out) is `{"result": {"code": "OTHER_ERROR",
  "message": "class org.tron.core.vm.program.Program$...Exception : ..."}}`: placeholder;
- an address without a contract is `CONTRACT_VALIDATE_ERROR`: placeholder.

Anything else (`{"Error": ...}`, a busy node, an `OTHER_ERROR` that is not the VM's, a malformed answer)
raises `BadNodeAnswer`: the block is read again later, and nothing is cached for good.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm_tokens import MetadataDirectory, token_info
from depositwatch.models import Asset, TokenInfo

if TYPE_CHECKING:
    from depositwatch.chains.tron import TronSource

SYMBOL_SELECTOR = "symbol()"  # 0x95d89b41
DECIMALS_SELECTOR = "decimals()"  # 0x313ce567
CALLER = "41" + "00" * 20  # owner_address of the calls (java-tron requires one; the zero account)
_MAX_RESULT_HEX = 2 * 4096
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*\Z")
# An OTHER_ERROR from the VM itself: the contract failed (a node fault is any other OTHER_ERROR).
_VM_FAILED = re.compile(
    r"org\.tron\.core\.vm\.|REVERT opcode|invalid operation code|not enough energy|out of time|stack (too|over)"
    r"|bad jump|illegal operation",
    re.IGNORECASE,
)


def _message(result: dict[str, Any]) -> str:
    """`result.message`: hex of UTF-8 with visible=false, plain text from some providers."""
    message = result.get("message")
    if not isinstance(message, str):
        return ""
    message = message[:1000]
    if _HEX.match(message):
        try:
            return bytes.fromhex(message).decode("utf-8", "replace")
        except ValueError:
            pass
    return message


def constant_result(answer: Any, what: str) -> bytes | None:
    """The return data of a `triggerconstantcontract` answer; None when the contract failed (a revert, a
    VM exception) or is no contract; `BadNodeAnswer` for anything else."""
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, dict):
        raise BadNodeAnswer(f"{what}: triggerconstantcontract answered {answer!r:.120}")
    code = result.get("code", "SUCCESS")
    if code == "CONTRACT_VALIDATE_ERROR":
        return None  # no contract at this address (or not a valid one)
    if code in ("OTHER_ERROR", "CONTRACT_EXE_ERROR"):
        message = _message(result)
        if _VM_FAILED.search(message):
            return None
        raise BadNodeAnswer(f"{what}: triggerconstantcontract: {code} {message[:200]!r}")
    if code != "SUCCESS" or result.get("result") is not True:
        raise BadNodeAnswer(f"{what}: triggerconstantcontract: result {result!r:.200}")
    transaction = answer.get("transaction")
    rets = transaction.get("ret") if isinstance(transaction, dict) else None
    failed = isinstance(rets, list) and any(isinstance(r, dict) and r.get("ret") == "FAILED" for r in rets)
    if failed or "message" in result:
        return None  # REVERT: the call was served, the contract failed
    results = answer.get("constant_result")
    if (
        not isinstance(results, list)
        or len(results) != 1
        or not isinstance(results[0], str)
        or len(results[0]) > _MAX_RESULT_HEX
        or not _HEX.match(results[0])
    ):
        raise BadNodeAnswer(f"{what}: triggerconstantcontract: constant_result {results!r:.120}")
    return bytes.fromhex(results[0])


class TronTokenDirectory(MetadataDirectory):
    """Assets of unlisted TRC-20 contracts (base58 addresses), asked over `triggerconstantcontract`."""

    ask_at_once = 20  # contracts at a time; the source's `max_in_flight` bounds the requests

    def __init__(self, chain: str, source: TronSource) -> None:
        super().__init__(chain)
        self.source = source

    def _asset(self, info: TokenInfo) -> Asset:
        return Asset(info.symbol, info.decimals, info.contract, listed=False)

    async def _ask(self, contracts: list[str]) -> list[TokenInfo]:
        async def call(contract: str, selector: str) -> str | None:
            body = {
                "owner_address": CALLER,
                "contract_address": "41" + parse_tron_address(contract).key.hex(),
                "function_selector": selector,
                "parameter": "",
                "visible": False,
            }
            answer = await self.source._call("/wallet/triggerconstantcontract", body)
            data = constant_result(answer, f"chain {self.chain}: {selector} of {contract}")
            return None if data is None else "0x" + data.hex()

        async def one(contract: str) -> TokenInfo:
            symbol, decimals = await asyncio.gather(call(contract, SYMBOL_SELECTOR), call(contract, DECIMALS_SELECTOR))
            return token_info(contract, symbol, decimals)

        return list(await asyncio.gather(*(one(c) for c in contracts)))
