"""The `Store` protocol and the records that cross it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from depositwatch.models import (
    AddressEntry,
    AddressStatus,
    Block,
    BlockRef,
    Match,
    MatchKind,
    Severity,
    WatchedOutput,
)

if TYPE_CHECKING:
    from depositwatch.store.audit import Audit
    from depositwatch.store.leases import Leases
    from depositwatch.store.outbox import Outbox
    from depositwatch.store.reporting import Reports
    from depositwatch.store.tokens import TokenCache
    from depositwatch.store.trees import KeyTrees


class StoreError(Exception):
    """The store refused an operation; the message says why."""


class SchemaError(StoreError):
    """The database schema is missing, newer than this program, or not ours."""


class ImportRejected(StoreError):
    """An address import that would break the book; nothing was stored. `problems` are (line, reason)."""

    def __init__(self, problems: Sequence[tuple[int, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"line {line}: {reason}" for line, reason in self.problems))


class IdentityMismatch(StoreError):
    """The node follows another chain than the one this store recorded."""


class LeaseLost(StoreError):
    """Another instance holds the chain; this one must stand by."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A lease as its holder took it: writes made under it check that the lease row still shows this
    holder and epoch, in their own transaction, or write nothing (LeaseLost)."""

    name: str  # `chain:<name>` or `dispatcher`
    holder: str
    epoch: int
    ttl: float = field(default=10.0, compare=False)  # bounds how long a fenced transaction may sit idle


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a follower stands."""

    name: str
    chain: str
    height: int
    hash: str
    range_start: int | None = None
    range_stop: int | None = None

    @property
    def ref(self) -> BlockRef:
        """The cursor's block."""
        return BlockRef(self.height, self.hash)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did (or would do, for a dry run)."""

    inserted: int
    updated: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class Coverage:
    """What the store recorded of one chain since a revocation time: the live follower's first block
    (None: never followed, or unknown for a store older than schema 3) and its current one."""

    chain: str
    first_height: int | None
    first_time: int | None
    cursor_height: int | None


@dataclass(frozen=True, slots=True)
class RevokeResult:
    """What a revocation did; `retro` counts recorded deposits turned into `revoked_incoming` alerts."""

    revoked: int
    already_revoked: int
    retro: int = 0
    coverage: tuple[Coverage, ...] = ()


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a follower's matches go: live following, or one replay run (alerts only if asked)."""

    name: str
    mode: str  # "live" or "replay"
    send_alerts: bool
    fence: Fence | None = None  # the lease the live daemon writes under; None: unfenced (replay, CLI)

    @staticmethod
    def live() -> Scope:
        """The daemon's scope: every alert is sent."""
        return Scope("live", "live", True)

    @staticmethod
    def replay(run_id: str, send_alerts: bool) -> Scope:
        """A replay run's scope."""
        return Scope(f"replay:{run_id}", "replay", send_alerts)

    def fenced(self, fence: Fence) -> Scope:
        """This scope, its writes made under `fence`."""
        return Scope(self.name, self.mode, self.send_alerts, fence)


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    """What the store needs to know about a chain to commit its blocks."""

    chain: str
    confirmations: int
    chain_id: int | None = None
    severities: Mapping[MatchKind, Severity] = field(
        default_factory=lambda: {
            MatchKind.REVOKED_INCOMING: Severity.CRITICAL,
            MatchKind.REVOKED_OUTGOING: Severity.CRITICAL,
            MatchKind.DEPOSIT: Severity.INFO,
        }
    )
    keep_blocks: int = 200  # recent block hashes kept for reorg walk-back
    # Poisoning (zero or dust transfers to or from revoked addresses): thresholds in base units by the
    # symbol of a listed asset, and whether such matches alert at `info` ("info") or not at all ("off").
    dust: Mapping[str, int] = field(default_factory=dict)
    poisoning_alerts: str = "info"

    def is_poisoning(self, match: Match) -> bool:
        """A zero transfer, or a listed asset's below its dust threshold, to or from a revoked address."""
        if match.kind is MatchKind.DEPOSIT:
            return False
        asset = match.transfer.asset
        return self.is_dust(asset.symbol, asset.listed, match.transfer.amount)

    def is_dust(self, symbol: str, listed: bool, amount: int) -> bool:
        """Zero, or below a listed asset's dust threshold (an unlisted token's symbol is its own claim)."""
        if amount == 0:
            return True
        threshold = self.dust.get(symbol) if listed else None
        return threshold is not None and amount < threshold


@dataclass(frozen=True, slots=True)
class BlockEffects:
    """Everything one block changes, committed together with the cursor."""

    block: Block
    matches: Sequence[Match] = ()
    new_outputs: Sequence[WatchedOutput] = ()
    spent_outputs: Sequence[tuple[str, int, str]] = ()  # (txid, vout, spending txid)


@dataclass(frozen=True, slots=True)
class RegistryRow:
    """What the in-memory registry needs of one address."""

    chain: str
    key: bytes
    status: AddressStatus
    revoked_at: int | None


class Store(Protocol):
    """Durable state: the address book, cursors and matches here; key trees, the alert outbox, leases,
    the audit log, the report's reads and the token metadata cache in its parts, each a narrow type a
    consumer can be given alone.

    Every method that changes state runs in one transaction; a crash leaves either all of it or none.
    """

    dialect: str

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""

    async def check_schema(self) -> None:
        """Raise SchemaError unless the schema is current."""

    async def close(self) -> None:
        """Close connections."""

    # address book
    async def import_addresses(
        self, entries: Sequence[tuple[int, AddressEntry]], *, dry_run: bool = False
    ) -> ImportResult: ...
    async def revoke(
        self,
        chains: Sequence[str],
        keys: Sequence[bytes] | None,
        at: int,
        reason: str,
        policies: Mapping[str, ChainPolicy] | None = None,
    ) -> RevokeResult: ...
    async def list_addresses(
        self,
        *,
        chain: str | None = None,
        status: AddressStatus | None = None,
        owner: str | None = None,
        limit: int | None = None,
    ) -> list[AddressEntry]: ...
    async def address_stats(self) -> list[dict[str, Any]]: ...
    def iter_registry(self, chains: Sequence[str] | None = None) -> AsyncIterator[list[RegistryRow]]: ...
    async def address_book_version(self) -> int: ...
    async def chains_in_book(self) -> list[str]: ...
    # chains and cursors
    async def check_identity(self, chain: str, identity: str) -> None: ...
    async def get_cursor(self, name: str) -> Cursor | None: ...
    async def set_cursor(self, cursor: Cursor) -> None: ...
    async def block_hash(self, cursor: str, height: int) -> str | None: ...
    async def forget_blocks(self, cursor: str, below: int) -> None: ...
    async def commit_blocks(
        self,
        scope: Scope,
        cursor: Cursor,
        policy: ChainPolicy,
        effects: Sequence[BlockEffects],
        tip_height: int,
    ) -> Cursor: ...
    async def rewind(self, scope: Scope, cursor: Cursor, policy: ChainPolicy, to: BlockRef) -> Cursor: ...
    async def record_mempool(self, scope: Scope, policy: ChainPolicy, matches: Sequence[Match]) -> int: ...
    async def drop_mempool(self, scope: Scope, policy: ChainPolicy, match_ids: Sequence[str]) -> int: ...
    async def mempool_match_ids(self, scope: Scope, chain: str) -> list[str]: ...
    async def mempool_matches(self, scope: Scope, chain: str) -> list[tuple[str, str]]: ...
    async def watched_outputs(self, chain: str) -> list[WatchedOutput]: ...
    async def add_watched_outputs(self, chain: str, outputs: Sequence[WatchedOutput]) -> int: ...
    async def matches(
        self,
        scope: Scope,
        *,
        chain: str | None = None,
        kind: MatchKind | None = None,
        heights: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]: ...
    async def delete_scope(self, scope: Scope) -> None: ...

    # the parts, each over the same driver
    trees: KeyTrees
    outbox: Outbox
    leases: Leases
    audit: Audit
    reports: Reports
    tokens: TokenCache


def address_entry(row: Any) -> AddressEntry:
    """An `addresses` row as the book's entry."""
    return AddressEntry(
        chain=row["chain"],
        address=row["address"],
        key=bytes(row["key"]),
        status=AddressStatus(row["status"]),
        label=row["label"],
        owner=row["owner"],
        revoked_at=row["revoked_at"],
        reason=row["reason"],
        created_at=row["created_at"],
        type=row["type"],
    )
