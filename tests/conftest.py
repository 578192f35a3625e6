"""Shared fixtures: stores on both backends (PostgreSQL for real), loopback ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from depositwatch.store import SqlStore, open_store

PG_URL = os.environ.get("DEPOSITWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_schema() -> str:
    schema = f"dw_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({exc}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or run `make test`"
        )
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = await _pg_schema()
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}search_path={schema}"
    await _drop_schema(schema)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An embedded store in the test's own folder."""
    return f"sqlite:///{tmp_path}/depositwatch.db"


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty store, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/depositwatch.db"
        return
    schema = await _pg_schema()
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}search_path={schema}"
    await _drop_schema(schema)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """A migrated store, once per backend."""
    opened = await open_store(store_url, migrate=True)
    yield opened
    await opened.close()
