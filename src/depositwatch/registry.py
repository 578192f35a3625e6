"""`AddressRegistry`: the address book in memory as bytes keys, for lookups with no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from depositwatch.models import AddressStatus

if TYPE_CHECKING:
    from depositwatch.store import SqlStore
    from depositwatch.store.base import RegistryRow


@dataclass(slots=True)
class ChainBook:
    """One chain's watched keys: a set of active keys and the revoked keys with their revocation time.

    Two plain containers rather than one dict of records keep 10 million keys near a gigabyte.
    """

    active: set[bytes] = field(default_factory=set)
    revoked: dict[bytes, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.active) + len(self.revoked)

    def add(self, key: bytes, status: AddressStatus, revoked_at: int | None) -> None:
        """Add or replace one key."""
        if status is AddressStatus.REVOKED:
            self.active.discard(key)
            self.revoked[key] = revoked_at or 0
        else:
            self.revoked.pop(key, None)
            self.active.add(key)


_EMPTY = ChainBook()


class AddressRegistry:
    """Every chain's book. `reload` builds new books and swaps them in whole, so lookups never pause."""

    def __init__(self, books: dict[str, ChainBook] | None = None, version: int = -1) -> None:
        self._books: dict[str, ChainBook] = books or {}
        self.version = version

    def book(self, chain: str) -> ChainBook:
        """The chain's book (an empty one if the chain has no addresses)."""
        return self._books.get(chain, _EMPTY)

    def lookup(self, chain: str, key: bytes) -> tuple[AddressStatus, int | None] | None:
        """(status, revoked_at) of a key, or None if it is not watched."""
        book = self._books.get(chain)
        if book is None:
            return None
        revoked_at = book.revoked.get(key)
        if revoked_at is not None:
            return AddressStatus.REVOKED, revoked_at
        if key in book.active:
            return AddressStatus.ACTIVE, None
        return None

    def __len__(self) -> int:
        return sum(len(b) for b in self._books.values())

    def sizes(self) -> dict[tuple[str, str], int]:
        """Watched keys per (chain, status), for metrics."""
        out = {}
        for chain, book in self._books.items():
            out[(chain, "active")] = len(book.active)
            out[(chain, "revoked")] = len(book.revoked)
        return out

    @classmethod
    def from_rows(cls, rows: Iterable[RegistryRow], version: int = -1) -> AddressRegistry:
        """Build from rows (tests, ad-hoc replay)."""
        books: dict[str, ChainBook] = {}
        for row in rows:
            books.setdefault(row.chain, ChainBook()).add(row.key, row.status, row.revoked_at)
        return cls(books, version)

    @classmethod
    async def load(cls, store: SqlStore, chains: Sequence[str] | None = None) -> AddressRegistry:
        """Load the book from the store, streaming it in chunks."""
        version = await store.address_book_version()
        books: dict[str, ChainBook] = {}
        revoked = AddressStatus.REVOKED
        async for rows in store.iter_registry(chains):
            for row in rows:
                book = books.get(row.chain)
                if book is None:
                    book = books[row.chain] = ChainBook()
                if row.status is revoked:
                    book.revoked[row.key] = row.revoked_at or 0
                else:
                    book.active.add(row.key)
        return cls(books, version)

    async def reload(self, store: SqlStore, chains: Sequence[str] | None = None) -> bool:
        """Reload if the book changed; swap the new books in at once. Return whether it changed."""
        if await store.address_book_version() == self.version:
            return False
        fresh = await AddressRegistry.load(store, chains)
        self._books, self.version = fresh._books, fresh.version
        return True
