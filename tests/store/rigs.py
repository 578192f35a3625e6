"""What the tests of the CLI's store commands share: the logging reset after a CLI run, a CLI call that
captures its output, and a Ledger over a freshly opened store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import structlog

from depositwatch.cli import main
from depositwatch.store import open_store
from tests.ledger import Ledger


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI points structlog and the root logger at the captured stderr, closed after the test: put
    both back, or the next test's first log line raises ValueError (I/O operation on closed file).
    Autouse in each test module that imports it."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in a thread (it has its own event loop): its exit code, stdout and stderr."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@asynccontextmanager
async def ledger_at(url: str) -> AsyncIterator[Ledger]:
    """A Ledger over the store at `url` (migrated), closed on the way out."""
    store = await open_store(url, migrate=True)
    try:
        yield Ledger(store)
    finally:
        await store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in this thread: its exit code, stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
