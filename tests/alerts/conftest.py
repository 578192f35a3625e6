"""The alert tests' store: one migrated SQLite store a test (they need no second backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from depositwatch.store import SqlStore, open_store


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(sqlite_url, migrate=True)
    yield opened
    await opened.close()
