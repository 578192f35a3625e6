"""Durable state behind one `Store` protocol: embedded SQLite (default) or PostgreSQL."""

from __future__ import annotations

from depositwatch.config import StoreConfig
from depositwatch.store.base import (
    BlockEffects,
    ChainPolicy,
    Cursor,
    IdentityMismatch,
    ImportRejected,
    ImportResult,
    LeaseLost,
    OutboxMessage,
    RegistryRow,
    RevokeResult,
    SchemaError,
    Scope,
    Store,
    StoreError,
)
from depositwatch.store.drivers import PostgresDriver, SqliteDriver, sqlite_path
from depositwatch.store.sql import SqlStore

__all__ = [
    "BlockEffects",
    "ChainPolicy",
    "Cursor",
    "IdentityMismatch",
    "ImportRejected",
    "ImportResult",
    "LeaseLost",
    "OutboxMessage",
    "RegistryRow",
    "RevokeResult",
    "SchemaError",
    "Scope",
    "SqlStore",
    "Store",
    "StoreError",
    "open_store",
]


async def open_store(config: StoreConfig | str, *, migrate: bool = False) -> SqlStore:
    """Open the store named by the config (or a URL); migrate it if asked, else check its schema."""
    if isinstance(config, str):
        config = StoreConfig(url=config)
    driver: SqliteDriver | PostgresDriver
    if config.url.startswith("sqlite:"):
        driver = SqliteDriver(sqlite_path(config.url))
    else:
        password = config.password.resolve().get_secret_value() if config.password else None
        driver = PostgresDriver(config.url, password=password, pool_size=config.pool_size)
    await driver.open()
    store = SqlStore(driver)
    try:
        if migrate:
            await store.migrate()
        await store.check_schema()  # also refuses a schema newer than this program
    except BaseException:
        await store.close()
        raise
    return store
