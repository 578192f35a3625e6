"""Plain records that flow through the pipeline: blocks, transfers, matches, alerts, address entries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum


class ChainKind(StrEnum):
    """The families of chains depositwatch can follow."""

    BITCOIN = "bitcoin"
    EVM = "evm"


class AddressStatus(StrEnum):
    """An address is either handed to users (`active`) or retired after a breach (`revoked`)."""

    ACTIVE = "active"
    REVOKED = "revoked"


class MatchKind(StrEnum):
    """What a transfer that touches a watched address means."""

    DEPOSIT = "deposit"
    REVOKED_INCOMING = "revoked_incoming"
    REVOKED_OUTGOING = "revoked_outgoing"


class AlertEvent(StrEnum):
    """One step in the life of an alert; each step is delivered once per sink."""

    DETECTED = "detected"  # first sight: mempool or first block
    MINED = "mined"  # a mempool sighting was included in a block
    CONFIRMED = "confirmed"  # the configured confirmation depth was reached
    RETRACTED = "retracted"  # a reorg or a dropped mempool transaction removed it


class Severity(StrEnum):
    """Alert severities, ordered by `SEVERITY_ORDER`."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Asset:
    """A native coin (no contract) or a token; amounts of it are integers in base units."""

    symbol: str
    decimals: int
    contract: str | None = None  # EIP-55 checksummed token contract, None for the native asset
    # False for a token matched only because it touched a revoked address (not in the chain's `tokens`):
    # its symbol and decimals come from the contract itself, or a placeholder (decimals 0) when it
    # answers nothing usable.
    listed: bool = True

    def to_decimal(self, amount: int) -> str:
        """Render base units as a plain decimal string, exactly (no float)."""
        # Integer arithmetic only: Decimal operations round to the context's 28 significant digits,
        # and a uint256 token amount has up to 78.
        if self.decimals == 0:
            return str(amount)
        sign = "-" if amount < 0 else ""
        whole, fraction = divmod(abs(amount), 10**self.decimals)
        digits = str(fraction).rjust(self.decimals, "0").rstrip("0")
        return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


@dataclass(frozen=True, slots=True)
class Transfer:
    """Value moving from one key to another inside one transaction.

    Keys are the registry's normalised bytes: the output script for Bitcoin, the 20 address bytes for
    EVM chains. Bitcoin outputs have no sender key; a Bitcoin spend of a watched outpoint carries the
    spent script as `from_key` and no `to_key`.
    """

    asset: Asset
    amount: int
    txid: str
    index: int | None  # output index / log index / spending input index; None for a native EVM transfer
    to_key: bytes | None
    from_key: bytes | None = None
    from_address: str | None = None
    to_address: str | None = None


@dataclass(frozen=True, slots=True)
class Spend:
    """A Bitcoin input: transaction `txid`'s input `index` spends `prev_txid:prev_vout`."""

    txid: str
    index: int
    prev_txid: str
    prev_vout: int


@dataclass(frozen=True, slots=True)
class BlockRef:
    """Where a chain is: a height and the hash of the block at it."""

    height: int
    hash: str


@dataclass(frozen=True, slots=True)
class Block:
    """One block reduced to what matching needs."""

    height: int
    hash: str
    parent_hash: str
    time: int  # unix seconds
    transfers: tuple[Transfer, ...] = ()
    spends: tuple[Spend, ...] = ()
    tx_count: int = 0

    @property
    def ref(self) -> BlockRef:
        """The block's position."""
        return BlockRef(self.height, self.hash)


@dataclass(frozen=True, slots=True)
class WatchedOutput:
    """A Bitcoin output that paid a revoked script: spending it is a sweep."""

    txid: str
    vout: int
    script: bytes
    amount: int
    height: int | None


def match_id(chain: str, kind: MatchKind, txid: str, index: int | None) -> str:
    """The stable identity of a match, and of its alert: the same transfer always gets the same id.

    It does not depend on the block, so a transaction that is re-mined after a reorg, or that was first
    seen in the mempool, keeps its id.
    """
    text = f"{chain}|{kind}|{txid.lower()}|{'' if index is None else index}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def pending_token_id(chain: str, kind: MatchKind, txid: str, contract: str) -> str:
    """The id of a token transfer first seen in a pending transaction (`evm_pending`), before its log
    index is known: by the transaction and the token contract. The block's match of the same transfer
    takes this id when the store holds it (`store.match_rows`), so the alert stays one."""
    text = f"{chain}|{kind}|{txid.lower()}|pending-token|{contract.lower()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Match:
    """A transfer that touched a watched address, classified."""

    chain: str
    kind: MatchKind
    key: bytes  # the watched key that matched (the recipient, or the sender for a sweep)
    transfer: Transfer
    block: BlockRef | None  # None while only in the mempool
    block_time: int | None
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", match_id(self.chain, self.kind, self.transfer.txid, self.transfer.index))

    @property
    def is_alert(self) -> bool:
        """Revoked-address matches are alerts; deposits are records."""
        return self.kind is not MatchKind.DEPOSIT


@dataclass(frozen=True, slots=True)
class AddressEntry:
    """One row of the address book."""

    chain: str
    address: str
    key: bytes
    status: AddressStatus
    label: str = ""
    owner: str = ""
    revoked_at: int | None = None  # unix seconds
    reason: str = ""
    created_at: int | None = None
    type: str = ""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token contract says about itself (`symbol()`, `decimals()`), as cached per chain.

    `contract` is the chain's own lower-case text form (EVM: "0x" + 40 hex digits). `known` is False for
    a contract that reverted or answered something unusable: then `symbol` is a placeholder and
    `decimals` 0, so its amounts stay in base units.
    """

    contract: str
    symbol: str
    decimals: int
    known: bool


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One key tree of the address book: every index `first..last` (inclusive) of one descriptor.

    `descriptor` is the canonical form (checksum included), the tree's identity on its chain; `gap`
    asks the book to keep `gap` indexes beyond the highest one a transfer has used. `network` is the
    Bitcoin network the chain runs on (None for account chains), to write derived addresses.
    """

    chain: str
    descriptor: str
    script: str
    first: int
    last: int
    status: AddressStatus
    gap: int = 0
    network: str | None = None
    label: str = ""
    owner: str = ""
    revoked_at: int | None = None  # unix seconds
    reason: str = ""
    created_at: int | None = None
    id: int | None = None  # the store's id, once stored
