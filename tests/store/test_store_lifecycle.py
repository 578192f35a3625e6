"""Creating, upgrading and opening a store: `db migrate` builds and upgrades; read-only commands never do."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from depositwatch.store import SchemaError, SqlStore, connect_store, open_store
from depositwatch.store.schema import migrations, statements
from tests.store.rigs import _reset_logging, cli  # noqa: F401 (_reset_logging: an autouse fixture)


def earlier_versions() -> list[int]:
    """Every schema version a store of an earlier release can be at: 0 (nothing) and each packaged
    migration but the last."""
    return [0, *[version for version, _ in migrations()][:-1]]


async def build_store_at(url: str, version: int) -> None:
    """A store as an earlier release left it: the packaged migrations up to `version`, with data."""
    store = await connect_store(url, create=True)
    try:
        if version:
            assert await store.migrate(target=version) == [v for v, _ in migrations() if v <= version]
            async with store.db.transaction() as conn:  # columns of schema 1, which later ones keep
                await conn.execute(
                    "INSERT INTO addresses (chain, key, address, type, status, label, owner, revoked_at, reason,"
                    " created_at, updated_at) VALUES ('eth', $1, '0xAbc', 'eoa', 'revoked', 'l', 'o', 5, 'r', 1, 1)",
                    b"\x01" * 20,
                )
                await conn.execute(
                    "INSERT INTO outbox (alert_id, rev, event, kind, severity, chain, order_key, payload, status,"
                    " created_at) VALUES ('a1', 1, 'detected', 'revoked_incoming', 'critical', 'eth', 'k', '{}',"
                    " 'delivered', 7)"
                )
    finally:
        await store.close()


@pytest.mark.parametrize("version", earlier_versions())
async def test_db_migrate_creates_and_upgrades_every_earlier_version(
    capsys: pytest.CaptureFixture[str], store_url: str, version: int
) -> None:
    """`db migrate` on a fresh store or one at any earlier schema version brings it to the current
    schema and keeps its rows; a second run changes nothing."""
    if version:
        await build_store_at(store_url, version)
    code, stdout, stderr = await cli(capsys, "db", "migrate", "--store", store_url)
    assert (code, stderr) == (0, "")
    pending = [str(v) for v, _ in migrations() if v > version]
    assert stdout == f"applied migrations: {', '.join(pending)}\n"
    store = await open_store(store_url)
    try:
        await store.check_schema()
        async with store.db.read() as conn:
            addresses = await conn.fetch("SELECT address, status, revoked_at FROM addresses")
            outbox = await conn.fetch("SELECT alert_id, status, created_at FROM outbox")
        if version:
            assert [tuple(r) for r in addresses] == [("0xAbc", "revoked", 5)]
            assert [tuple(r) for r in outbox] == [("a1", "delivered", 7)]
        else:
            assert (addresses, outbox) == ([], [])
    finally:
        await store.close()
    assert await cli(capsys, "db", "migrate", "--store", store_url) == (0, "schema is current\n", "")


def test_statements_keep_semicolons_and_dashes_inside_literals() -> None:
    """A `;` or `--` inside a string literal or quoted name is part of its statement, not a split."""
    sql = (
        "-- a comment; with a semicolon\n"
        "INSERT INTO t (a, \"b;c\") VALUES ('x; y -- z', 'it''s; fine'); /* block; comment */\n"
        "CREATE TABLE u (v {BLOB});\n"
    )
    assert statements(sql, "postgres") == [
        "INSERT INTO t (a, \"b;c\") VALUES ('x; y -- z', 'it''s; fine')",
        "CREATE TABLE u (v BYTEA)",
    ]
    with pytest.raises(SchemaError, match="unterminated"):
        statements("INSERT INTO t VALUES ('open;", "sqlite")


def test_a_statement_marked_sqlite_only_runs_on_sqlite_only() -> None:
    sql = "CREATE TABLE a (k {BLOB});\n{SQLITE_ONLY}CREATE INDEX a_len ON a (length(k));\nCREATE TABLE b (n INT);"
    assert statements(sql, "sqlite") == [
        "CREATE TABLE a (k BLOB)",
        "CREATE INDEX a_len ON a (length(k))",
        "CREATE TABLE b (n INT)",
    ]
    assert statements(sql, "postgres") == ["CREATE TABLE a (k BYTEA)", "CREATE TABLE b (n INT)"]


async def test_a_literal_with_a_semicolon_runs_as_one_statement(store: SqlStore) -> None:
    """The split statements run on both backends as written."""
    async with store.db.transaction() as conn:
        for statement in statements("CREATE TABLE semi (t TEXT); INSERT INTO semi VALUES ('a;b'' -- c');", "sqlite"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT t FROM semi") == "a;b' -- c"


READ_ONLY = [
    ["alerts", "list"],
    ["alerts", "show", "1"],
    ["alerts", "redeliver", "--dead"],
    ["addresses", "list"],
    ["addresses", "stats"],
    ["addresses", "history", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"],
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
async def test_read_only_commands_refuse_a_missing_sqlite_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    """A mistyped path is an error naming the path, and no file (or folder) appears there."""
    path = tmp_path / "typo" / "depositwatch.db"
    code, stdout, stderr = await cli(capsys, *argv, "--store", f"sqlite:///{path}")
    assert code == 1 and stdout == ""
    assert f"no SQLite store at {path}" in stderr and "db migrate" in stderr
    assert not path.exists() and not path.parent.exists()


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
async def test_read_only_commands_refuse_a_store_without_schema(
    capsys: pytest.CaptureFixture[str], pg_url: str, argv: list[str]
) -> None:
    """An empty PostgreSQL database is refused and left empty: no migration behind the operator's back."""
    code, stdout, stderr = await cli(capsys, *argv, "--store", pg_url)
    assert code == 1 and stdout == ""
    assert "no depositwatch schema: run `depositwatch db migrate`" in stderr
    schema = pg_url.rsplit("search_path=", 1)[1]
    conn = await asyncpg.connect(pg_url.split("?", maxsplit=1)[0])
    try:
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
    finally:
        await conn.close()
    assert tables == []


@pytest.mark.parametrize("version", earlier_versions()[1:])
async def test_read_only_commands_refuse_an_older_store(
    capsys: pytest.CaptureFixture[str], store_url: str, version: int
) -> None:
    """A store an earlier release left behind is refused (run `db migrate`), and left as it was."""
    await build_store_at(store_url, version)
    code, stdout, stderr = await cli(capsys, "alerts", "list", "--store", store_url)
    assert code == 1 and stdout == "" and "run `depositwatch db migrate`" in stderr
    store = await connect_store(store_url)
    try:
        assert await store.schema_versions() == {v for v, _ in migrations() if v <= version}
    finally:
        await store.close()


async def test_changing_commands_create_the_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`addresses import` may create the store it writes to."""
    csv = tmp_path / "book.csv"
    csv.write_text("chain,address,status\neth,0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed,active\n")
    url = f"sqlite:///{tmp_path}/new/depositwatch.db"
    code, stdout, _ = await cli(capsys, "addresses", "import", str(csv), "--store", url)
    assert code == 0 and "1 new" in stdout
    code, stdout, _ = await cli(capsys, "addresses", "stats", "--store", url)
    assert code == 0 and "total: 1" in stdout
