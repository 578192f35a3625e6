"""The Follower over an in-memory chain: resume, reorgs, depth limit, replay ranges, outages."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from depositwatch.follower import Follower, FollowerSettings, ReorgTooDeep
from depositwatch.models import AddressStatus, Asset, Block, BlockRef, Transfer
from depositwatch.registry import AddressRegistry
from depositwatch.store import ChainPolicy, Cursor, Scope, SqlStore
from depositwatch.store.base import RegistryRow, StoreError
from depositwatch.testing import MemoryChain
from tests.util import eventually

ETH = Asset("ETH", 18)
REVOKED = bytes(range(20))
ACTIVE = bytes(range(1, 21))
POLICY = ChainPolicy("mem", confirmations=3)


def registry() -> AddressRegistry:
    return AddressRegistry.from_rows(
        [RegistryRow("mem", REVOKED, AddressStatus.REVOKED, 0), RegistryRow("mem", ACTIVE, AddressStatus.ACTIVE, None)]
    )


def follower(chain: MemoryChain, store: SqlStore, scope: Scope | None = None, **settings: Any) -> Follower:
    """A follower of the memory chain: live, or with `scope` a replay under the scope's own cursor."""
    return Follower(
        source=chain,
        store=store,
        registry=registry(),
        policy=POLICY,
        scope=scope or Scope.live(),
        cursor_name=scope.name if scope else "live:mem",
        settings=FollowerSettings(batch_blocks=settings.pop("batch", 4), poll_interval=0.01, **settings),
    )


def pay(txid: str, key: bytes = REVOKED) -> tuple[Transfer, ...]:
    return (Transfer(ETH, 1, txid, None, key),)


async def drain(f: Follower) -> None:
    while await f.step():
        pass


def mined(txids: list[str | None]) -> MemoryChain:
    """A memory chain of one block a txid, each paying the revoked address (None: an empty block)."""
    chain = MemoryChain()
    for txid in txids:
        if txid is None:
            chain.mine()
        else:
            chain.mine(pay(txid))
    return chain


async def caught_up(chain: MemoryChain, store: SqlStore, **settings: Any) -> Follower:
    """A follower from height 1, started and stepped to the chain's tip."""
    f = follower(chain, store, start_height=1, **settings)
    await f.start()
    await drain(f)
    return f


async def test_follows_from_start_height_and_resumes(store: SqlStore) -> None:
    """A restarted follower continues from its stored cursor with no gap and no repeat."""
    chain = mined([f"0x{i:02x}" for i in range(10)])
    first = await caught_up(chain, store)
    assert first.cursor is not None and first.cursor.height == 10
    for i in range(10, 25):
        chain.mine(pay(f"0x{i:02x}"))
    await caught_up(chain, store)
    matches = await store.matches(Scope.live())
    assert sorted(int(m["txid"], 16) for m in matches) == list(range(25))
    assert len({m["id"] for m in matches}) == 25


async def test_blocks_below_the_reorg_window_are_forgotten_across_restarts(store: SqlStore) -> None:
    """Each commit forgets the block hashes that fell out of the reorg window from the previous commit's
    bound up; a follower restarted with a smaller window (or after another instance) first forgets
    everything below its own, so no block is remembered forever."""
    chain = mined([f"0x{i:02x}" for i in range(60)])
    wide = follower(chain, store, start_height=1)
    wide.policy = ChainPolicy("mem", confirmations=3, keep_blocks=30)
    await wide.start()
    await drain(wide)

    async def remembered() -> list[int]:
        return [h for h in range(80) if await store.block_hash("live:mem", h) is not None]

    assert await remembered() == list(range(30, 61))
    for i in range(60, 70):
        chain.mine(pay(f"0x{i:02x}"))
    narrow = follower(chain, store, start_height=1)
    narrow.policy = ChainPolicy("mem", confirmations=3, keep_blocks=8)
    await narrow.start()
    assert await remembered() == list(range(52, 61))
    await drain(narrow)
    assert await remembered() == list(range(62, 71))


async def test_reorg_retracts_orphans_and_follows_new_branch(store: SqlStore) -> None:
    """A reorg rewinds to the fork point, retracts what the orphaned blocks matched, applies the new branch."""
    chain = mined([f"0xa{i}" for i in range(6)])
    f = await caught_up(chain, store)
    chain.reorg(3)
    chain.mine(pay("0xa3"), salt="b")  # the same transfer re-mined on the new branch
    for i in range(3):
        chain.mine(pay(f"0xb{i}"), salt="b")
    await drain(f)
    await drain(f)
    assert f.cursor is not None and f.cursor.ref == chain.blocks[-1].ref
    live = {m["txid"]: m["status"] for m in await store.matches(Scope.live())}
    assert live["0xa4"] == "retracted" and live["0xa5"] == "retracted"
    assert live["0xa3"] in {"seen", "confirmed"} and live["0xb2"] == "seen"
    events = [
        (m.event)
        for m in await store.outbox.messages()
        if m.alert_id == next(x["id"] for x in await store.matches(Scope.live()) if x["txid"] == "0xa4")
    ]
    assert sorted(events) == ["detected", "retracted"]


async def test_same_height_reorg_is_seen(store: SqlStore) -> None:
    """A competing block at the cursor's own height is detected without waiting for a longer chain."""
    chain = mined([f"0x{i}" for i in range(3)])
    f = await caught_up(chain, store)
    chain.reorg(1)
    chain.mine(salt="other")
    await f.step()  # detects, rewinds
    await drain(f)
    assert f.cursor is not None and f.cursor.ref == chain.blocks[-1].ref
    status = {m["txid"]: m["status"] for m in await store.matches(Scope.live())}
    assert status["0x2"] == "retracted"


async def test_reorg_deeper_than_limit_stops(store: SqlStore) -> None:
    """Beyond reorg_depth the follower refuses to guess."""
    chain = mined([None] * 10)
    f = await caught_up(chain, store, reorg_depth=3)
    chain.reorg(6)
    for _ in range(7):
        chain.mine(salt="deep")
    with pytest.raises(ReorgTooDeep, match="reorg_depth=3"):
        await drain(f)


async def test_random_reorgs_end_consistent(store: SqlStore) -> None:
    """After any sequence of mining and reorgs, the live matches equal exactly those of the final chain."""
    rng = random.Random(7)
    chain = MemoryChain()
    f = follower(chain, store, start_height=1, batch=3)
    chain.mine()
    await f.start()
    n = 0
    for _ in range(60):
        if rng.random() < 0.2 and len(chain.blocks) > 4:
            chain.reorg(rng.randint(1, 3))
        for _ in range(rng.randint(1, 3)):
            n += 1
            chain.mine(pay(f"0x{n:04x}", rng.choice([REVOKED, ACTIVE])), salt=str(n))
        if rng.random() < 0.6:
            await drain(f)
    await drain(f)
    await drain(f)
    on_chain = {t.txid for b in chain.blocks for t in b.transfers}
    live = {m["txid"] for m in await store.matches(Scope.live()) if m["status"] != "retracted"}
    assert live == on_chain


async def test_replay_range_stops_at_end(store: SqlStore) -> None:
    """A replay processes exactly its range, in its own scope, and is done."""
    chain = mined([f"0x{i:02x}" for i in range(20)])
    scope = Scope.replay("r", send_alerts=False)
    f = follower(chain, store, scope, batch=7, start_height=5, stop_height=12)
    await f.run()
    assert f.done
    heights = sorted(m["block_height"] for m in await store.matches(scope))
    assert heights == list(range(5, 13))
    assert await store.outbox.messages() == []


class Timeline(MemoryChain):
    """A memory chain that notes when each tip and fetch call starts and ends (each takes a loop turn)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def tip(self) -> BlockRef:
        self.events.append("tip")
        await asyncio.sleep(0)
        ref = await super().tip()
        self.events.append("tip done")
        return ref

    async def fetch(self, start: int, stop: int) -> list[Block]:
        self.events.append(f"fetch {start}")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        blocks = await super().fetch(start, stop)
        self.events.append("fetch done")
        return blocks


def replay_follower(store: SqlStore, run: str) -> tuple[Timeline, Follower, Scope]:
    """A chain of 20 paid blocks and a bounded follower (a replay) of its blocks 3 to 14, four a batch."""
    chain = Timeline()
    for i in range(20):
        chain.mine(pay(f"0x{i:02x}"))
    scope = Scope.replay(run, send_alerts=False)
    return chain, follower(chain, store, scope, start_height=3, stop_height=14), scope


async def test_a_replay_asks_the_next_tip_while_a_batch_is_read(store: SqlStore) -> None:
    """A bounded run asks the node's tip for its next step while this step's blocks are read, one tip a
    step as before, and none after its last batch; its matches are the range's, as always."""
    chain, f, scope = replay_follower(store, "t")
    await f.start()
    chain.events.clear()
    await f.run()
    assert f.done
    assert f._tip_ahead is None
    fetches = [e for e in chain.events if e.startswith("fetch ") and e != "fetch done"]
    assert fetches == ["fetch 3", "fetch 7", "fetch 11"]
    assert chain.events.count("tip") == 3  # the first step's, then one asked ahead for each later step
    # the tips of the second and third steps were asked as the first and second steps' reads began
    ends = [at for at, event in enumerate(chain.events) if event == "fetch done"]
    assert chain.events[: ends[0]].count("tip") == 2
    assert chain.events[ends[0] : ends[1]].count("tip") == 1
    last = chain.events.index("fetch 11")
    assert "tip" not in chain.events[last:]
    heights = sorted(m["block_height"] for m in await store.matches(scope))
    assert heights == list(range(3, 15))


async def test_a_replay_reads_its_next_batch_while_the_last_one_commits(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bounded run leaves a batch's commit under way while it reads the next batch; the commits are
    still one a batch, in order, each begun after the one before it ended, and the run ends committed."""
    chain, f, scope = replay_follower(store, "o")
    committing = store.commit_blocks

    async def commit_blocks(*args: Any, **kwargs: Any) -> Cursor:
        chain.events.append("commit")
        moved = await committing(*args, **kwargs)
        chain.events.append(f"committed {moved.height}")
        return moved

    monkeypatch.setattr(store, "commit_blocks", commit_blocks)
    await f.start()
    chain.events.clear()
    await f.run()
    assert f.done
    assert f.cursor is not None and f.cursor.height == 14
    assert (await store.get_cursor("replay:o")) == f.cursor
    events = chain.events
    assert [e for e in events if e.startswith("committed")] == ["committed 6", "committed 10", "committed 14"]
    assert events.index("fetch 7") < events.index("committed 6")
    assert events.index("fetch 11") < events.index("committed 10")
    starts = [at for at, e in enumerate(events) if e == "commit"]
    assert starts[1] > events.index("committed 6") and starts[2] > events.index("committed 10")
    heights = sorted(m["block_height"] for m in await store.matches(scope))
    assert heights == list(range(3, 15))


async def test_a_failed_commit_under_way_ends_the_run_uncommitted(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that fails while the next batch is read is raised by the run; the cursor stays at the last
    batch committed, and the blocks after it are not committed."""
    _, f, scope = replay_follower(store, "e")
    committing = store.commit_blocks
    calls = 0

    async def commit_blocks(*args: Any, **kwargs: Any) -> Cursor:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreError("disk full")
        return await committing(*args, **kwargs)

    monkeypatch.setattr(store, "commit_blocks", commit_blocks)
    await f.start()
    with pytest.raises(StoreError, match="disk full"):
        await f.run()
    assert f.cursor is not None and f.cursor.height == 6
    stored = await store.get_cursor("replay:e")
    assert stored is not None and stored.height == 6
    assert sorted(m["block_height"] for m in await store.matches(scope)) == [3, 4, 5, 6]


async def test_a_live_follower_asks_the_tip_at_each_step(store: SqlStore) -> None:
    """Live following keeps asking the tip when a step begins: nothing is asked ahead."""
    chain = Timeline()
    for i in range(10):
        chain.mine(pay(f"0x{i:02x}"))
    f = follower(chain, store, start_height=1)
    await f.start()
    chain.events.clear()
    await drain(f)
    assert f._tip_ahead is None
    for at, event in enumerate(chain.events):
        if event.startswith("fetch ") and event != "fetch done":
            assert chain.events[at - 2 : at] == ["tip", "tip done"]


async def test_outage_is_retried_and_restored(store: SqlStore) -> None:
    """A node outage is retried with backoff; the follower catches up when it returns."""
    chain = MemoryChain()
    chain.mine()
    f = follower(chain, store, start_height=1)
    await f.start()
    task = asyncio.create_task(f.run())
    chain.down = True
    for i in range(5):
        chain.mine(pay(f"0x{i}"))
    await eventually(lambda: f.failures >= 1, 10, "the follower failing while the node is down")
    chain.down = False
    chain.new_head.set()
    await eventually(lambda: f.cursor is not None and f.cursor.height == 6, 10, "the follower at block 6")
    f.stop()
    await asyncio.wait_for(task, 5)
    assert f.cursor is not None and f.cursor.height == 6


@pytest.mark.parametrize("log_matches", [True, False])
async def test_a_log_line_per_match_unless_left_out(store: SqlStore, log_matches: bool) -> None:
    """The daemon logs every match it commits; replay, whose matches are its output, leaves the lines out."""
    from structlog.testing import capture_logs

    chain = mined([f"0x{i:02x}" for i in range(3)])
    with capture_logs() as logs:
        await caught_up(chain, store, log_matches=log_matches)
    lines = [e for e in logs if e["event"] == "match"]
    assert len(await store.matches(Scope.live())) == 3
    assert [e["txid"] for e in lines] == (["0x00", "0x01", "0x02"] if log_matches else [])
    assert all(e["kind"] == "revoked_incoming" for e in lines)
