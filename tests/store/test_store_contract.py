"""The Store contract: every test runs against SQLite and the real PostgreSQL server."""

from __future__ import annotations

import dataclasses

import pytest

from depositwatch.jsonutil import loads
from depositwatch.models import AddressEntry, AddressStatus, Asset, Block, BlockRef, Match, Transfer
from depositwatch.registry import AddressRegistry
from depositwatch.store import (
    BlockEffects,
    ChainPolicy,
    Cursor,
    IdentityMismatch,
    ImportRejected,
    LeaseLost,
    SchemaError,
    Scope,
    SqlStore,
    StoreError,
    open_store,
)

ETH = Asset("ETH", 18)
USDT = Asset("USDT", 6, "0xdAC17F958D2ee523a2206206994597C13D831ec7")
A_ACTIVE = bytes.fromhex("11" * 20)
A_REVOKED = bytes.fromhex("22" * 20)
A_OTHER = bytes.fromhex("33" * 20)
POLICY = ChainPolicy("eth", confirmations=3, chain_id=1)
LIVE = Scope.live()


def entry(key: bytes, status: AddressStatus, revoked_at: int | None = None, label: str = "") -> AddressEntry:
    return AddressEntry(
        "eth",
        "0x" + key.hex(),
        key,
        status,
        label=label or f"L{key[0]}",
        owner=f"cust-{key[0]}",
        revoked_at=revoked_at,
        reason="breach" if revoked_at else "",
        type="ethereum",
    )


async def seed(store: SqlStore) -> None:
    await store.import_addresses(
        [(2, entry(A_ACTIVE, AddressStatus.ACTIVE)), (3, entry(A_REVOKED, AddressStatus.REVOKED, 1000))]
    )


def block(height: int, parent: str = "", time: int = 5000, transfers: tuple[Transfer, ...] = ()) -> Block:
    return Block(height, f"h{height}", parent or f"h{height - 1}", time, transfers)


def matches_for(b: Block, registry: AddressRegistry) -> list[Match]:
    from depositwatch.matcher import match_block

    return match_block("eth", b, registry.book("eth"))


async def test_migrate_is_idempotent_and_checked(store_url: str) -> None:
    """Migrations apply once; opening without migrating requires the current schema."""
    with pytest.raises(SchemaError, match="db migrate"):
        await open_store(store_url)
    store = await open_store(store_url, migrate=True)
    assert await store.migrate() == []
    await store.check_schema()
    await store.close()
    reopened = await open_store(store_url)
    await reopened.close()


async def test_import_is_all_or_nothing_and_repeatable(store: SqlStore) -> None:
    """Re-importing the same rows changes nothing; a duplicate row rejects the whole import."""
    rows = [(2, entry(A_ACTIVE, AddressStatus.ACTIVE)), (3, entry(A_REVOKED, AddressStatus.REVOKED, 1000))]
    first = await store.import_addresses(rows)
    assert (first.inserted, first.updated, first.unchanged) == (2, 0, 0)
    version = await store.address_book_version()
    again = await store.import_addresses(rows)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert await store.address_book_version() == version
    with pytest.raises(ImportRejected) as rejected:
        await store.import_addresses(
            [(2, entry(A_OTHER, AddressStatus.ACTIVE)), (5, entry(A_OTHER, AddressStatus.ACTIVE))]
        )
    assert rejected.value.problems[0][0] == 5
    assert len(await store.list_addresses()) == 2
    dry = await store.import_addresses([(2, entry(A_OTHER, AddressStatus.ACTIVE))], dry_run=True)
    assert dry.inserted == 1
    assert len(await store.list_addresses()) == 2


async def test_import_refuses_to_unrevoke(store: SqlStore) -> None:
    """An import cannot silently turn a revoked (possibly compromised) address back to active."""
    await seed(store)
    with pytest.raises(ImportRejected, match="revoked"):
        await store.import_addresses(
            [(7, entry(A_REVOKED, AddressStatus.ACTIVE)), (8, entry(A_OTHER, AddressStatus.ACTIVE))]
        )
    assert [e.address for e in await store.list_addresses()] == ["0x" + A_ACTIVE.hex(), "0x" + A_REVOKED.hex()]


async def test_revoke_in_one_transaction(store: SqlStore) -> None:
    """Revocation retires listed keys atomically; unknown keys abort it; an earlier revocation keeps its time."""
    await seed(store)
    with pytest.raises(StoreError, match="not in the book"):
        await store.revoke(["eth"], [A_ACTIVE, A_OTHER], 2000, "breach")
    assert (await store.list_addresses(status=AddressStatus.REVOKED))[0].key == A_REVOKED
    result = await store.revoke(["eth"], [A_ACTIVE, A_REVOKED], 2000, "breach")
    assert (result.revoked, result.already_revoked) == (1, 1)
    revoked = {e.key: e.revoked_at for e in await store.list_addresses(status=AddressStatus.REVOKED)}
    assert revoked == {A_ACTIVE: 2000, A_REVOKED: 1000}


async def test_revoke_all_active(store: SqlStore) -> None:
    """`--all-active` retires every active address of the chain."""
    await seed(store)
    result = await store.revoke(["eth"], None, 3000, "breach")
    assert result.revoked == 1
    assert {e.status for e in await store.list_addresses()} == {AddressStatus.REVOKED}
    stats = await store.address_stats()
    assert stats == [{"chain": "eth", "type": "ethereum", "status": "revoked", "count": 2}]


async def test_registry_loads_and_reloads(store: SqlStore) -> None:
    """The registry mirrors the book and reloads only when it changed."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    assert registry.lookup("eth", A_ACTIVE) == (AddressStatus.ACTIVE, None)
    assert registry.lookup("eth", A_REVOKED) == (AddressStatus.REVOKED, 1000)
    assert registry.lookup("eth", A_OTHER) is None
    assert await registry.reload(store) is False
    await store.revoke(["eth"], [A_ACTIVE], 4000, "x")
    assert await registry.reload(store) is True
    assert registry.lookup("eth", A_ACTIVE) == (AddressStatus.REVOKED, 4000)


async def test_identity_is_recorded_and_enforced(store: SqlStore) -> None:
    """The first identity seen is kept; a different one is refused."""
    await store.check_identity("eth", "1")
    await store.check_identity("eth", "1")
    with pytest.raises(IdentityMismatch, match="recorded 1"):
        await store.check_identity("eth", "5")


async def test_commit_records_matches_alerts_and_cursor_once(store: SqlStore) -> None:
    """A block's matches, outbox messages and cursor commit together; a repeat adds nothing."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    t_in = Transfer(USDT, 5_000_000, "0xaa", 3, A_REVOKED, A_OTHER, "0xother", "0xrevoked")
    t_dep = Transfer(ETH, 10**18, "0xbb", None, A_ACTIVE, A_OTHER)
    t_out = Transfer(ETH, 7, "0xcc", None, A_OTHER, A_REVOKED)
    b = block(10, transfers=(t_in, t_dep, t_out))
    found = matches_for(b, registry)
    assert sorted(m.kind for m in found) == ["deposit", "revoked_incoming", "revoked_outgoing"]
    start = Cursor("live:eth", "eth", 9, "h9")
    await store.set_cursor(start)
    cursor = await store.commit_blocks(LIVE, start, POLICY, [BlockEffects(b, found)], tip_height=10)
    assert cursor.ref == BlockRef(10, "h10")
    assert await store.get_cursor("live:eth") == cursor
    messages = await store.outbox.messages()
    assert sorted((m.kind, m.event) for m in messages) == [
        ("revoked_incoming", "detected"),
        ("revoked_outgoing", "detected"),
    ]
    body = loads(next(m.payload for m in messages if m.kind == "revoked_incoming"))
    assert body["amount"] == "5000000" and body["amount_decimal"] == "5"
    assert body["address"]["owner"] == f"cust-{A_REVOKED[0]}"
    assert body["asset"]["contract"] == USDT.contract
    assert body["confirmations"] == 1 and body["block"]["height"] == 10
    # the stale cursor is refused, nothing written twice
    with pytest.raises(LeaseLost):
        await store.commit_blocks(LIVE, start, POLICY, [BlockEffects(b, found)], tip_height=10)
    assert len(await store.outbox.messages()) == 2
    assert len(await store.matches(LIVE)) == 3


async def test_confirmation_and_deposit_finality(store: SqlStore) -> None:
    """At the configured depth alerts get a `confirmed` message and deposits become final (announced once)."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    b10 = block(10, transfers=(Transfer(ETH, 1, "0x01", None, A_REVOKED), Transfer(ETH, 2, "0x02", None, A_ACTIVE)))
    cursor = Cursor("live:eth", "eth", 9, "h9")
    cursor = await store.commit_blocks(LIVE, cursor, POLICY, [BlockEffects(b10, matches_for(b10, registry))], 10)
    cursor = await store.commit_blocks(LIVE, cursor, POLICY, [BlockEffects(block(11))], 11)
    assert [m.event for m in await store.outbox.messages()] == ["detected"]
    cursor = await store.commit_blocks(LIVE, cursor, POLICY, [BlockEffects(block(12))], 12)
    events = sorted((m.kind, m.event) for m in await store.outbox.messages())
    assert events == [("deposit", "confirmed"), ("revoked_incoming", "confirmed"), ("revoked_incoming", "detected")]
    statuses = {r["kind"]: r["status"] for r in await store.matches(LIVE)}
    assert statuses == {"deposit": "confirmed", "revoked_incoming": "confirmed"}


async def test_rewind_retracts_and_redetects(store: SqlStore) -> None:
    """A reorg retracts the orphaned block's alerts under the same id; re-mining detects it again."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    t = Transfer(ETH, 1, "0x01", None, A_REVOKED)
    b10 = block(10, transfers=(t,))
    cursor = Cursor("live:eth", "eth", 9, "h9")
    cursor = await store.commit_blocks(LIVE, cursor, POLICY, [BlockEffects(b10, matches_for(b10, registry))], 10)
    assert await store.block_hash("live:eth", 10) == "h10"
    cursor = await store.rewind(LIVE, cursor, POLICY, BlockRef(9, "h9"))
    assert cursor.ref == BlockRef(9, "h9")
    assert await store.block_hash("live:eth", 10) is None
    b10b = Block(10, "h10b", "h9", 5000, ())
    b11b = Block(11, "h11b", "h10b", 5001, (t,))
    cursor = await store.commit_blocks(
        LIVE, cursor, POLICY, [BlockEffects(b10b), BlockEffects(b11b, matches_for(b11b, registry))], 11
    )
    messages = sorted(await store.outbox.messages(), key=lambda m: m.rev)
    assert [(m.rev, m.event) for m in messages] == [(1, "detected"), (2, "retracted"), (3, "detected")]
    assert len({m.alert_id for m in messages}) == 1
    assert loads(messages[1].payload)["kind"] == "retracted"
    assert loads(messages[2].payload)["block"]["hash"] == "h11b"


async def test_mempool_then_mined_then_dropped(store: SqlStore) -> None:
    """An unconfirmed sighting alerts at once, is updated when mined; a dropped one is retracted."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    from depositwatch.matcher import match_transfers

    mined = Transfer(ETH, 1, "0x01", None, A_REVOKED)
    dropped = Transfer(ETH, 2, "0x02", None, A_REVOKED)
    pending = match_transfers("eth", [mined, dropped], registry.book("eth"), 5000, None)
    assert await store.record_mempool(LIVE, POLICY, pending) == 2
    assert await store.record_mempool(LIVE, POLICY, pending) == 0
    assert len(await store.mempool_match_ids(LIVE, "eth")) == 2
    b = block(10, transfers=(mined,))
    cursor = Cursor("live:eth", "eth", 9, "h9")
    await store.commit_blocks(LIVE, cursor, POLICY, [BlockEffects(b, matches_for(b, registry))], 10)
    gone = await store.mempool_match_ids(LIVE, "eth")
    assert len(gone) == 1
    assert await store.drop_mempool(LIVE, POLICY, gone) == 1
    events = sorted((m.alert_id == gone[0], m.event) for m in await store.outbox.messages())
    assert events == [(False, "detected"), (False, "mined"), (True, "detected"), (True, "retracted")]


async def test_pending_token_sighting_racing_its_block_alerts_once(store: SqlStore) -> None:
    """A pending token transfer recorded while its block commits, round after round on concurrent
    connections: whichever commits second sees the other, so each transfer is one alert (the pending
    one taking the `mined` update, or the block's alone), never two under two ids."""
    import asyncio

    from depositwatch.matcher import match_transfers
    from depositwatch.models import pending_token_id

    await seed(store)
    registry = await AddressRegistry.load(store)
    cursor = Cursor("live:eth", "eth", 9, "h9")
    for height in range(10, 40):
        txid = f"0x{height:064x}"
        pending = match_transfers("eth", [Transfer(USDT, 5, txid, None, A_REVOKED)], registry.book("eth"), 5000, None)
        pending = [
            dataclasses.replace(m, id=pending_token_id("eth", m.kind, txid, USDT.contract or "")) for m in pending
        ]
        b = block(height, transfers=(Transfer(USDT, 5, txid, 3, A_REVOKED),))
        committed, _ = await asyncio.gather(
            store.commit_blocks(LIVE, cursor, POLICY, [BlockEffects(b, matches_for(b, registry))], height),
            store.record_mempool(LIVE, POLICY, pending),
        )
        cursor = committed
        ids = {m.alert_id for m in await store.outbox.messages(limit=10_000) if loads(m.payload)["txid"] == txid}
        assert len(ids) == 1, (height, ids)
    rows = await store.matches(LIVE)
    assert len(rows) == 30 and {r["status"] for r in rows} <= {"seen", "confirmed"}


async def test_replay_scope_is_separate_and_quiet(store: SqlStore) -> None:
    """A replay records its own matches; it alerts only when asked, and never re-sends a live alert."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    b = block(10, transfers=(Transfer(ETH, 1, "0x01", None, A_REVOKED),))
    found = matches_for(b, registry)
    quiet = Scope.replay("r1", send_alerts=False)
    await store.commit_blocks(quiet, Cursor("replay:r1", "eth", 9, "h9"), POLICY, [BlockEffects(b, found)], 100)
    assert await store.outbox.messages() == []
    assert len(await store.matches(quiet)) == 1 and await store.matches(LIVE) == []
    loud = Scope.replay("r2", send_alerts=True)
    await store.commit_blocks(loud, Cursor("replay:r2", "eth", 9, "h9"), POLICY, [BlockEffects(b, found)], 100)
    assert [(m.event, loads(m.payload)["mode"]) for m in await store.outbox.messages()] == [("detected", "replay")]
    await store.commit_blocks(LIVE, Cursor("live:eth", "eth", 9, "h9"), POLICY, [BlockEffects(b, found)], 100)
    loud3 = Scope.replay("r3", send_alerts=True)
    await store.commit_blocks(loud3, Cursor("replay:r3", "eth", 9, "h9"), POLICY, [BlockEffects(b, found)], 100)
    assert len([m for m in await store.outbox.messages() if m.event == "detected"]) == 2  # replay + live, not r3
    await store.delete_scope(quiet)
    assert await store.matches(quiet) == []


async def test_outbox_delivery_order_retry_dead_and_redeliver(store: SqlStore) -> None:
    """Deliveries are planned per sink, in order per address; failures retry then die; dead ones come back."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    b = block(10, transfers=(Transfer(ETH, 1, "0x01", None, A_REVOKED), Transfer(ETH, 2, "0x02", None, A_REVOKED)))
    await store.commit_blocks(
        LIVE, Cursor("live:eth", "eth", 9, "h9"), POLICY, [BlockEffects(b, matches_for(b, registry))], 10
    )
    new = await store.outbox.unplanned(10)
    assert len(new) == 2
    await store.outbox.plan({m.seq: ["hook", "slack"] for m in new}, now=100.0)
    assert await store.outbox.unplanned(10) == []
    first, second = sorted(new, key=lambda m: m.seq)
    due = await store.outbox.due("hook", 100.0, 10)
    assert [m.seq for m in due] == [first.seq]  # same address: one at a time, in order
    await store.outbox.failed(first.seq, "hook", "HTTP 500", next_attempt_at=200.0)
    assert await store.outbox.due("hook", 150.0, 10) == []
    await store.outbox.delivered(first.seq, "hook", 201.0)
    assert [m.seq for m in await store.outbox.due("hook", 201.0, 10)] == [second.seq]
    await store.outbox.failed(second.seq, "hook", "HTTP 410", next_attempt_at=None)
    assert (await store.outbox.counts())["pending"] == 2  # slack still pending for both
    for m in new:
        await store.outbox.delivered(m.seq, "slack", 202.0)
    counts = await store.outbox.counts()
    assert (counts["delivered"], counts["dead"]) == (1, 1)
    assert [m.seq for m in await store.outbox.messages(status="dead")] == [second.seq]
    assert await store.outbox.redeliver(None, 300.0) == 1
    assert [m.seq for m in await store.outbox.due("hook", 300.0, 10)] == [second.seq]
    deliveries = {d.sink: d for d in await store.outbox.deliveries(second.seq)}
    assert deliveries["hook"].attempts == 0 and deliveries["slack"].status == "delivered"


async def test_unrouted_and_test_alerts(store: SqlStore) -> None:
    """A message no sink wants is marked unrouted; a test alert goes to its one sink."""
    await seed(store)
    registry = await AddressRegistry.load(store)
    b = block(10, transfers=(Transfer(ETH, 1, "0x01", None, A_REVOKED),))
    await store.commit_blocks(
        LIVE, Cursor("live:eth", "eth", 9, "h9"), POLICY, [BlockEffects(b, matches_for(b, registry))], 10
    )
    [message] = await store.outbox.unplanned(10)
    await store.outbox.plan({message.seq: []}, now=1.0)
    assert (await store.outbox.counts())["unrouted"] == 1
    test = await store.outbox.enqueue_test_alert({"severity": "info", "chain": "eth"}, "hook")
    assert loads(test.payload)["test"] is True
    assert [m.seq for m in await store.outbox.due("hook", 10**10, 10)] == [test.seq]


async def test_newer_schema_is_refused(store_url: str) -> None:
    """A store migrated by a newer program is refused, even when asked to migrate."""
    store = await open_store(store_url, migrate=True)
    async with store.db.transaction() as conn:
        await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)")
    await store.close()
    with pytest.raises(SchemaError, match="newer than this program"):
        await open_store(store_url, migrate=True)


async def test_batch_commit_of_many_blocks_keeps_order_and_revisions(store: SqlStore) -> None:
    """One commit of many blocks: more matches than one `IN` list holds, a match both detected and
    confirmed in the same commit (revisions 1 then 2, in that order), a match listed twice (recorded
    once), an output created and spent inside the batch; the same result as block by block."""
    from depositwatch.models import WatchedOutput

    await seed(store)
    registry = await AddressRegistry.load(store)
    blocks = [
        block(
            10 + i,
            transfers=tuple(Transfer(ETH, i * 1000 + j, f"0x{i:03x}{j:03x}", None, A_REVOKED) for j in range(60)),
        )
        for i in range(12)
    ]
    effects = [BlockEffects(b, matches_for(b, registry)) for b in blocks]
    assert sum(len(e.matches) for e in effects) == 720  # over the 500 keys of one lookup
    first = effects[0].matches[0]
    effects[0] = BlockEffects(
        blocks[0],
        [*effects[0].matches, first],
        new_outputs=[WatchedOutput("aa" * 32, 0, b"\x00\x14" + b"\x22" * 20, 5, 10)],
        spent_outputs=[("aa" * 32, 0, "bb" * 32)],
    )
    cursor = Cursor("live:eth", "eth", 9, "h9")
    # the tip makes the first 10 blocks final inside this very commit
    await store.commit_blocks(LIVE, cursor, POLICY, effects, tip_height=blocks[-1].height)
    rows = await store.matches(LIVE)
    assert len(rows) == 720
    assert {r["status"] for r in rows if r["block_height"] <= 19} == {"confirmed"}
    assert {r["status"] for r in rows if r["block_height"] > 19} == {"seen"}
    messages = await store.outbox.messages(limit=10_000)
    by_id: dict[str, list[tuple[int, str]]] = {}
    for m in sorted(messages, key=lambda m: m.seq):
        by_id.setdefault(m.alert_id, []).append((m.rev, m.event))
    assert len(by_id) == 720
    assert by_id[first.id] == [(1, "detected"), (2, "confirmed")]
    final = {r["id"] for r in rows if r["status"] == "confirmed"}
    assert all(by_id[i] == [(1, "detected"), (2, "confirmed")] for i in final)
    assert all(v == [(1, "detected")] for i, v in by_id.items() if i not in final)
    confirmed = [m for m in messages if m.event == "confirmed"]
    assert {loads(m.payload)["confirmations"] for m in confirmed} >= {POLICY.confirmations, 12}
    # all detected messages precede the confirmations written after them
    assert max(m.seq for m in messages if m.event == "detected") < min(m.seq for m in confirmed)
    assert await store.watched_outputs("eth") == []  # created and spent within the batch
