"""Durable state behind one `Store` protocol: embedded SQLite (default) or PostgreSQL.

`SqlStore` is the store; its parts (`KeyTrees`, `Outbox`, `Leases`, `Audit`, `Reports`, `TokenCache`) are
its attributes, each given alone to the consumer that needs only it.
"""

from __future__ import annotations

from depositwatch.config import StoreConfig
from depositwatch.store.audit import Audit
from depositwatch.store.base import (
    BlockEffects,
    ChainPolicy,
    Coverage,
    Cursor,
    Fence,
    IdentityMismatch,
    ImportRejected,
    ImportResult,
    LeaseLost,
    RegistryRow,
    RevokeResult,
    SchemaError,
    Scope,
    Store,
    StoreError,
)
from depositwatch.store.drivers import PostgresDriver, SqliteDriver, sqlite_path
from depositwatch.store.leases import Leases
from depositwatch.store.outbox import Outbox
from depositwatch.store.reporting import Reports
from depositwatch.store.sql import SqlStore
from depositwatch.store.tokens import TokenCache
from depositwatch.store.trees import KeyTrees

__all__ = [
    "Audit",
    "BlockEffects",
    "ChainPolicy",
    "Coverage",
    "Cursor",
    "Fence",
    "IdentityMismatch",
    "ImportRejected",
    "ImportResult",
    "KeyTrees",
    "LeaseLost",
    "Leases",
    "Outbox",
    "RegistryRow",
    "Reports",
    "RevokeResult",
    "SchemaError",
    "Scope",
    "SqlStore",
    "Store",
    "StoreError",
    "TokenCache",
    "connect_store",
    "open_store",
]


async def connect_store(config: StoreConfig | str, *, create: bool = False, scratch: bool = False) -> SqlStore:
    """Connect to the store named by the config (or a URL) without looking at its schema.

    `create` lets SQLite make a missing database file; only the commands that build or change the
    store (`db migrate`, `run`, `addresses import`, `addresses revoke`) ask for it. `scratch` marks a
    SQLite file that is thrown away when the process ends (an ad-hoc replay's): it is written
    without fsync (see `SqliteDriver.pragmas`); never for a store that must survive.
    """
    if isinstance(config, str):
        config = StoreConfig(url=config)
    driver: SqliteDriver | PostgresDriver
    if config.url.startswith("sqlite:"):
        driver = SqliteDriver(sqlite_path(config.url), create=create, scratch=scratch)
    else:
        password = config.password.resolve().get_secret_value() if config.password else None
        driver = PostgresDriver(config.url, password=password, pool_size=config.pool_size)
    await driver.open()
    return SqlStore(driver)


async def open_store(config: StoreConfig | str, *, migrate: bool = False, scratch: bool = False) -> SqlStore:
    """Open the store named by the config (or a URL) and check its schema is this program's.

    With `migrate` a missing SQLite file is created and pending migrations are applied first; without
    it a missing, empty, older or newer store is refused with SchemaError (or StoreError).
    """
    store = await connect_store(config, create=migrate, scratch=scratch)
    try:
        if migrate:
            await store.migrate()
        await store.check_schema()  # also refuses a schema newer than this program
    except BaseException:
        await store.close()
        raise
    return store
