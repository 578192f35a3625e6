"""`AddressRegistry`: the address book in memory as bytes keys, for lookups with no I/O."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from depositwatch.keytable import ACTIVE, Active, ActiveKeys, KeyTable, RevokedKeys, new_table
from depositwatch.models import AddressStatus

if TYPE_CHECKING:
    from depositwatch.store.base import RegistryRow


class TreeKeys(Protocol):
    """What the registry reads of the key trees (the store's `KeyTrees` part): their cached keys."""

    async def sources(self, chains: Sequence[str] | None = None) -> dict[int, tuple[str, int | None]]: ...
    def iter_keys(self, tree_ids: Collection[int]) -> AsyncIterator[list[Any]]: ...


class BookStore(Protocol):
    """The part of the Store the registry reads (SqlStore has it): the book's version, its plain keys and
    the cached keys of its key trees, as bare rows."""

    async def address_book_version(self) -> int: ...
    async def registry_key_counts(self, chains: Sequence[str] | None = None) -> list[tuple[str, int, int]]: ...
    def iter_registry_keys(self, chains: Sequence[str] | None = None) -> AsyncIterator[list[Any]]: ...
    @property
    def trees(self) -> TreeKeys: ...


class ChainBook:
    """One chain's watched keys in a `KeyTable`: each key active, or revoked at a time.

    `get(key)` answers with one probe: None (not watched), `ACTIVE`, or the revocation time. `active`
    and `revoked` are live views of the same table, as the set of active keys and the dict of revoked
    keys to their times. The compiled table holds 10 million keys in about 400 MB, where a set and a
    dict took a gigabyte (docs/performance.md, "Address registry").
    """

    __slots__ = ("active", "get", "revoked", "table")

    def __init__(
        self, active: Iterable[bytes] = (), revoked: Mapping[bytes, int] | None = None, *, table: KeyTable | None = None
    ) -> None:
        self.table: KeyTable = new_table() if table is None else table
        self.get: Callable[[bytes], int | Active | None] = self.table.get
        self.active: ActiveKeys = self.table.active()
        self.revoked: RevokedKeys = self.table.revoked()
        for key in active:
            self.table.set(key, None)
        for key, revoked_at in (revoked or {}).items():
            self.table.set(key, revoked_at)

    def __len__(self) -> int:
        return len(self.table)

    def add(self, key: bytes, status: AddressStatus, revoked_at: int | None) -> None:
        """Add or replace one key."""
        self.table.set(key, (revoked_at or 0) if status is AddressStatus.REVOKED else None)

    def discard(self, key: bytes) -> bool:
        """Remove one key; whether it was there."""
        return self.table.discard(key)


_EMPTY = ChainBook()
_REVOKED = AddressStatus.REVOKED
_ACTIVE_HIT = (AddressStatus.ACTIVE, None)  # one shared answer: no tuple built per lookup


async def _fill(books: dict[str, ChainBook], chunks: AsyncIterator[list[Any]]) -> None:
    """Add bare `(chain, key, revoked_at)` rows, revoked_at None for an active key, to the books."""
    sinks: dict[str, Callable[[bytes, int | None], None]] = {}  # chain -> its table's `set`
    async for rows in chunks:
        for chain, key, revoked_at in rows:
            sink = sinks.get(chain)
            if sink is None:
                sink = sinks[chain] = books.setdefault(chain, ChainBook()).table.set
            sink(key, revoked_at)
        del rows


async def _fill_trees(
    books: dict[str, ChainBook], trees: dict[int, tuple[str, int | None]], chunks: AsyncIterator[list[Any]]
) -> None:
    """Add bare `(tree_id, key)` rows of key trees to the books: each tree's chain and status are known
    once, so a key costs what a plain address costs, in time and in memory."""
    sinks: dict[int, tuple[Callable[[bytes, int | None], None], int | None]] = {
        tree_id: (books.setdefault(chain, ChainBook()).table.set, revoked_at)
        for tree_id, (chain, revoked_at) in trees.items()
    }
    async for rows in chunks:
        for tree_id, key in rows:
            sink, revoked_at = sinks[tree_id]
            sink(key, revoked_at)
        del rows


class AddressRegistry:
    """Every chain's book. `reload` builds new books and swaps them in whole, so lookups never pause."""

    def __init__(self, books: dict[str, ChainBook] | None = None, version: int = -1) -> None:
        self._books: dict[str, ChainBook] = books or {}
        self.version = version
        # Bumped by every swap: a reader that took data shaped by the old books (a source that
        # fetched only what they watch) compares it before and after to know it must read again.
        self.generation = 0
        self._before_swap: dict[str, Callable[[AddressRegistry], None]] = {}

    def before_swap(self, name: str, listener: Callable[[AddressRegistry], None]) -> None:
        """Call `listener(incoming)` before each reload swaps new books in (one listener per name:
        a later one replaces it). A listener that narrows a source to the incoming keys thus never
        leaves the source narrower than the books in use."""
        self._before_swap[name] = listener

    def book(self, chain: str) -> ChainBook:
        """The chain's book (an empty one if the chain has no addresses)."""
        return self._books.get(chain, _EMPTY)

    def lookup(self, chain: str, key: bytes) -> tuple[AddressStatus, int | None] | None:
        """(status, revoked_at) of a key, or None if it is not watched."""
        book = self._books.get(chain)
        if book is None:
            return None
        state = book.get(key)
        if state is None:
            return None
        if state is ACTIVE:
            return _ACTIVE_HIT
        return _REVOKED, state

    def __len__(self) -> int:
        return sum(len(b) for b in self._books.values())

    def sizes(self) -> dict[tuple[str, str], int]:
        """Watched keys per (chain, status), for metrics."""
        out = {}
        for chain, book in self._books.items():
            out[(chain, "active")] = book.table.n_active
            out[(chain, "revoked")] = book.table.n_revoked
        return out

    @classmethod
    def from_rows(cls, rows: Iterable[RegistryRow], version: int = -1) -> AddressRegistry:
        """Build from rows (tests, ad-hoc replay)."""
        books: dict[str, ChainBook] = {}
        for row in rows:
            books.setdefault(row.chain, ChainBook()).add(row.key, row.status, row.revoked_at)
        return cls(books, version)

    @classmethod
    async def load(cls, store: BookStore, chains: Sequence[str] | None = None) -> AddressRegistry:
        """Load the book from the store, streaming it in chunks.

        Each chunk's rows are dropped once their keys are copied into the books' tables, so no
        per-address object stays.

        The cyclic garbage collector is paused meanwhile: every chunk of driver rows it sees
        promoted triggers a full collection, and a full collection walks every object: with keys as
        objects (Python sets, or the reference table), that made a 10-million-key load quadratic
        (47 s instead of 10.5 s from PostgreSQL).

        Each table is sized first from the store's count of its keys, so it never grows during the
        load: a growth holds the old and the new slots at once (the load's memory peak, 692 MiB
        against 526 MiB after it for 10 million keys before this).
        """
        version = await store.address_book_version()
        books: dict[str, ChainBook] = {}
        for chain, length, count in await store.registry_key_counts(chains):
            books.setdefault(chain, ChainBook()).table.reserve(length, count)
        collecting = gc.isenabled()
        gc.disable()
        try:
            await _fill(books, store.iter_registry_keys(chains))
            trees = await store.trees.sources(chains)  # key trees: their cached keys
            if trees:
                await _fill_trees(books, trees, store.trees.iter_keys(trees))
        finally:
            if collecting:
                gc.enable()
        return cls(books, version)

    async def reload(self, store: BookStore, chains: Sequence[str] | None = None) -> bool:
        """Reload if the book changed; swap the new books in at once. Return whether it changed."""
        if await store.address_book_version() == self.version:
            return False
        fresh = await AddressRegistry.load(store, chains)
        for listener in list(self._before_swap.values()):
            listener(fresh)
        self._books, self.version = fresh._books, fresh.version
        self.generation += 1
        return True
