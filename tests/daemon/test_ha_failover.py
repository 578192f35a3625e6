"""Two daemons on one PostgreSQL schema and anvil: leadership follows progress.

The leader is frozen with SIGSTOP mid-stream. It keeps its database session (and so, before leases,
its lock), but it stops renewing its leases: the standby takes the chain and the dispatcher over within
`lease_ttl` plus one retry interval. Then the leader is woken with SIGCONT: it finds its epoch gone,
commits nothing and sends nothing more, and stands by. Each instance delivers to a receiver of its
own, so every request is attributed to the instance that sent it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from depositwatch.devnet import Anvil
from tests.daemon.test_daemon import (
    CHAIN_ID,
    REVOKED,
    Daemon,
    Setup,
    book,
    detected,
    keys_consistent,
    pay,
    reap,
    stop,
    wait_for,
)
from tests.receivers import Receiver
from tests.util import eventually

TTL = 3.0
RETRY = min(1.0, TTL / 4)  # a standby's attempts (Leadership.retry_every)
SLACK = 2.0  # scheduling on a shared two-core machine: process wake-ups, a block in flight


@pytest.fixture
async def two(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Setup, Receiver]]:
    """A setup whose receiver serves the first instance, and a second receiver for the second."""
    async with Anvil(chain_id=CHAIN_ID) as node, Receiver() as first, Receiver() as second:
        await book(pg_url, tmp_path)
        setup = Setup(tmp_path, node, pg_url, first, [])
        try:
            yield setup, second
        finally:
            reap(setup.started)


def ha_config(setup: Setup, receiver: Receiver) -> Path:
    """The daemon's config delivering to `receiver` (same sink name: one delivery row per message)."""
    path = setup.config(sinks=Setup.sink(receiver.url))
    path.write_text(path.read_text() + f"[ha]\nlease_ttl = {TTL}\n")
    return path


def events(daemon: Daemon, event: str) -> list[dict[str, object]]:
    """The daemon's JSON log records of one event."""
    found = []
    for line in daemon.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def acquired(daemon: Daemon, lease: str) -> list[float]:
    """When (unix time) the daemon took `lease`."""
    stamps = []
    for record in events(daemon, "lease acquired"):
        if record.get("lease") == lease:
            stamp = str(record["timestamp"]).replace("Z", "+00:00")
            stamps.append(_unix(stamp))
    return stamps


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_a_frozen_leader_is_replaced_within_the_bound_and_commits_nothing_after_waking(
    two: tuple[Setup, Receiver], pg_url: str
) -> None:
    """SIGSTOP the leader mid-stream: the standby takes both leases within lease_ttl + one retry; after
    SIGCONT the old leader's commit is refused, it sends nothing, and the alert set is exact."""
    setup, second_rx = two
    first_rx = setup.receiver
    leader = await setup.start(ha_config(setup, first_rx))
    await wait_for(lambda: bool(acquired(leader, "chain:eth")) and bool(acquired(leader, "dispatcher")), what="leases")
    standby = await setup.start(ha_config(setup, second_rx))
    txids = await pay(setup.node, REVOKED, 3)
    await wait_for(lambda: len(set(detected(first_rx))) >= 3, what="alerts from the leader")
    assert not acquired(standby, "chain:eth") and not acquired(standby, "dispatcher")

    # Mid-stream: payments keep coming while the leader is frozen, thawed, and afterwards.
    streaming = asyncio.Event()
    streaming.set()

    async def stream() -> None:
        while streaming.is_set():
            txids.extend(await pay(setup.node, REVOKED, 1))
            await asyncio.sleep(0.2)

    payer = asyncio.create_task(stream())
    try:
        await wait_for(lambda: len(txids) >= 6, what="payments under way")
        leader.process.send_signal(signal.SIGSTOP)
        frozen_at = time.time()
        await wait_for(
            lambda: bool(acquired(standby, "chain:eth")) and bool(acquired(standby, "dispatcher")),
            timeout=TTL + 30,
            what="the standby's takeover",
        )
        took = max(acquired(standby, "chain:eth")[0], acquired(standby, "dispatcher")[0]) - frozen_at
        assert took <= TTL + RETRY + SLACK, f"takeover {took:.1f}s after the freeze, bound {TTL + RETRY:.1f}s"
        before_thaw = len(txids)
        await wait_for(
            lambda: len(set(detected(second_rx))) >= 1 and len(txids) >= before_thaw + 3,
            timeout=60,
            what="alerts from the new leader",
        )
        thawed_at = time.time()
        leader.process.send_signal(signal.SIGCONT)
        await wait_for(lambda: bool(events(leader, "lease lost to another instance")), timeout=30, what="loss")
        count = len(txids)
        await wait_for(lambda: len(txids) >= count + 4, timeout=60, what="payments after the thaw")
    finally:
        streaming.clear()
        await payer

    expected = set(txids)

    def alerted() -> set[str]:
        return {r.json()["txid"] for r in [*first_rx.accepted, *second_rx.accepted] if r.json()["event"] == "detected"}

    await wait_for(lambda: alerted() >= expected, timeout=60, what="every alert")
    assert alerted() == expected  # exact: nothing missing, nothing unexpected

    # The woken leader sent nothing: every request it made arrived before the thaw.
    late = [r for r in first_rx.requests if r.at >= thawed_at]
    assert late == [], [r.json()["id"] for r in late]
    # No id was delivered by both instances, apart from sends already on the wire at the freeze,
    # which the new leader repeats with the same key and body.
    by_first = {r.json()["id"] for r in first_rx.accepted}
    by_second = {r.json()["id"] for r in second_rx.accepted}
    in_flight_at_freeze = {r.json()["id"] for r in first_rx.requests if r.at >= frozen_at - 1.0}
    assert by_first & by_second <= in_flight_at_freeze
    merged = Receiver()
    merged.requests = [*first_rx.requests, *second_rx.requests]
    assert keys_consistent(merged)
    async with aiohttp.ClientSession() as client, client.get(f"{leader.http}/healthz") as resp:
        health = await resp.json()
    assert health["chains"]["eth"]["state"] == "standby", health

    # The store: the new leader holds both leases at epoch 2; no delivery of the frozen epoch was
    # recorded after the takeover, and every message is delivered.
    conn = await asyncpg.connect(pg_url)
    try:
        leases = {r["name"]: r for r in await conn.fetch("SELECT name, holder, epoch FROM leases")}
        assert leases["chain:eth"]["epoch"] == 2 and leases["dispatcher"]["epoch"] == 2
        assert leases["chain:eth"]["holder"] == leases["dispatcher"]["holder"]
        await wait_for_settled(conn)
    finally:
        await conn.close()
    assert await stop(standby) == 0
    assert await stop(leader) == 0


async def wait_for_settled(conn: asyncpg.Connection, timeout: float = 30.0) -> None:
    query = "SELECT count(*) FROM outbox WHERE status NOT IN ('delivered', 'unrouted')"

    async def settled() -> bool:
        return bool(await conn.fetchval(query) == 0)

    await eventually(settled, timeout, "every message delivered", every=0.1)
