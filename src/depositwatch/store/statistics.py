"""PostgreSQL's planner statistics of `matches`, kept current by the store that grows it.

The planner chooses indexes by statistics that only ANALYZE gathers. Without them (a fresh store; or a
replay scope the last ANALYZE never saw, under a store of live matches) it takes `scope = $1` for 0.5 %
of the rows, so for a scope that holds most of them any index beginning with the scope looks cheap:
each commit's lookup of known ids read the scope's every match through one, and a million-block replay
into a fresh store fell from 1,281 to 204 blocks/s within 30,000 blocks. Autovacuum gathers them once a
tenth of a table changed, if it runs at all (a server may turn it off), and a replay scope can write
hundreds of thousands of rows before that. So the store analyzes `matches` itself each time the rows it
wrote since its last ANALYZE reach a fifth of the table (at least `ANALYZE_MIN_ROWS`): a few dozen times
over a million-block replay, each reading a sample of 30,000 rows whatever the table's size.
SQLite needs none of this: its planner prefers the index that pins the most columns by equality.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import structlog

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn, Driver

log = structlog.get_logger(__name__)

ANALYZE_SHARE = 0.2  # ANALYZE once the rows written here since the last one reach this share of the table
ANALYZE_MIN_ROWS = 2_000


class Statistics:
    """Counts the match rows this store wrote; on PostgreSQL, analyzes `matches` as they accumulate."""

    def __init__(self, db: Driver) -> None:
        self.db = db
        self.analyzed = 0  # ANALYZE statements run here
        self._written = 0
        self._table_rows: float | None = None  # the table's rows as of the last ANALYZE seen from here

    async def wrote(self, rows: int) -> None:
        """`rows` match rows were just committed."""
        if self.db.dialect != "postgres" or rows <= 0:
            return
        self._written += rows
        if self._written < ANALYZE_MIN_ROWS:
            return
        try:
            async with self.db.read() as conn:
                if self._table_rows is None:
                    self._table_rows = await _reltuples(conn)
                if self._written < ANALYZE_SHARE * self._table_rows:
                    return
                await conn.execute("ANALYZE matches")
                self._table_rows = await _reltuples(conn)
        except (OSError, asyncpg.PostgresError) as exc:  # the commit stands; the next one tries again
            log.warning("could not analyze the matches table", error=f"{type(exc).__name__}: {exc}")
            return
        self._written = 0
        self.analyzed += 1


async def _reltuples(conn: Conn) -> float:
    """The table's row count as PostgreSQL last estimated it (0 before any ANALYZE or VACUUM: -1 there)."""
    value = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'matches'::regclass")
    return max(0.0, float(value or 0))
