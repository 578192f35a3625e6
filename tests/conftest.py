"""Shared fixtures: stores on both backends (PostgreSQL for real), loopback ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from depositwatch.store import SqlStore, open_store


@pytest.fixture(autouse=True)
def _structlog_defaults() -> None:
    """Each test starts from structlog's defaults: a test that configures logging (the CLI run in-process,
    tests/config/test_no_secrets.py) leaves no level filter behind to hide another test's info lines."""
    structlog.reset_defaults()


# The files that take longest (a minute or more each, most of it waiting on daemons and nodes), longest
# first. `--dist loadfile` hands files to the workers most tests first, which leaves these files of a few
# long tests for the end of the run, one after another on whichever worker is free; handed out first, they
# run side by side from the start and the short files fill in around them.
LONG_FILES = (
    "tests/daemon/test_install.py",
    "tests/replay/test_replay_workers.py",
    "tests/config/test_no_secrets.py",
    "tests/proof/test_crash_reorgs.py",
    "tests/proof/test_crash_failover.py",
    "tests/proof/test_crash_live.py",
    "tests/proof/test_faults.py",
    "tests/daemon/test_trees_live.py",
    "tests/daemon/test_prometheus_scrape.py",
    "tests/proof/test_crash_replay.py",
    "tests/replay/test_real_replay.py",
    "tests/daemon/test_daemon.py",
)


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist (`-p no:xdist`) has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `--dist loadfile`, the long files are handed out first (see `LONG_FILES`)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    rank = {name: index for index, name in enumerate(LONG_FILES)}

    class LongFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node: Any) -> None:
            # The queue is filled once, most tests first; put the long files at its head before the first hand-out.
            if not getattr(self, "_long_first", False):
                for scope in sorted(self.workqueue, key=lambda scope: rank.get(scope, len(LONG_FILES))):
                    self.workqueue.move_to_end(scope)
                self._long_first = True
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)


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
