"""The key-tree commands: `addresses parse --descriptor`, import of tree rows, list, stats and revoke
`--descriptor`, on the embedded store and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins

from depositwatch.addresses.descriptors import parse_trees
from tests.store.rigs import run

DATA = Path(__file__).parents[1] / "data" / "hd"
WALLETS: dict[str, Any] = json.loads((DATA / "bip84_bip86_bip49.json").read_text())
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
XPUB = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
ETH_A = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, sqlite_url: str, pg_url: str) -> str:
    return sqlite_url if request.param == "sqlite" else pg_url


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_parse_a_zpub_gives_the_bip84_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    """BIP84's account zpub, range 0-1 inclusive: index and address of the published receive addresses."""
    wallet = WALLETS["bip84"]
    code, stdout, _ = run(
        capsys, "addresses", "parse", "--chain", "btc", "--descriptor", wallet["account_zpub"], "--range", "0-1"
    )
    assert code == 0
    expected = [a for a in wallet["addresses"] if a["branch"] == 0]
    assert [(r["index"], r["address"]) for r in lines(stdout)] == [(a["index"], a["address"]) for a in expected]


@pytest.mark.parametrize(("chain", "coin"), [("eth", Bip44Coins.ETHEREUM), ("tron", Bip44Coins.TRON)])
def test_parse_account_trees_match_the_oracle(capsys: pytest.CaptureFixture[str], chain: str, coin: Bip44Coins) -> None:
    """EVM and TRON account xpubs (m/44'/60'/0', m/44'/195'/0'), far into the range: bip-utils' addresses;
    a multipath tree names each branch's descriptor."""
    account = Bip44.FromSeed(Bip39SeedGenerator(MNEMONIC).Generate(), coin).Purpose().Coin().Account(0)
    xpub = account.PublicKey().ToExtended()
    code, stdout, _ = run(
        capsys, "addresses", "parse", "--chain", chain, "--descriptor", xpub, "--range", "123456-123458"
    )
    assert code == 0
    oracle = [
        account.Change(Bip44Changes.CHAIN_EXT).AddressIndex(i).PublicKey().ToAddress() for i in range(123456, 123459)
    ]
    assert [(r["index"], r["address"]) for r in lines(stdout)] == list(zip(range(123456, 123459), oracle, strict=True))
    code, stdout, _ = run(
        capsys, "addresses", "parse", "--chain", chain, "--descriptor", f"{xpub}/<0;1>/*", "--range", "5-5"
    )
    change = account.Change(Bip44Changes.CHAIN_INT).AddressIndex(5).PublicKey().ToAddress()
    receive = account.Change(Bip44Changes.CHAIN_EXT).AddressIndex(5).PublicKey().ToAddress()
    kind = "evm" if chain == "eth" else "tron"
    assert [(r["address"], r["descriptor"]) for r in lines(stdout)] == [
        (receive, parse_trees(kind, f"{xpub}/0/*")[0].descriptor),
        (change, parse_trees(kind, f"{xpub}/1/*")[0].descriptor),
    ]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--chain", "btc", "--descriptor", f"tr({XPUB}/0/*)", "--range", "9-1"], "need A <= B"),
        (["--chain", "btc", "--network", "regtest", "--descriptor", XPUB], "is on regtest"),
        (["--chain", "eth", "--descriptor", f"{XPUB}/0h/*"], "hardened"),
        (["--chain", "eth", "--descriptor", f"{XPUB}/*#qqqqqqqq"], "checksum mismatch"),
    ],
)
def test_parse_refuses_bad_trees(capsys: pytest.CaptureFixture[str], argv: list[str], why: str) -> None:
    """Bad ranges, network mismatches, hardened steps and wrong checksums exit 2 with the reason."""
    code, _, stderr = run(capsys, "addresses", "parse", *argv)
    assert code == 2 and why in stderr


def test_import_list_stats_and_revoke_trees(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """A book with an address and a multipath tree: the tree row stores two trees with their keys; list and
    stats show them; `revoke --descriptor` revokes both branches at once, and a tree not in the book
    revokes nothing."""
    book = tmp_path / "book.csv"
    book.write_text(
        "chain,address,descriptor,range,gap,status,label,owner,revoked_at,reason\n"
        f"eth,{ETH_A},,,,active,plain,cust-1,,\n"
        f"eth,,{XPUB}/<0;1>/*,0-99,20,active,acct-7,cust-7,,\n"
    )
    code, stdout, stderr = run(capsys, "addresses", "import", str(book), "--dry-run", "--store", url)
    assert (code, stdout) == (0, "would import 2 row(s) (2 key tree(s)): 3 new, 0 updated, 0 unchanged\n"), stderr
    code, stdout, _ = run(capsys, "addresses", "import", str(book), "--store", url)
    assert stdout == "imported 2 row(s) (2 key tree(s)): 3 new, 0 updated, 0 unchanged\n"
    code, stdout, _ = run(capsys, "addresses", "list", "--format", "json", "--store", url)
    rows = lines(stdout)
    trees = [r for r in rows if "descriptor" in r]
    assert [r["address"] for r in rows if "address" in r] == [ETH_A]
    assert sorted(r["descriptor"] for r in trees) == sorted(t.descriptor for t in parse_trees("evm", f"{XPUB}/<0;1>/*"))
    assert {(r["range"], r["gap"], r["keys"], r["status"], r["owner"]) for r in trees} == {
        ("0-99", 20, 100, "active", "cust-7")
    }
    code, stdout, _ = run(capsys, "addresses", "list", "--store", url)
    assert "key trees:" in stdout and "0-99" in stdout and "acct-7" in stdout
    code, stdout, _ = run(capsys, "addresses", "stats", "--store", url)
    assert "total: 2 tree(s), 200 derived key(s)" in stdout
    code, stdout, _ = run(capsys, "addresses", "stats", "--format", "json", "--store", url)
    assert {
        "tree": True,
        "chain": "eth",
        "script": "evm",
        "status": "active",
        "trees": 2,
        "indexes": 200,
        "keys": 200,
    } in json.loads(stdout)

    other = (  # BIP32 test vector 1's master key: not in the book
        "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8"
    )
    code, _, stderr = run(
        capsys, "addresses", "revoke", "--chain", "eth", "--descriptor", f"{XPUB}/<0;1>/*", "--descriptor", other,
        "--at", "2024-01-01T00:00:00Z", "--reason", "leak", "--store", url,
    )  # fmt: skip
    assert code != 0 and "not in the book, nothing was revoked" in stderr
    code, stdout, _ = run(
        capsys, "addresses", "revoke", "--chain", "eth", "--descriptor", f"{XPUB}/<0;1>/*",
        "--at", "2024-01-01T00:00:00Z", "--reason", "leak", "--store", url,
    )  # fmt: skip
    assert code == 0 and "revoked 2 key tree(s) on eth as of 2024-01-01T00:00:00Z" in stdout
    code, stdout, _ = run(capsys, "addresses", "list", "--status", "revoked", "--format", "json", "--store", url)
    assert {(r["status"], r["revoked_at"], r["reason"]) for r in lines(stdout)} == {
        ("revoked", "2024-01-01T00:00:00Z", "leak")
    }
    assert len(lines(stdout)) == 2
    # a revoked tree imported as active again: refused, nothing changes
    code, _, stderr = run(capsys, "addresses", "import", str(book), "--store", url)
    assert code == 2 and "is revoked; importing it as active is refused" in stderr


def test_revoke_all_active_takes_the_trees_too(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    """`revoke --all-active` retires every active address of the chain, the key trees' among them."""
    book = tmp_path / "book.csv"
    book.write_text(f"chain,address,descriptor,range,status\neth,{ETH_A},,,active\neth,,{XPUB},0-9,active\n")
    assert run(capsys, "addresses", "import", str(book), "--store", url)[0] == 0
    code, stdout, _ = run(
        capsys, "addresses", "revoke", "--chain", "eth", "--all-active", "--at", "2024-01-01", "--reason", "x",
        "--store", url,
    )  # fmt: skip
    assert code == 0 and "revoked 1 address(es)" in stdout and "revoked 1 key tree(s)" in stdout
    code, stdout, _ = run(capsys, "addresses", "list", "--status", "active", "--format", "json", "--store", url)
    assert stdout == ""


def test_an_xprv_in_the_csv_fails_the_whole_import_without_echoing_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    """A book with a plain address, a good tree and, on its last line, an xprv (BIP32 test vector 1's
    master key) where a tree belongs: the import fails naming the line, stores nothing (the book keeps
    what an earlier import put there, and only that), and no part of the key shows on either stream."""
    xprv = (
        "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChk"
        "VvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"
    )
    earlier = tmp_path / "earlier.csv"
    earlier.write_text(f"chain,address,status\neth,{ETH_A},active\n")
    assert run(capsys, "addresses", "import", str(earlier), "--store", url)[0] == 0
    book = tmp_path / "book.csv"
    book.write_text(
        "chain,address,descriptor,range,gap,status,label,owner,revoked_at,reason\n"
        f"eth,{ETH_A},,,,revoked,plain,cust-1,2024-01-01T00:00:00Z,leak\n"
        f"eth,,{XPUB}/0/*,0-9,,active,acct-7,cust-7,,\n"
        f"btc,,wpkh([d34db33f/84h/0h/0h]{xprv}/0/*),0-9,,revoked,leak,ops,2024-01-01T00:00:00Z,leak\n"
    )
    code, stdout, stderr = run(capsys, "addresses", "import", str(book), "--store", url)
    assert code != 0 and ":4:" in stderr and "private" in stderr, stderr
    shown = stdout + stderr
    assert all(xprv[i : i + 12] not in shown for i in range(len(xprv) - 11)), shown
    code, stdout, _ = run(capsys, "addresses", "list", "--format", "json", "--store", url)
    assert code == 0 and [(r.get("address"), r["status"]) for r in lines(stdout)] == [(ETH_A, "active")]
