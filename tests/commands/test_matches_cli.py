"""`depositwatch matches list` and `deposits list`: the recorded history, filtered, as a table or JSON."""

from __future__ import annotations

import json

import pytest

from depositwatch.timeutil import iso
from tests.ledger import T0, text
from tests.store.rigs import _reset_logging, cli, ledger_at  # noqa: F401 (_reset_logging: an autouse fixture)


async def history(url: str) -> None:
    """Deposits to 1 and 2 in blocks 1..3; address 5 revoked at T0 + 1000 and paid in block 2 (after)."""
    async with ledger_at(url) as ledger:
        await ledger.book(active=[1, 2], revoked=[(5, T0 + 1000)])
        await ledger.block([(1, 10**18)])  # height 1, T0 + 600
        await ledger.block([(2, 5 * 10**17), (5, 3)])  # height 2, T0 + 1200
        await ledger.block([(1, 7)])  # height 3, T0 + 1800: confirms 1 and 2


def lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def test_matches_list_filters_and_formats(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """Newest first; every documented filter narrows the list; the JSON lines carry replay's fields."""
    await history(store_url)
    code, stdout, _ = await cli(capsys, "matches", "list", "--store", store_url, "--format", "json")
    assert code == 0
    rows = lines(stdout)
    assert [(r["block_height"], r["kind"], r["address"]) for r in rows] == [
        (3, "deposit", text(1)),
        (2, "deposit", text(2)),
        (2, "revoked_incoming", text(5)),
        (1, "deposit", text(1)),
    ]
    assert rows[-1]["amount_decimal"] == "1" and rows[-1]["block_time"] == iso(T0 + 600)
    assert rows[-1]["status"] == "confirmed" and rows[0]["status"] == "seen"
    assert rows[2]["revoked_at"] == iso(T0 + 1000) and rows[2]["owner"] == "cust-1"

    async def heights(*filters: str) -> list[tuple[object, object]]:
        code, stdout, _ = await cli(capsys, "matches", "list", "--store", store_url, "--format", "json", *filters)
        assert code == 0
        return [(r["block_height"], r["kind"]) for r in lines(stdout)]

    assert await heights("--kind", "revoked_incoming") == [(2, "revoked_incoming")]
    assert await heights("--address", text(1).upper().replace("0X", "0x")) == [(3, "deposit"), (1, "deposit")]
    assert await heights("--owner", "cust-0") == [(2, "deposit")]
    assert await heights("--since", iso(T0 + 1200) or "") == [(3, "deposit"), (2, "deposit"), (2, "revoked_incoming")]
    assert await heights("--chain", "bsc") == []
    assert await heights("--limit", "1") == [(3, "deposit")]
    assert await heights("--run", "nope") == []

    code, stdout, _ = await cli(capsys, "matches", "list", "--store", store_url, "--kind", "revoked_incoming")
    header, row = stdout.splitlines()
    assert header.split() == [
        "BLOCK_TIME",
        "CHAIN",
        "KIND",
        "STATUS",
        "AMOUNT",
        "ADDRESS",
        "OWNER",
        "TXID",
        "INDEX",
        "BLOCK",
    ]
    assert row.split()[:7] == [
        iso(T0 + 1200),
        "eth",
        "revoked_incoming",
        "confirmed",
        "0.000000000000000003",
        "ETH",
        text(5),
    ]

    code, _, stderr = await cli(capsys, "matches", "list", "--store", store_url, "--since", "yesterday")
    assert code == 2 and "--since" in stderr


async def test_deposits_list_shows_deposits_only(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """`deposits list`: the deposits view (no revoked-address transfer); --final keeps the confirmed ones."""
    await history(store_url)
    code, stdout, _ = await cli(capsys, "deposits", "list", "--store", store_url, "--format", "json")
    assert code == 0
    assert [(r["block_height"], r["amount"]) for r in lines(stdout)] == [
        (3, "7"),
        (2, str(5 * 10**17)),
        (1, str(10**18)),
    ]
    code, stdout, _ = await cli(capsys, "deposits", "list", "--store", store_url, "--format", "json", "--final")
    assert [r["block_height"] for r in lines(stdout)] == [2, 1]
    code, stdout, stderr = await cli(capsys, "deposits", "list", "--store", store_url, "--owner", "nobody")
    assert (code, stdout, stderr) == (0, "", "no deposits\n")


async def test_listing_refuses_a_missing_store(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """Like every read-only command: a missing store is an error, not an empty list."""
    for group in ("matches", "deposits"):
        code, stdout, stderr = await cli(capsys, group, "list", "--store", sqlite_url)
        assert code == 1 and stdout == "" and "no SQLite store" in stderr
