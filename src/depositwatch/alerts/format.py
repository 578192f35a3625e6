"""Human wording shared by the Slack and PagerDuty formats: titles, amounts, explorer links."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from depositwatch.config import ChainConfig
from depositwatch.messages import FORMAT_VERSION
from depositwatch.timeutil import iso, now

# EVM mainnets by chain id: the explorer's transaction URL prefix.
EVM_EXPLORERS = {
    1: "https://etherscan.io/tx/",
    10: "https://optimistic.etherscan.io/tx/",
    56: "https://bscscan.com/tx/",
    137: "https://polygonscan.com/tx/",
    8453: "https://basescan.org/tx/",
    42161: "https://arbiscan.io/tx/",
}
BITCOIN_EXPLORER = "https://mempool.space/tx/"
_BTC_MAINNET_BASE58 = re.compile(r"^[13][1-9A-HJ-NP-Za-km-z]{25,34}$")

DESCRIPTIONS = {
    "revoked_incoming": "funds sent to a revoked address",
    "revoked_outgoing": "funds swept from a revoked address",
    "deposit": "deposit to an active address",
    "test": "test alert, no funds moved",
}


def explorers_for(chains: Sequence[ChainConfig]) -> dict[str, str]:
    """Explorer URL prefix (or `{txid}` template) per configured chain name; empty string where none is
    known (no link). A chain's `explorer_tx_url` wins over the defaults."""
    found = {}
    for chain in chains:
        if chain.explorer_tx_url:
            found[chain.name] = chain.explorer_tx_url
        elif chain.kind == "bitcoin":
            found[chain.name] = BITCOIN_EXPLORER if chain.network == "mainnet" else ""
        else:
            found[chain.name] = EVM_EXPLORERS.get(chain.chain_id or 0, "")
    return found


def _looks_bitcoin_mainnet(address: str) -> bool:
    lowered = address.lower()
    return (lowered.startswith("bc1") and not lowered.startswith("bcrt1")) or bool(_BTC_MAINNET_BASE58.match(address))


def explorer_url(body: Mapping[str, Any], explorers: Mapping[str, str] | None = None) -> str | None:
    """A link to the transaction on a public explorer when the chain is a known mainnet, else None.

    The configured chains decide when given; otherwise the chain id (EVM) or the address format
    (Bitcoin mainnet: bc1..., 1..., 3...) does.
    """
    txid = body.get("txid")
    if not txid or body.get("test"):
        return None
    chain = str(body.get("chain", ""))
    if explorers is not None and chain in explorers:
        prefix = explorers[chain]
    elif body.get("chain_id") is not None:
        prefix = EVM_EXPLORERS.get(int(body["chain_id"]), "")
    else:
        address = str((body.get("address") or {}).get("address") or "")
        prefix = BITCOIN_EXPLORER if _looks_bitcoin_mainnet(address) else ""
    if not prefix:
        return None
    return prefix.replace("{txid}", quote(str(txid), safe="")) if "{txid}" in prefix else f"{prefix}{txid}"


def explorer_name(url: str) -> str:
    """`etherscan.io` for `https://etherscan.io/tx/...`."""
    return url.split("/")[2] if url.count("/") >= 2 else url


def amount_text(body: Mapping[str, Any]) -> str:
    """`5 USDT`."""
    asset = body.get("asset") or {}
    return f"{body.get('amount_decimal', '?')} {asset.get('symbol', '')}".strip()


def is_test(body: Mapping[str, Any]) -> bool:
    """A test alert (from `depositwatch alerts test`)."""
    return bool(body.get("test")) or body.get("kind") == "test"


def title(body: Mapping[str, Any], kind: str, event: str) -> str:
    """`[CRITICAL] revoked_incoming detected: 5 USDT, funds sent to a revoked address`."""
    severity = str(body.get("severity", "info")).upper()
    if is_test(body):
        return f"[TEST] {kind} {event}: depositwatch test alert, no funds moved"
    description = DESCRIPTIONS.get(kind, kind.replace("_", " "))
    if event == "retracted":
        description = f"RETRACTED (reorg or dropped transaction): {description}"
    return f"[{severity}] {kind} {event}: {amount_text(body)}, {description}"


def address_text(body: Mapping[str, Any]) -> str:
    """`0xabc... "label" (owner cust-1)`."""
    address = body.get("address") or {}
    text = str(address.get("address") or "?")
    if address.get("label"):
        text += f' "{address["label"]}"'
    if address.get("owner"):
        text += f" (owner {address['owner']})"
    return text


def block_text(body: Mapping[str, Any], event: str) -> str:
    """Where the transaction stands: `block 123, 2 confirmations`, `mempool (unconfirmed)`, ..."""
    block = body.get("block")
    confirmations = int(body.get("confirmations") or 0)
    if event == "retracted":
        return f"was in block {block['height']}, now orphaned" if block else "dropped from the mempool"
    if block:
        plural = "" if confirmations == 1 else "s"
        return f"block {block['height']}, {confirmations} confirmation{plural}"
    return "mempool (unconfirmed)"


def summary_line(body: Mapping[str, Any], kind: str, event: str) -> str:
    """One line for a pager: the title, where, the address and the transaction."""
    chain = body.get("chain", "?")
    return (
        f"{title(body, kind, event)} on {chain}; address {address_text(body)}; "
        f"tx {body.get('txid') or '?'}; {block_text(body, event)}"
    )


def test_alert_body(sink: str) -> dict[str, Any]:
    """The body of `depositwatch alerts test`: every field of a real alert, values that cannot be
    mistaken for one (kind `test`, no chain, no transaction). The store adds `id`, `idempotency_key`
    and `test: true`."""
    return {
        "version": FORMAT_VERSION,
        "event": "detected",
        "kind": "test",
        "match_kind": "test",
        "severity": "info",
        "chain": "test",
        "chain_id": None,
        "asset": {"symbol": "TEST", "contract": None, "decimals": 0},
        "amount": "0",
        "amount_decimal": "0",
        "from": None,
        "to": None,
        "address": {"address": "none", "label": "depositwatch test alert", "owner": "", "revoked_at": None},
        "txid": None,
        "index": None,
        "block": None,
        "mempool": False,
        "confirmations": 0,
        "revoked_at": None,
        "detected_at": iso(now()),
        "mode": "live",
        "message": f"Test alert for sink {sink}, sent by `depositwatch alerts test`; no funds moved.",
    }
