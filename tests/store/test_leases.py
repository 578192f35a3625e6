"""The lease table, on both backends: acquire, renew, expiry, takeover with a new epoch, and fencing:
a write made under a stale epoch (chain state or outbox delivery state) raises LeaseLost and writes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
import pytest

from depositwatch.config import ConfigError, parse_config
from depositwatch.leadership import SESSION_LOST, AlreadyRunning, FencedOutbox, Leadership, TermState, take_dispatcher
from depositwatch.models import BlockRef, Match, MatchKind, Transfer
from depositwatch.store import Cursor, Fence, LeaseLost, Scope, SqlStore, open_store
from depositwatch.store.drivers import _PgConn
from depositwatch.store.leases import MY_PG_SESSION, check_fence
from tests.receivers import ETH, AlertMaker, eventually, revoked_key

TTL = 30.0  # long enough never to expire during a test that does not wait for it
SHORT = 0.4


async def test_a_free_lease_is_taken_at_epoch_one_and_kept_by_its_holder(store: SqlStore) -> None:
    """The first holder gets epoch 1; another holder is refused while it is live; the holder itself
    taking it again keeps the epoch (a restart of the same loop is no takeover)."""
    first = await store.leases.acquire("chain:eth", "a", TTL)
    assert first == Fence("chain:eth", "a", 1)
    assert await store.leases.acquire("chain:eth", "b", TTL) is None
    assert await store.leases.acquire("chain:eth", "a", TTL) == first
    assert await store.leases.acquire("dispatcher", "b", TTL) == Fence("dispatcher", "b", 1)
    rows = {row.name: row for row in await store.leases.rows()}
    assert rows["chain:eth"].holder == "a" and 0 < rows["chain:eth"].expires_in <= TTL


async def test_renewal_extends_and_expiry_lets_another_take_over_with_a_new_epoch(store: SqlStore) -> None:
    """Renewed, the lease stays; not renewed, it expires (database time) and the standby's takeover
    bumps the epoch; the old holder can no longer renew and no longer holds it."""
    old = await store.leases.acquire("chain:eth", "a", SHORT)
    assert old is not None
    assert await store.leases.renew(old, TTL)
    before = {row.name: row for row in await store.leases.rows()}["chain:eth"].expires_in
    assert before > SHORT
    assert await store.leases.acquire("chain:eth", "b", SHORT) is None
    assert await store.leases.renew(old, SHORT)  # the holder shortens it again; then stops renewing

    async def taken() -> bool:
        return await store.leases.acquire("chain:eth", "b", TTL) is not None

    await eventually(taken, timeout=10)
    new = Fence("chain:eth", "b", 2)
    assert await store.leases.holds(new)
    assert not await store.leases.holds(old)
    assert not await store.leases.renew(old, TTL)
    assert not await store.leases.release(old)  # giving back what is no longer yours changes nothing
    assert await store.leases.holds(new)


async def test_a_released_lease_is_taken_at_once(store: SqlStore) -> None:
    """A clean stop gives the lease back: the standby takes it without waiting for the expiry."""
    old = await store.leases.acquire("dispatcher", "a", TTL)
    assert old is not None
    assert await store.leases.release(old)
    assert await store.leases.acquire("dispatcher", "b", TTL) == Fence("dispatcher", "b", 2)


async def test_commits_under_a_stale_epoch_write_nothing(store: SqlStore) -> None:
    """Block commits, rewinds and mempool writes under a lost lease raise LeaseLost and change nothing."""
    old = await store.leases.acquire("chain:eth", "a", TTL)
    assert old is not None
    maker = AlertMaker(store)
    maker.scope = Scope.live().fenced(old)
    first = await maker.block([(1, 10)])
    assert len(first) == 1
    assert await store.leases.release(old)
    new = await store.leases.acquire("chain:eth", "b", TTL)
    assert new is not None and new.epoch == old.epoch + 1

    cursor, outbox, matches = maker.cursor, await store.outbox.messages(limit=1000), await store.matches(Scope.live())
    with pytest.raises(LeaseLost, match="chain:eth"):
        await maker.block([(2, 20)])
    with pytest.raises(LeaseLost):
        await store.rewind(maker.scope, cursor, maker.policy, BlockRef(0, "h0"))
    key = revoked_key(3)
    transfer = Transfer(ETH, 5, "0x" + "ab" * 32, None, key, None, "0x" + "99" * 20, "0x" + key.hex())
    mempool = Match("eth", MatchKind.REVOKED_INCOMING, key, transfer, None, None)
    with pytest.raises(LeaseLost):
        await store.record_mempool(maker.scope, maker.policy, [mempool])
    with pytest.raises(LeaseLost):
        await store.drop_mempool(maker.scope, maker.policy, [matches[0]["id"]])
    assert await store.get_cursor("live:eth") == cursor
    assert await store.outbox.messages(limit=1000) == outbox
    assert await store.matches(Scope.live()) == matches

    # The new holder writes under its own epoch.
    maker.scope = Scope.live().fenced(new)
    assert len(await maker.block([(2, 20)])) == 1


async def test_delivery_state_changes_under_a_stale_epoch_write_nothing(store: SqlStore) -> None:
    """Planning, claiming and recording outcomes need the current epoch; an outcome also needs the
    claim to have been made under that epoch."""
    maker = AlertMaker(store)
    await maker.block([(1, 10), (2, 20)])
    old = await store.leases.acquire("dispatcher", "a", TTL)
    assert old is not None
    messages = await store.outbox.unplanned(10)
    await store.outbox.plan({m.seq: ["hook"] for m in messages}, time.time(), fence=old)
    seqs = [m.seq for m in messages]
    await store.outbox.claim(seqs, "hook", fence=old)

    assert await store.leases.release(old)
    new = await store.leases.acquire("dispatcher", "b", TTL)
    assert new is not None
    before = [await store.outbox.deliveries(seq) for seq in seqs]
    with pytest.raises(LeaseLost):
        await store.outbox.claim(seqs, "hook", fence=old)
    with pytest.raises(LeaseLost):
        await store.outbox.delivered_many([(seqs[0], "hook")], time.time(), fence=old)
    with pytest.raises(LeaseLost):
        await store.outbox.delivered(seqs[0], "hook", time.time(), fence=old)
    with pytest.raises(LeaseLost):
        await store.outbox.failed(seqs[0], "hook", "boom", time.time() + 5, fence=old)
    with pytest.raises(LeaseLost):
        await store.outbox.failed_many(seqs, "hook", "boom", None, fence=old)
    assert [await store.outbox.deliveries(seq) for seq in seqs] == before

    # Under the new epoch, an outcome for a delivery claimed under the old one is not recorded ...
    await store.outbox.delivered_many([(seqs[0], "hook")], time.time(), fence=new)
    assert [await store.outbox.deliveries(seq) for seq in seqs] == before
    # ... until the new holder claims it itself.
    await store.outbox.claim(seqs, "hook", fence=new)
    await store.outbox.delivered_many([(seqs[0], "hook")], time.time(), fence=new)
    assert (await store.outbox.deliveries(seqs[0]))[0].status == "delivered"
    assert (await store.outbox.deliveries(seqs[1]))[0].status == "pending"


async def test_planning_under_a_stale_epoch_plans_nothing(store: SqlStore) -> None:
    maker = AlertMaker(store)
    await maker.block([(1, 10)])
    old = await store.leases.acquire("dispatcher", "a", TTL)
    assert old is not None and await store.leases.release(old)
    assert await store.leases.acquire("dispatcher", "b", TTL) is not None
    messages = await store.outbox.unplanned(10)
    with pytest.raises(LeaseLost):
        await store.outbox.plan({m.seq: ["hook"] for m in messages}, time.time(), fence=old)
    assert await store.outbox.unplanned(10) == messages


async def test_a_takeover_never_lands_between_a_fence_check_and_its_commit(pg_store: SqlStore) -> None:
    """The fence check and the commit are one transaction, the lease row share-locked: a takeover of the
    expired lease ends that transaction rather than slipping in before its commit, so its writes never
    land under the new epoch."""
    store = pg_store  # PostgreSQL only: SQLite write transactions are exclusive, no takeover to order
    old = await store.leases.acquire("chain:eth", "a", SHORT)
    assert old is not None
    await store.set_cursor(Cursor("live:eth", "eth", 5, "h5"))
    taken: list[Fence | None] = []

    async def commit_across_a_takeover() -> None:
        async with store.db.transaction() as conn:
            await check_fence(conn, store.dialect, replace(old, ttl=TTL))  # a long idle limit
            await conn.execute("UPDATE cursors SET height = 6 WHERE name = 'live:eth'")
            await asyncio.sleep(SHORT * 2)  # expired meanwhile
            taken.append(await asyncio.wait_for(store.leases.acquire("chain:eth", "b", TTL), 30))

    with pytest.raises(SESSION_LOST):
        await commit_across_a_takeover()
    assert taken == [Fence("chain:eth", "b", 2)]
    cursor = await store.get_cursor("live:eth")
    assert cursor is not None and cursor.height == 5


async def test_a_transaction_whose_session_the_server_ended_fails_as_session_lost(pg_store: SqlStore) -> None:
    """A takeover ends the old holder's session. Depending on when the server's farewell reaches the
    client relative to the commit, asyncpg raises a connection error, an InterfaceError, or an
    InternalClientError ("cannot switch to state ..."): the driver reports all of them as a lost session,
    which the follower treats as "nothing committed, check the lease again", and the pool recovers."""
    killer = await asyncpg.connect(pg_store.db.url)  # type: ignore[union-attr]

    async def ended_before_its_commit(delay: float) -> None:
        async with pg_store.db.transaction() as conn:
            await conn.execute("UPDATE cursors SET height = 6 WHERE name = 'live:eth'")
            await killer.execute("SELECT pg_terminate_backend($1)", conn.raw.get_server_pid())
            await asyncio.sleep(delay)

    try:
        for delay in [0.0, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005, 0.05] * 3:
            with pytest.raises(SESSION_LOST):
                await ended_before_its_commit(delay)
            async with pg_store.db.read() as conn:  # a fresh session from the pool
                assert await conn.fetchval("SELECT 1") == 1
    finally:
        await killer.close()


@asynccontextmanager
async def inside_the_fence(store: SqlStore) -> AsyncIterator[asyncpg.Connection]:
    """Holder "a" of chain:eth (ttl 1 s) on a connection of its own, in a transaction just past the fence
    check: where the tests stop it. The connection is ended on the way out."""
    old = await store.leases.acquire("chain:eth", "a", 1.0)
    assert old is not None
    frozen = await asyncpg.connect(store.db.url)
    try:
        transaction = frozen.transaction()
        await transaction.start()
        await check_fence(_PgConn(frozen), store.dialect, old)
        yield frozen
    finally:
        frozen.terminate()


def taken_by_b(store: SqlStore) -> Callable[[], Awaitable[bool]]:
    """Whether holder "b" takes chain:eth now (for `eventually`)."""

    async def taken() -> bool:
        return await store.leases.acquire("chain:eth", "b", TTL) is not None

    return taken


async def test_a_holder_frozen_inside_a_fenced_transaction_does_not_block_the_takeover(pg_store: SqlStore) -> None:
    """A holder stopped (SIGSTOP) between the fence check and its commit keeps the lease row locked; the
    server ends that transaction after `ttl` of idleness, so the takeover goes through and the frozen
    commit, when it comes, fails."""
    store = pg_store  # PostgreSQL only: SQLite runs one instance: no other process waits for its lock
    async with inside_the_fence(store) as frozen:  # ... and here the holder is stopped
        await eventually(taken_by_b(store), timeout=30)
        assert [(row.holder, row.epoch) for row in await store.leases.rows()] == [("b", 2)]
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):  # it wakes up: too late
            await frozen.execute("UPDATE cursors SET height = height + 1")


async def test_sqlite_takes_a_lease_at_once_when_exclusive(sqlite_store: SqlStore) -> None:
    """SQLite runs one instance (its lock file): a restart takes over its dead predecessor's lease."""
    assert await sqlite_store.leases.acquire("chain:eth", "a", TTL) is not None
    assert await sqlite_store.leases.acquire("chain:eth", "b", TTL) is None
    assert await sqlite_store.leases.acquire("chain:eth", "b", TTL, exclusive=True) == Fence("chain:eth", "b", 2)


async def test_postgres_takes_a_dead_holders_lease_without_waiting(pg_url: str, pg_store: SqlStore) -> None:
    """The holder's database session is in the row: once it is gone (the holder died), the lease is
    free at once; while it lives (a frozen holder keeps it), only the expiry frees it."""
    holder = await asyncpg.connect(pg_url)
    session = await holder.fetchval(MY_PG_SESSION)
    assert session
    assert await pg_store.leases.acquire("chain:eth", "a", TTL, session) is not None
    assert await pg_store.leases.acquire("chain:eth", "b", TTL) is None
    await holder.close()

    async def taken() -> bool:
        return await pg_store.leases.acquire("chain:eth", "b", TTL) is not None

    await eventually(taken, timeout=10)
    assert {row.name: row for row in await pg_store.leases.rows()}["chain:eth"].epoch == 2


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(sqlite_url, migrate=True)
    yield opened
    await opened.close()


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(pg_url, migrate=True)
    yield opened
    await opened.close()


async def test_a_loop_that_stops_turning_stops_renewing_and_loses_its_lease(store: SqlStore) -> None:
    """Leadership follows progress: while the guarded loop turns the lease is renewed past its TTL;
    once it stops, renewals stop, another instance takes over, and the holder learns it lost."""
    leader = Leadership(store.leases, SHORT, holder="a")
    standby = Leadership(store.leases, SHORT, holder="b")
    term = await leader.acquire("chain:eth")
    assert term is not None
    turned = time.monotonic()
    turning = True

    def progress() -> float:
        nonlocal turned
        if turning:
            turned = time.monotonic()
        return turned

    holding = asyncio.create_task(leader.hold(term, progress))
    try:
        deadline = time.monotonic() + SHORT * 4
        while time.monotonic() < deadline:  # several TTLs: only the renewals keep it
            assert await standby.acquire("chain:eth") is None
            await asyncio.sleep(SHORT / 4)
        turning = False

        async def taken() -> bool:
            return await standby.acquire("chain:eth") is not None

        await eventually(taken, timeout=10)
        await asyncio.wait_for(holding, 10)  # hold returns once the lease is lost
        assert term.state is TermState.LOST and not term.valid
    finally:
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)


async def test_the_dispatcher_outbox_sends_nothing_without_a_valid_term(store: SqlStore) -> None:
    """Claims (made right before each send) need the lease held in the store and not possibly expired
    on this process's clock: a process frozen after its last renewal must not send when it wakes."""
    maker = AlertMaker(store)
    await maker.block([(1, 10)])
    leadership = Leadership(store.leases, TTL, holder="a")
    term = await leadership.acquire("dispatcher")
    assert term is not None
    outbox = FencedOutbox(store.outbox)
    messages = await outbox.unplanned(10)
    with pytest.raises(LeaseLost):  # no term yet
        await outbox.plan({m.seq: ["hook"] for m in messages}, time.time())
    outbox.term = term
    await outbox.plan({m.seq: ["hook"] for m in messages}, time.time())
    seqs = [m.seq for m in messages]
    await outbox.claim(seqs, "hook")
    term.valid_until = time.monotonic() - 1  # as after a freeze longer than the TTL
    with pytest.raises(LeaseLost, match="may have expired"):
        await outbox.claim(seqs, "hook")


@pytest.mark.parametrize(("value", "ok"), [(1, True), (10.0, True), (600, True), (0.5, False), (601, False)])
def test_lease_ttl_is_bounded(value: float, ok: bool) -> None:
    """`[ha] lease_ttl` takes 1 to 600 seconds; anything else is refused naming the key."""
    data = {"ha": {"lease_ttl": value}}
    if ok:
        assert parse_config(data).ha.lease_ttl == value
    else:
        with pytest.raises(ConfigError, match=r"ha\.lease_ttl"):
            parse_config(data)


async def test_a_dispatcher_run_by_hand_takes_the_dispatcher_lease_or_refuses(pg_store: SqlStore) -> None:
    """`alerts deliver` shares the daemon's dispatcher lease: refused while the daemon delivers, and
    once it has the lease its dispatcher's writes are fenced by it."""
    daemon = Leadership(pg_store.leases, TTL, holder="daemon")
    term = await daemon.acquire("dispatcher")
    assert term is not None
    with pytest.raises(AlreadyRunning, match="delivers alerts"):
        await take_dispatcher(pg_store, ttl=TTL)
    await daemon.release(term)
    held = await take_dispatcher(pg_store, ttl=TTL)
    try:
        assert held.outbox.term is not None and held.outbox.term.fence.epoch == 2
        assert await pg_store.leases.holds(held.outbox.term.fence)
    finally:
        await held.release_all()
    assert await daemon.acquire("dispatcher") is not None  # given back: taken at once


async def test_a_holder_frozen_inside_a_busy_statement_is_ended_by_the_takeover(pg_store: SqlStore) -> None:
    """A holder frozen while the server is still busy with its fenced transaction (not idle: a statement
    under way, such as a pipelined insert waiting for the rest of its rows) keeps the lease row locked
    past any idle timeout; a standby taking over the expired lease ends that transaction."""
    store = pg_store  # PostgreSQL only: SQLite runs one instance: no other process waits for its lock
    async with inside_the_fence(store) as frozen:
        busy = asyncio.create_task(frozen.execute("SELECT pg_sleep(120)"))  # the server is busy with it
        await eventually(taken_by_b(store), timeout=30)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await busy
        assert [(row.holder, row.epoch) for row in await store.leases.rows()] == [("b", 2)]


async def test_instances_starting_together_get_one_lease_holder(store: SqlStore) -> None:
    """Many first attempts at once on a lease no row exists for yet: one holder, the others None."""
    got = await asyncio.gather(*(store.leases.acquire("chain:eth", f"h{i}", TTL) for i in range(8)))
    assert len([fence for fence in got if fence is not None]) == 1


async def test_a_takeover_ends_only_its_own_stores_transactions(pg_store: SqlStore) -> None:
    """Two deployments on one PostgreSQL server (here two schemas) whose instances share a holder name: a
    takeover of an expired lease in one ends that holder's fenced transactions there, never the other's."""
    from tests.conftest import PG_URL, _drop_schema, _pg_schema

    schema = await _pg_schema()
    sep = "&" if "?" in PG_URL else "?"
    other = await open_store(f"{PG_URL}{sep}search_path={schema}", migrate=True)
    try:
        theirs = await other.leases.acquire("chain:eth", "a", TTL)
        assert theirs is not None
        ours = await pg_store.leases.acquire("chain:eth", "a", SHORT)
        assert ours is not None
        async with other.db.transaction() as conn:
            await check_fence(conn, other.dialect, theirs)  # "a" at work in the other deployment
            await asyncio.sleep(SHORT * 2)  # our "a" has expired meanwhile
            assert await pg_store.leases.acquire("chain:eth", "b", TTL) == Fence("chain:eth", "b", 2)
            await conn.execute("UPDATE cursors SET height = height + 1")  # still alive
    finally:
        await other.close()
        await _drop_schema(schema)
