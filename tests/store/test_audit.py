"""The address book's audit log from the command line, on the embedded store and on PostgreSQL: every
import, revocation and reinstatement recorded with who, when, what and why, in the change's own
transaction; reinstating is its own command; `addresses history` shows it all."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from depositwatch.cli import main
from depositwatch.store import StoreError, open_store
from tests.commands.test_cli_addresses import BTC_P2PKH, BTC_P2WPKH, ETH_A, ETH_B, GOOD
from tests.store.rigs import run

USER = f"unix:{pwd.getpwuid(os.getuid()).pw_name}"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, sqlite_url: str, pg_url: str) -> str:
    return sqlite_url if request.param == "sqlite" else pg_url


def history(capsys: pytest.CaptureFixture[str], url: str, address: str, *extra: str) -> list[dict[str, object]]:
    code, stdout, stderr = run(capsys, "addresses", "history", address, "--json", "--store", url, *extra)
    assert code == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()]


async def audit_rows(url: str) -> list[tuple[str, str, str, str]]:
    store = await open_store(url)
    try:
        return [(r.actor, r.action, r.chain, r.address) for r in reversed(await store.audit.log())]
    finally:
        await store.close()


def test_import_revoke_reinstate_are_each_recorded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    """Each change of one address shows in its history, oldest first: by this unix user, with the file
    and row count of the import, the revocation time and reason, and the reinstatement's reason; a
    re-import that changes nothing adds nothing."""
    book = tmp_path / "book.csv"
    book.write_text(GOOD)
    assert run(capsys, "addresses", "import", str(book), "--store", url)[0] == 0
    assert run(capsys, "addresses", "import", str(book), "--store", url)[0] == 0  # unchanged: no rows
    leaked = tmp_path / "leaked.txt"
    leaked.write_text(ETH_A + "\n")
    code, _, stderr = run(
        capsys, "addresses", "revoke", "--chain", "eth", "--file", str(leaked), "--at", "2024-01-02T00:00:00Z",
        "--reason", "hot wallet leak", "--store", url,
    )  # fmt: skip
    assert code == 0, stderr
    code, stdout, stderr = run(
        capsys, "addresses", "reinstate", ETH_A.lower(), "--reason", "false alarm: keys never left the HSM",
        "--store", url,
    )  # fmt: skip
    assert (code, stderr) == (0, ""), stderr
    assert f"reinstated eth address {ETH_A}" in stdout

    rows = history(capsys, url, ETH_A.lower())
    assert [(r["action"], r["actor"], r["chain"], r["address"], r["owner"]) for r in rows] == [
        ("import", USER, "eth", ETH_A, "cust-3"),
        ("revoke", USER, "eth", ETH_A, "cust-3"),
        ("reinstate", USER, "eth", ETH_A, "cust-3"),
    ]
    imported, revoked, reinstated = (r["detail"] for r in rows)
    assert isinstance(imported, dict) and isinstance(revoked, dict) and isinstance(reinstated, dict)
    assert imported["file"] == str(book) and imported["rows"] == 4 and imported["line"] == 4
    assert (imported["previous_status"], imported["status"]) == (None, "active")
    assert (revoked["previous_status"], revoked["status"], revoked["revoked_at"]) == ("active", "revoked", 1704153600)
    assert rows[1]["reason"] == "hot wallet leak"
    assert (reinstated["previous_status"], reinstated["status"]) == ("revoked", "active")
    assert reinstated["previous_revoked_at"] == 1704153600 and reinstated["previous_reason"] == "hot wallet leak"
    assert rows[2]["reason"] == "false alarm: keys never left the HSM"
    code, stdout, _ = run(capsys, "addresses", "list", "--store", url, "--format", "json", "--chain", "eth")
    entries = {e["address"]: e for e in map(json.loads, stdout.splitlines())}
    assert entries[ETH_A]["status"] == "active" and entries[ETH_A]["revoked_at"] is None

    # the table form, and the other addresses' histories hold their import only
    code, stdout, _ = run(capsys, "addresses", "history", ETH_A, "--store", url)
    assert code == 0 and "reinstate" in stdout and "revoked -> active" in stdout and USER in stdout
    assert [r["action"] for r in history(capsys, url, BTC_P2PKH, "--chain", "btc")] == ["import"]
    code, _, stderr = run(capsys, "addresses", "history", "0x" + "99" * 20, "--store", url)
    assert code == 1 and "no recorded changes" in stderr


def test_import_never_turns_revoked_active(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """An import row that would make a revoked address active is refused, naming `reinstate`; nothing is
    stored (the whole file) and nothing is audited."""
    book = tmp_path / "book.csv"
    book.write_text(GOOD)
    assert run(capsys, "addresses", "import", str(book), "--store", url)[0] == 0
    again = tmp_path / "again.csv"
    again.write_text(
        "chain,address,status,label,owner\n"
        f"eth,{ETH_B},active,eth-2,cust-4\n"
        "eth,0x" + "77" * 20 + ",active,new,cust-9\n"
    )
    code, _, stderr = run(capsys, "addresses", "import", str(again), "--store", url)
    assert code == 2 and "is revoked; importing it as active is refused" in stderr and "reinstat" in stderr
    assert [r["action"] for r in history(capsys, url, ETH_B)] == ["import"]
    assert history(capsys, url, "0x" + "77" * 20) == []


def test_reinstate_needs_a_reason_and_a_revoked_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    """No reason, an empty reason, an active address or one not in the book: exit 2, nothing changes."""
    book = tmp_path / "book.csv"
    book.write_text(GOOD)
    assert run(capsys, "addresses", "import", str(book), "--store", url)[0] == 0
    with pytest.raises(SystemExit) as caught:
        main(["addresses", "reinstate", ETH_B, "--store", url])
    assert caught.value.code == 2 and "--reason" in capsys.readouterr().err
    code, _, stderr = run(capsys, "addresses", "reinstate", ETH_B, "--reason", "  ", "--store", url)
    assert code == 2 and "--reason" in stderr
    code, _, stderr = run(capsys, "addresses", "reinstate", ETH_A, "--reason", "r", "--store", url)
    assert code == 2 and "is not a revoked address" in stderr
    code, _, stderr = run(capsys, "addresses", "reinstate", BTC_P2WPKH, "--reason", "r", "--store", url)
    assert code == 2 and "is not a revoked address" in stderr
    assert [a for _, a, _, _ in await_rows(url)] == ["import"] * 4


def await_rows(url: str) -> list[tuple[str, str, str, str]]:
    import asyncio

    return asyncio.run(audit_rows(url))


async def test_the_audit_row_and_the_change_commit_together(store_url: str, tmp_path: Path) -> None:
    """When the audit row cannot be written the book change rolls back with it: nothing half-applied."""
    from depositwatch.addressbook import ChainDirectory, read_import_csv

    store = await open_store(store_url, migrate=True)
    try:
        entries = read_import_csv(GOOD, ChainDirectory(ChainDirectory.DEFAULTS))
        await store.import_addresses(entries, actor="token:wallet", action="add")
        version = await store.address_book_version()
        async with store.db.transaction() as conn:  # an audit log that refuses every row
            await conn.execute("ALTER TABLE address_audit RENAME TO address_audit_moved")
        with pytest.raises(Exception, match="address_audit"):
            await store.revoke(["eth"], None, 1_700_000_000, "breach")
        key = entries[2][1].key
        assert [e.status for e in await store.audit.book_entries("eth", [key])] == ["active"]
        assert await store.address_book_version() == version
        async with store.db.transaction() as conn:
            await conn.execute("ALTER TABLE address_audit_moved RENAME TO address_audit")
        result = await store.revoke(["eth"], None, 1_700_000_000, "breach", actor="token:soc")
        assert result.revoked == 1
        with pytest.raises(StoreError, match="are active, not revoked"):  # all or nothing
            await store.audit.reinstate("btc", [entries[1][1].key, entries[0][1].key], "oops", actor="token:soc")
        with pytest.raises(StoreError, match="not in the eth book"):
            await store.audit.reinstate("eth", [key, b"\x77" * 20], "oops", actor="token:soc")
        assert {e.status for e in await store.audit.book_entries("btc", [entries[1][1].key])} == {"revoked"}
        log = [(r.actor, r.action, r.address) for r in reversed(await store.audit.log())]
        assert log == [
            *[("token:wallet", "add", e.address) for _, e in entries],
            ("token:soc", "revoke", ETH_A),
        ]
    finally:
        await store.close()


def test_retention_keeps_the_audit_log(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """`db prune` with the shortest ages removes no audit row."""
    book = tmp_path / "book.csv"
    book.write_text(GOOD)
    assert run(capsys, "addresses", "import", str(book), "--store", url)[0] == 0
    code, _, stderr = run(
        capsys, "db", "prune", "--outbox-days", "0.00001", "--matches-days", "0.00001", "--store", url
    )
    assert code == 0, stderr
    assert len(await_rows(url)) == 4
