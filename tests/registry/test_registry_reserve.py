"""Key tables sized before a load: no growth while the book is read, so no moment with a table's old and
new slots both held (the load's memory peak)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from depositwatch.keytable import new_table
from depositwatch.models import AddressEntry, AddressStatus
from depositwatch.registry import AddressRegistry
from depositwatch.store import SqlStore, open_store
from tests.registry.test_registry_table import assert_holds


@pytest.mark.parametrize("compiled", [True, False])
def test_a_reserved_table_takes_its_keys_without_growing(compiled: bool) -> None:
    table = new_table(compiled)
    table.reserve(20, 10_000)
    table.reserve(25, 3)
    if compiled:
        reserved = table.layout()  # type: ignore[attr-defined]
        assert reserved[20] == (0, 13_334) and reserved[25][1] >= 4
    rng = random.Random(3)
    model = {rng.randbytes(20): None if i % 3 else 1_700_000_000 for i in range(10_000)}
    for key, stamp in model.items():
        table.set(key, stamp)
    assert_holds(table, model, [rng.randbytes(20) for _ in range(500)])
    if compiled:
        used, slots = table.layout()[20]  # type: ignore[attr-defined]
        assert (used, slots) == (10_000, 13_334)  # three quarters full at most, and never grown
        table.reserve(20, 10)  # less than it has: nothing changes
        assert table.layout()[20] == (10_000, 13_334)  # type: ignore[attr-defined]
        table.set(rng.randbytes(20), None)  # past three quarters: grows by half, as before
        assert table.layout()[20][1] == 13_334 + 13_334 // 2  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not negative"):
        table.reserve(-1, 5)
    with pytest.raises(ValueError, match="not negative"):
        table.reserve(20, -5)


async def test_the_registry_sizes_each_table_from_the_store_before_loading(store: SqlStore) -> None:
    """The load asks the store for the count of keys by chain and length (plain addresses and key trees)
    and reserves them: the tables hold exactly those slots afterwards, the size no growth sequence gives."""
    rng = random.Random(5)
    entries = []
    for n in range(3_000):
        key = rng.randbytes(20)
        status = AddressStatus.REVOKED if n % 4 == 0 else AddressStatus.ACTIVE
        entries.append(
            (n + 2, AddressEntry("eth", "0x" + key.hex(), key, status, "", "", 1_700_000_000 if n % 4 == 0 else None))
        )
    await store.import_addresses(entries)
    assert await store.registry_key_counts() == [("eth", 20, 3_000)]
    assert await store.registry_key_counts(["tron"]) == []
    registry = await AddressRegistry.load(store)
    book = registry.book("eth")
    assert len(book) == 3_000
    for _, entry in entries[:50]:
        assert (book.get(entry.key) is not None) and (entry.key in book.revoked) == (
            entry.status is AddressStatus.REVOKED
        )
    layout = getattr(book.table, "layout", None)
    if layout is not None:  # the compiled table
        assert layout() == {20: (3_000, 4_000)}


async def test_sqlite_counts_the_keys_from_the_length_index(tmp_path: Path) -> None:
    """On SQLite the count by chain and key length reads `addresses_key_length` in its order (migration 9):
    grouped row by row over the table, it made a ten-million-key load 1.17 times that of the sets and dicts."""
    store = await open_store(f"sqlite:///{tmp_path}/book.db", migrate=True)
    try:
        async with store.db.read() as conn:
            for where in ("", " WHERE chain IN ($1)"):
                plan = await conn.fetch(
                    f"EXPLAIN QUERY PLAN SELECT chain, length(key), COUNT(*) FROM addresses{where} GROUP BY 1, 2",
                    *(["eth"] if where else []),
                )
                details = " ".join(str(row[3]) for row in plan)
                assert (
                    "USING INDEX addresses_key_length" in details
                    or "USING COVERING INDEX addresses_key_length" in details
                ), details
                assert "TEMP B-TREE" not in details, details
    finally:
        await store.close()
