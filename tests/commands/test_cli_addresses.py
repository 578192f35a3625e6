"""The `addresses` commands end to end, on the embedded store and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.store.rigs import run

BTC_P2WPKH = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
BTC_P2PKH = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
BTC_P2TR = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
ETH_A = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
ETH_B = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"

GOOD = f"""chain,address,status,label,owner,revoked_at,reason
btc,{BTC_P2WPKH},active,hot-1,cust-1,,
btc,{BTC_P2PKH},revoked,old-1,cust-2,2023-09-12T00:00:00Z,coinex breach
eth,{ETH_A},active,eth-1,cust-3,,
eth,{ETH_B.lower()},revoked,eth-2,cust-4,2023-09-12,breach
"""


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, sqlite_url: str, pg_url: str) -> str:
    return sqlite_url if request.param == "sqlite" else pg_url


def revoke(
    capsys: pytest.CaptureFixture[str], url: str, chain: str, *selection: str, at: str, reason: str
) -> tuple[int, str, str]:
    """`addresses revoke` of `selection` (`--file PATH` or `--all-active`) on `chain` in the store at `url`."""
    return run(
        capsys, "addresses", "revoke", "--chain", chain, *selection, "--at", at, "--reason", reason, "--store", url
    )


def test_parse_prints_json_and_rejects_bad(capsys: pytest.CaptureFixture[str]) -> None:
    """`addresses parse` prints one object per address and exits 2 naming a bad one."""
    code, stdout, stderr = run(capsys, "addresses", "parse", "--chain", "btc", BTC_P2TR, "bc1qbad")
    assert code == 2
    assert json.loads(stdout)["type"] == "p2tr"
    assert "bc1qbad" in stderr
    code, stdout, _ = run(capsys, "addresses", "parse", "--chain", "eth", ETH_B.lower())
    assert code == 0 and json.loads(stdout)["address"] == ETH_B


def test_import_repeat_list_stats(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """Import stores everything once; re-import changes nothing; list and stats show it."""
    book = tmp_path / "book.csv"
    book.write_text(GOOD)
    code, stdout, _ = run(capsys, "addresses", "import", str(book), "--store", url, "--dry-run")
    assert code == 0 and "would import 4" in stdout
    code, stdout, _ = run(capsys, "addresses", "import", str(book), "--store", url)
    assert code == 0 and "4 new" in stdout
    code, stdout, _ = run(capsys, "addresses", "import", str(book), "--store", url)
    assert "0 new, 0 updated, 4 unchanged" in stdout
    code, stdout, _ = run(capsys, "addresses", "list", "--store", url, "--format", "json", "--status", "revoked")
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert {r["address"] for r in rows} == {BTC_P2PKH, ETH_B}
    assert {r["revoked_at"] for r in rows} == {"2023-09-12T00:00:00Z"}
    code, stdout, _ = run(capsys, "addresses", "stats", "--store", url)
    assert "total: 4" in stdout


def test_import_is_all_or_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """One bad row rejects the file: every bad row is listed by line number, nothing stored."""
    book = tmp_path / "bad.csv"
    book.write_text(
        GOOD
        + f"btc,{BTC_P2PKH[:-1]}b,active,,,,\n"
        + "eth,0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed,active,,,,\n"
        + f"eth,{ETH_A},revoked,,,,\n"
        + f"doge,{ETH_A},active,,,,\n"
    )
    assert run(capsys, "db", "migrate", "--store", url)[0] == 0  # an empty store, so stats can count 0
    code, _, stderr = run(capsys, "addresses", "import", str(book), "--store", url)
    assert code == 2
    for line, reason in ((6, "checksum"), (7, "EIP-55"), (8, "revoked_at"), (9, "unknown chain")):
        assert f"bad.csv:{line}:" in stderr and reason in stderr
    code, stdout, _ = run(capsys, "addresses", "stats", "--store", url)
    assert "total: 0" in stdout


def test_import_rejects_extra_columns(capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_url: str) -> None:
    """An unknown column is refused before any row is read."""
    book = tmp_path / "extra.csv"
    book.write_text("chain,address,status,balance\n")
    code, _, stderr = run(capsys, "addresses", "import", str(book), "--store", sqlite_url)
    assert code == 2 and "balance" in stderr


def test_revoke_file_and_all_active(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """Revocation by list and by --all-active; an unknown address aborts the whole revocation."""
    book = tmp_path / "book.csv"
    book.write_text(GOOD)
    run(capsys, "addresses", "import", str(book), "--store", url)
    listing = tmp_path / "leaked.txt"
    listing.write_text(f"# leaked\n{ETH_A}\n0x{'ab' * 20}\n")
    code, _, stderr = revoke(capsys, url, "eth", "--file", str(listing), at="2023-09-12T10:00:00Z", reason="x")
    assert code == 2 and "not in the book" in stderr
    listing.write_text(f"{ETH_A}\n")
    code, stdout, _ = revoke(capsys, url, "evm:*", "--file", str(listing), at="2023-09-12T10:00:00Z", reason="x")
    assert code == 0 and "revoked 1" in stdout
    code, stdout, _ = revoke(capsys, url, "btc", "--all-active", at="1694512800", reason="y")
    assert code == 0 and "revoked 1" in stdout
    code, stdout, _ = run(capsys, "addresses", "list", "--store", url, "--format", "json", "--status", "active")
    assert stdout == ""


def test_revoke_needs_a_zone(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """A revocation time without a zone is refused rather than read in the host's zone."""
    code, _, stderr = revoke(capsys, sqlite_url, "eth", "--all-active", at="2023-09-12T10:00:00", reason="x")
    assert code == 2 and "no time zone" in stderr
