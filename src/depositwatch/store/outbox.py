"""Store operations of the alert outbox: planning deliveries per sink, due messages, outcomes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from depositwatch.jsonutil import dumps
from depositwatch.messages import Delivery, OutboxMessage
from depositwatch.store.base import Fence
from depositwatch.store.leases import check_fence
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn, Driver


def _claimed(fence: Fence | None) -> str:
    """The condition that a delivery was claimed under this fence's epoch (none when unfenced)."""
    return "" if fence is None else f" AND claim_epoch = {int(fence.epoch)}"


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        seq=row["seq"],
        alert_id=row["alert_id"],
        rev=row["rev"],
        event=row["event"],
        kind=row["kind"],
        severity=row["severity"],
        chain=row["chain"],
        order_key=row["order_key"],
        block_height=row["block_height"],
        status=row["status"],
        payload=row["payload"],
        created_at=row["created_at"],
    )


class Outbox:
    """The alert outbox: planning deliveries per sink, due messages, outcomes (`SqlStore.outbox`)."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def unplanned(self, limit: int) -> list[OutboxMessage]:
        """New messages that have no delivery rows yet, oldest first."""
        async with self.db.read() as conn:
            rows = await conn.fetch("SELECT * FROM outbox WHERE status = 'new' ORDER BY seq LIMIT $1", limit)
        return [_message(r) for r in rows]

    async def plan(self, routes: Mapping[int, Sequence[str]], now: float, *, fence: Fence | None = None) -> None:
        """Give each message a pending delivery for each sink that wants it (none: `unrouted`)."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            for seq, sinks in routes.items():
                order_key = await conn.fetchval("SELECT order_key FROM outbox WHERE seq = $1 AND status = 'new'", seq)
                if order_key is None:
                    continue  # planned already by another instance
                for sink in sinks:
                    await conn.execute(
                        "INSERT INTO deliveries (outbox_seq, sink, order_key, status, attempts, next_attempt_at)"
                        " VALUES ($1, $2, $3, 'pending', 0, $4) ON CONFLICT DO NOTHING",
                        seq,
                        sink,
                        order_key,
                        now,
                    )
                await conn.execute(
                    "UPDATE outbox SET status = $1 WHERE seq = $2", "pending" if sinks else "unrouted", seq
                )

    async def due(self, sink: str, now: float, limit: int) -> list[OutboxMessage]:
        """Messages this sink should try now: pending, due, and first in line for their address."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT o.* FROM deliveries d JOIN outbox o ON o.seq = d.outbox_seq"
                " WHERE d.sink = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2"
                " AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.sink = d.sink AND e.order_key = d.order_key"
                "   AND e.status = 'pending' AND e.outbox_seq < d.outbox_seq)"
                " ORDER BY d.outbox_seq LIMIT $3",
                sink,
                now,
                limit,
            )
        return [_message(r) for r in rows]

    async def claim(self, seqs: Sequence[int], sink: str, *, fence: Fence | None = None) -> None:
        """Claim pending deliveries for sending under `fence`'s epoch, or raise LeaseLost: the
        dispatcher sends nothing it has not claimed, and records outcomes only under the same epoch.
        Unfenced (a dispatcher run by hand on its own), there is nothing to claim against."""
        if fence is None:
            return
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            for i in range(0, len(seqs), 500):
                batch = list(seqs[i : i + 500])
                marks = ", ".join(f"${j + 3}" for j in range(len(batch)))
                await conn.execute(
                    f"UPDATE deliveries SET claim_epoch = $1 WHERE sink = $2 AND status = 'pending'"
                    f" AND outbox_seq IN ({marks})",
                    fence.epoch,
                    sink,
                    *batch,
                )

    async def delivered(self, seq: int, sink: str, now: float, *, fence: Fence | None = None) -> None:
        """Record a delivery the sink acknowledged."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            await conn.execute(
                "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, delivered_at = $1,"
                f" last_error = NULL WHERE outbox_seq = $2 AND sink = $3{_claimed(fence)}",
                int(now),
                seq,
                sink,
            )
            await self._refresh(conn, seq)

    async def failed(
        self, seq: int, sink: str, error: str, next_attempt_at: float | None, *, fence: Fence | None = None
    ) -> None:
        """Record a failed attempt: retry at `next_attempt_at`, or dead when it is None."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            if next_attempt_at is None:
                await conn.execute(
                    "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, last_error = $1"
                    f" WHERE outbox_seq = $2 AND sink = $3{_claimed(fence)}",
                    error[:2000],
                    seq,
                    sink,
                )
            else:
                await conn.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2"
                    f" WHERE outbox_seq = $3 AND sink = $4{_claimed(fence)}",
                    error[:2000],
                    next_attempt_at,
                    seq,
                    sink,
                )
            await self._refresh(conn, seq)

    async def delivered_many(
        self, acknowledged: Sequence[tuple[int, str]], now: float, *, fence: Fence | None = None
    ) -> None:
        """Record many acknowledged (seq, sink) deliveries in one transaction (a burst summary, or the
        acknowledgements that arrived together), a few statements per 500 rather than three each."""
        by_sink: dict[str, list[int]] = {}
        for seq, sink in acknowledged:
            by_sink.setdefault(sink, []).append(seq)
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            for sink, seqs in by_sink.items():
                for i in range(0, len(seqs), 500):
                    batch = seqs[i : i + 500]
                    marks = ", ".join(f"${j + 3}" for j in range(len(batch)))
                    await conn.execute(
                        "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, delivered_at = $1,"
                        f" last_error = NULL WHERE sink = $2 AND status = 'pending' AND outbox_seq IN ({marks})"
                        f"{_claimed(fence)}",
                        int(now),
                        sink,
                        *batch,
                    )
            await self._refresh_many(conn, sorted({seq for seq, _ in acknowledged}))

    async def failed_many(
        self,
        seqs: Sequence[int],
        sink: str,
        error: str,
        next_attempt_at: float | None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Record one failed attempt for many messages (a burst summary), in one transaction."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            for seq in seqs:
                await conn.execute(
                    "UPDATE deliveries SET status = $1, attempts = attempts + 1, last_error = $2,"
                    " next_attempt_at = COALESCE($3, next_attempt_at)"
                    f" WHERE outbox_seq = $4 AND sink = $5 AND status = 'pending'{_claimed(fence)}",
                    "dead" if next_attempt_at is None else "pending",
                    error[:2000],
                    next_attempt_at,
                    seq,
                    sink,
                )
                await self._refresh(conn, seq)

    async def _refresh_many(self, conn: Conn, seqs: Sequence[int]) -> None:
        """`_refresh` for many messages at once."""
        for i in range(0, len(seqs), 500):
            batch = seqs[i : i + 500]
            marks = ", ".join(f"${j + 1}" for j in range(len(batch)))
            await conn.execute(
                "UPDATE outbox SET status = CASE"
                " WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.outbox_seq = outbox.seq AND d.status = 'pending')"
                " THEN 'pending'"
                " WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.outbox_seq = outbox.seq AND d.status = 'dead')"
                f" THEN 'dead' ELSE 'delivered' END WHERE seq IN ({marks})",
                *batch,
            )

    async def _refresh(self, conn: Conn, seq: int) -> None:
        states = {r[0] for r in await conn.fetch("SELECT status FROM deliveries WHERE outbox_seq = $1", seq)}
        status = "pending" if "pending" in states else "dead" if "dead" in states else "delivered"
        await conn.execute("UPDATE outbox SET status = $1 WHERE seq = $2", status, seq)

    async def attempts(self, seq: int, sink: str) -> int:
        """How many times delivery to `sink` was tried."""
        async with self.db.read() as conn:
            value = await conn.fetchval(
                "SELECT attempts FROM deliveries WHERE outbox_seq = $1 AND sink = $2", seq, sink
            )
        return int(value or 0)

    async def messages(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[OutboxMessage]:
        """Messages, newest first, filtered by status and kind."""
        sql = "SELECT * FROM outbox WHERE 1 = 1"
        args: list[Any] = []
        if status is not None:
            args.append(status)
            sql += f" AND status = ${len(args)}"
        if kind is not None:
            args.append(kind)
            sql += f" AND kind = ${len(args)}"
        args.append(limit)
        sql += f" ORDER BY seq DESC LIMIT ${len(args)}"
        async with self.db.read() as conn:
            return [_message(r) for r in await conn.fetch(sql, *args)]

    async def find(self, alert_id_or_seq: str) -> list[OutboxMessage]:
        """Every message of an alert id, or the one message with that sequence number."""
        async with self.db.read() as conn:
            if alert_id_or_seq.isdigit():
                rows = await conn.fetch("SELECT * FROM outbox WHERE seq = $1", int(alert_id_or_seq))
            else:
                rows = await conn.fetch("SELECT * FROM outbox WHERE alert_id = $1 ORDER BY rev", alert_id_or_seq)
        return [_message(r) for r in rows]

    async def deliveries(self, seq: int) -> list[Delivery]:
        """Delivery state of one message, per sink."""
        async with self.db.read() as conn:
            rows = await conn.fetch("SELECT * FROM deliveries WHERE outbox_seq = $1 ORDER BY sink", seq)
        return [
            Delivery(
                r["outbox_seq"],
                r["sink"],
                r["status"],
                r["attempts"],
                r["next_attempt_at"],
                r["last_error"],
                r["delivered_at"],
            )
            for r in rows
        ]

    async def redeliver(self, seqs: Sequence[int] | None, now: float, *, force: bool = False) -> int:
        """Put dead deliveries (of the given messages, or all) back in line; return how many.

        With `force` (named messages only) delivered ones go back in line too: a receiver that lost
        what it acknowledged gets the same body under the same idempotency key again.
        """
        if force and seqs is None:
            raise ValueError("force needs the messages named")
        states = "('dead', 'delivered')" if force else "('dead')"
        async with self.db.transaction() as conn:
            if seqs is None:
                targets = [
                    r[0] for r in await conn.fetch("SELECT DISTINCT outbox_seq FROM deliveries WHERE status = 'dead'")
                ]
            else:
                targets = list(seqs)
            count = 0
            for seq in targets:
                count += await conn.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1,"
                    f" delivered_at = NULL WHERE outbox_seq = $2 AND status IN {states}",
                    now,
                    seq,
                )
                await self._refresh(conn, seq)
        return count

    async def prune(self, before: int, batch: int, *, dry_run: bool = False) -> int:
        """Remove up to `batch` settled alerts whose newest message is older than `before` (unix
        seconds): every message of the alert delivered or dead, with its delivery rows. Return how many
        messages went (or would go). Whole alerts only, and each leaves its last revision behind, so a
        later message of it never reuses an idempotency key."""
        settled = (
            "SELECT alert_id FROM outbox GROUP BY alert_id HAVING MAX(created_at) < $1"
            " AND SUM(CASE WHEN status IN ('delivered', 'dead') THEN 0 ELSE 1 END) = 0"
        )
        if dry_run:
            async with self.db.read() as conn:
                return int(
                    await conn.fetchval(f"SELECT COUNT(*) FROM outbox WHERE alert_id IN ({settled})", before) or 0
                )
        async with self.db.transaction() as conn:
            ids = [row[0] for row in await conn.fetch(f"{settled} ORDER BY MIN(seq) LIMIT $2", before, batch)]
            if not ids:
                return 0
            marks = ", ".join(f"${i + 2}" for i in range(len(ids)))
            await conn.execute(
                "INSERT INTO outbox_pruned (alert_id, rev, pruned_at)"
                f" SELECT alert_id, MAX(rev), $1 FROM outbox WHERE alert_id IN ({marks}) GROUP BY alert_id"
                " ON CONFLICT (alert_id) DO UPDATE SET rev = excluded.rev, pruned_at = excluded.pruned_at",
                now(),
                *ids,
            )
            marks = ", ".join(f"${i + 1}" for i in range(len(ids)))
            await conn.execute(
                f"DELETE FROM deliveries WHERE outbox_seq IN (SELECT seq FROM outbox WHERE alert_id IN ({marks}))",
                *ids,
            )
            return int(await conn.execute(f"DELETE FROM outbox WHERE alert_id IN ({marks})", *ids))

    async def counts(self) -> dict[str, int]:
        """Messages per status."""
        async with self.db.read() as conn:
            rows = await conn.fetch("SELECT status, COUNT(*) FROM outbox GROUP BY status")
        counts = {"new": 0, "pending": 0, "delivered": 0, "dead": 0, "unrouted": 0}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def enqueue_test_alert(self, payload: Mapping[str, Any], sink: str) -> OutboxMessage:
        """A clearly marked test message for one sink, through the same outbox as real alerts."""
        alert_id = f"test-{uuid.uuid4().hex[:24]}"
        body = {**payload, "id": alert_id, "idempotency_key": f"{alert_id}:1", "test": True}
        stamp = now()
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO outbox (alert_id, rev, event, kind, severity, chain, order_key, block_height, payload,"
                " status, created_at) VALUES ($1, 1, 'detected', 'test', $2, $3, $4, NULL, $5, 'pending', $6)",
                alert_id,
                body.get("severity", "info"),
                body.get("chain", "test"),
                f"test:{alert_id}",
                dumps(body),
                stamp,
            )
            seq = await conn.fetchval("SELECT seq FROM outbox WHERE alert_id = $1", alert_id)
            await conn.execute(
                "INSERT INTO deliveries (outbox_seq, sink, order_key, status, attempts, next_attempt_at)"
                " VALUES ($1, $2, $3, 'pending', 0, $4)",
                seq,
                sink,
                f"test:{alert_id}",
                float(stamp),
            )
            row = await conn.fetchrow("SELECT * FROM outbox WHERE seq = $1", seq)
        return _message(row)
