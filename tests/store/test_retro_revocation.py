"""A backdated revocation re-examines what the store already recorded: deposits to the address in
blocks from `revoked_at` on become `revoked_incoming` alerts (mode retro, original block); a
revocation in the future is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from depositwatch.jsonutil import loads
from depositwatch.store import open_store
from depositwatch.timeutil import iso
from tests.ledger import T0, Ledger, text
from tests.store.rigs import _reset_logging, cli, ledger_at  # noqa: F401 (_reset_logging: an autouse fixture)


async def recorded(url: str) -> None:
    """Deposits to address 1 in blocks 1 (T0+600) and 3 (T0+1800); to address 2 in block 2."""
    async with ledger_at(url) as ledger:
        await ledger.book(active=[1, 2])
        await ledger.block([(1, 10)])
        await ledger.block([(2, 20)])
        await ledger.block([(1, 30)])


async def test_backdated_revocation_alerts_on_what_already_landed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store_url: str
) -> None:
    await recorded(store_url)
    listing = tmp_path / "leaked.txt"
    listing.write_text(text(1) + "\n")
    at = iso(T0 + 1000) or ""
    code, stdout, stderr = await cli(
        capsys, "addresses", "revoke", "--chain", "eth", "--file", str(listing), "--at", at, "--reason", "leak",
        "--store", store_url,
    )  # fmt: skip
    assert code == 0, stderr
    assert "revoked 1 address(es)" in stdout
    assert "1 became revoked_incoming alert(s) (mode retro" in stdout
    assert "transfers out of these addresses while they were active were not recorded" in stdout
    assert "never examined" not in stdout  # the store followed from block 1, before the revocation

    store = await open_store(store_url)
    try:
        [message] = await store.outbox.messages(kind="revoked_incoming", limit=10)
        body = loads(message.payload)
    finally:
        await store.close()
    assert (message.kind, message.event, message.block_height) == ("revoked_incoming", "detected", 3)
    assert (body["mode"], body["block"]["height"], body["amount"], body["address"]["address"]) == (
        "retro",
        3,
        "30",
        text(1),
    )
    assert body["block"]["time"] == iso(T0 + 1800) and body["confirmations"] == 1
    assert body["revoked_at"] == at

    # The earlier deposit (before revoked_at) stays a deposit; the later one is both on record.
    code, stdout, _ = await cli(capsys, "matches", "list", "--store", store_url, "--format", "json")
    kinds = [(r["block_height"], r["kind"], r["address"]) for r in map(json.loads, stdout.splitlines())]
    assert sorted(kinds) == [
        (1, "deposit", text(1)),
        (2, "deposit", text(2)),
        (3, "deposit", text(1)),
        (3, "revoked_incoming", text(1)),
    ]


async def test_revocation_before_the_first_recorded_block_names_the_replay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_url: str
) -> None:
    await recorded(sqlite_url)
    listing = tmp_path / "leaked.txt"
    listing.write_text(text(2) + "\n")
    code, stdout, _ = await cli(
        capsys, "addresses", "revoke", "--chain", "eth", "--file", str(listing), "--at", str(T0 - 86_400),
        "--reason", "leak", "--store", sqlite_url,
    )  # fmt: skip
    assert code == 0
    assert "1 became revoked_incoming" in stdout
    assert (
        f"eth: blocks before 1 (time {iso(T0 + 600)}) were never examined by this store; run depositwatch replay"
        " --chain eth --from FIRST --to 0 --send-alerts" in stdout
    )


async def test_a_revocation_in_the_future_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_url: str
) -> None:
    await recorded(sqlite_url)
    listing = tmp_path / "leaked.txt"
    listing.write_text(text(1) + "\n")
    base = ["addresses", "revoke", "--chain", "eth", "--file", str(listing), "--reason", "r", "--store", sqlite_url]
    code, stdout, stderr = await cli(capsys, *base, "--at", str(int(time.time()) + 3600))
    assert code == 2 and stdout == "" and "in the future" in stderr
    code, stdout, _ = await cli(capsys, *base, "--at", str(int(time.time()) + 60))  # within the clock skew
    assert code == 0 and "revoked 1 address(es)" in stdout


async def test_a_block_in_flight_during_the_revocation_still_alerts(store_url: str) -> None:
    """A block classified with the book as it was before the revocation but committed after it: its
    deposit to the newly revoked address (at or after `revoked_at`) is also a `revoked_incoming` alert."""
    from depositwatch.matcher import match_block
    from depositwatch.models import Block, Transfer
    from depositwatch.registry import AddressRegistry
    from depositwatch.store import BlockEffects, Scope
    from tests.ledger import ETH, SENDER, key

    store = await open_store(store_url, migrate=True)
    try:
        ledger = Ledger(store)
        await ledger.book(active=[1])
        stale = await AddressRegistry.load(store, ["eth"])  # the daemon's book before the revocation
        await store.revoke(["eth"], [key(1)], T0 + 100, "leak")
        block = Block(
            1, "h1", "h0", T0 + 600, (Transfer(ETH, 5, "0x" + "ab" * 32, None, key(1), None, SENDER, text(1)),)
        )
        matches = match_block("eth", block, stale.book("eth"))
        assert [str(m.kind) for m in matches] == ["deposit"]
        await store.commit_blocks(Scope.live(), ledger.cursor, ledger.policy, [BlockEffects(block, matches)], 1)
        [message] = await store.outbox.messages(kind="revoked_incoming", limit=10)
        assert (message.event, message.block_height) == ("detected", 1)
    finally:
        await store.close()
