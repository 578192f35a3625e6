"""Store operations of the follower: cursors, block commits, reorg rewinds, mempool sightings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from depositwatch.jsonutil import dumps
from depositwatch.messages import build_payload
from depositwatch.models import AlertEvent, BlockRef, Match, MatchKind, WatchedOutput, pending_token_id
from depositwatch.store.base import (
    BlockEffects,
    ChainPolicy,
    Cursor,
    IdentityMismatch,
    LeaseLost,
    Scope,
)
from depositwatch.store.drivers import fetch_in
from depositwatch.store.leases import check_fence
from depositwatch.store.trees import TreeMixin, address_details, extend_trees
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn, Driver

_MATCH_COLUMNS = (
    "scope, id, chain, kind, status, asset_symbol, asset_contract, asset_decimals, amount, from_address,"
    " to_address, key, address, label, owner, revoked_at, txid, idx, block_height, block_hash, block_time,"
    " first_seen, updated_at, asset_listed, poisoning, tree_id, tree_index"
)


_INSERT_MATCH = f"INSERT INTO matches ({_MATCH_COLUMNS}) VALUES ({', '.join(f'${i}' for i in range(1, 28))})"


def _with_late_revocations(matches: Sequence[Match], details: dict[bytes, Any]) -> list[Match]:
    """Matches as the book stands at commit: a deposit classified with a registry older than a
    revocation committed meanwhile (a block in flight while `addresses revoke` ran) also counts as
    `revoked_incoming` when its block is at or after the revocation time."""
    found: list[Match] = []
    for match in matches:
        found.append(match)
        info = details.get(match.key)
        revoked_at = None if info is None else info["revoked_at"]
        if (
            match.kind is MatchKind.DEPOSIT
            and revoked_at is not None
            and match.block is not None
            and match.block_time is not None
            and match.block_time >= revoked_at
        ):
            found.append(
                Match(match.chain, MatchKind.REVOKED_INCOMING, match.key, match.transfer, match.block, match.block_time)
            )
    return found


def _pending_ids(matches: Sequence[Match]) -> dict[str, str]:
    """For a block's token alerts: the id each would have had if first seen pending (`pending_token_id`)."""
    return {
        m.id: pending_token_id(m.chain, m.kind, m.transfer.txid, m.transfer.asset.contract)
        for m in matches
        if m.is_alert and m.block is not None and m.transfer.index is not None and m.transfer.asset.contract
    }


async def _one_writer(conn: Conn, dialect: str, scope: Scope, chain: str) -> None:
    """Serialize the live writers of one chain (block commits, rewinds, the pending watcher's sightings)
    until the transaction ends, so each sees what the other committed: a pending token transfer recorded
    while its block commits would otherwise miss the block's match (and the block the pending row), and
    the transfer would alert twice under two ids. SQLite's write transactions are exclusive already;
    replay scopes have no pending watcher (their parallel shards are not serialized)."""
    if dialect == "postgres" and scope.mode == "live":
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{scope.name}|{chain}")


def _following_pending(
    matches: Sequence[Match], pending: dict[str, str], known: dict[str, str], keys: dict[str, bytes]
) -> tuple[list[Match], list[Match]]:
    """A block's token match whose transfer was first seen pending takes the pending match's id (the
    first such match of that transaction, contract and watched key), so the pending alert gets the
    `mined` update instead of a second alert. Returns the matches and those that took a pending id."""
    if not pending:
        return list(matches), []
    out: list[Match] = []
    taken: list[Match] = []
    for match in matches:
        earlier = pending.get(match.id)
        if (
            earlier is not None
            and match.id not in known
            and earlier in known
            and keys.get(earlier) == match.key
            and earlier not in {m.id for m in taken}
        ):
            match = dataclasses.replace(match, id=earlier)
            taken.append(match)
        out.append(match)
    return out, taken


def _match_row(scope: Scope, match: Match, info: Any, status: str, stamp: int, policy: ChainPolicy) -> tuple[Any, ...]:
    """The values of a new `matches` row, in `_MATCH_COLUMNS` order."""
    t = match.transfer
    block = match.block
    return (
        scope.name,
        match.id,
        match.chain,
        str(match.kind),
        status,
        t.asset.symbol,
        t.asset.contract,
        t.asset.decimals,
        str(t.amount),
        t.from_address,
        t.to_address,
        match.key,
        info["address"] if info else (t.to_address or t.from_address or match.key.hex()),
        info["label"] if info else "",
        info["owner"] if info else "",
        info["revoked_at"] if info else None,
        t.txid,
        t.index,
        block.height if block else None,
        block.hash if block else None,
        match.block_time,
        stamp,
        stamp,
        int(t.asset.listed),
        int(policy.is_poisoning(match)),
        info["tree_id"] if info else None,
        info["tree_index"] if info else None,
    )


def _cursor(row: Any) -> Cursor:
    return Cursor(row["name"], row["chain"], row["height"], row["hash"], row["range_start"], row["range_stop"])


class FollowMixin(TreeMixin):
    """Cursor, block and match operations; mixed into SqlStore."""

    db: Driver

    async def check_identity(self, chain: str, identity: str) -> None:
        """Record the chain's identity on first use; afterwards refuse a node on another chain."""
        async with self.db.transaction() as conn:
            # Instances starting together may both find no row: the first insert wins, the other reads it.
            await conn.execute(
                "INSERT INTO chain_identity (chain, identity) VALUES ($1, $2) ON CONFLICT (chain) DO NOTHING",
                chain,
                identity,
            )
            known = await conn.fetchval("SELECT identity FROM chain_identity WHERE chain = $1", chain)
            if known != identity:
                raise IdentityMismatch(
                    f"chain {chain}: the node reports {identity}, but this store recorded {known}; "
                    "refusing to mix two chains in one store"
                )

    async def get_cursor(self, name: str) -> Cursor | None:
        """The named cursor, or None before the first block."""
        async with self.db.read() as conn:
            row = await conn.fetchrow("SELECT * FROM cursors WHERE name = $1", name)
        return None if row is None else _cursor(row)

    async def cursor_updated_at(self, name: str) -> int | None:
        """Unix time of the named cursor's last move (a commit by whichever instance leads), or None."""
        async with self.db.read() as conn:
            value = await conn.fetchval("SELECT updated_at FROM cursors WHERE name = $1", name)
        return None if value is None else int(value)

    async def set_cursor(self, cursor: Cursor) -> None:
        """Create or move a cursor (used to start following at a chosen block).

        The cursor's own block is remembered too, so a reorg of the very first blocks still finds it.
        """
        async with self.db.transaction() as conn:
            await self._write_cursor(conn, cursor)
            if cursor.height >= 0:
                await conn.execute(
                    "INSERT INTO blocks (cursor, height, hash, parent_hash, time) VALUES ($1, $2, $3, '', 0)"
                    " ON CONFLICT (cursor, height) DO UPDATE SET hash = excluded.hash",
                    cursor.name,
                    cursor.height,
                    cursor.hash,
                )

    async def _write_cursor(self, conn: Conn, cursor: Cursor) -> None:
        await conn.execute(
            "INSERT INTO cursors (name, chain, height, hash, range_start, range_stop, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET height = excluded.height,"
            " hash = excluded.hash, range_start = excluded.range_start, range_stop = excluded.range_stop,"
            " updated_at = excluded.updated_at",
            cursor.name,
            cursor.chain,
            cursor.height,
            cursor.hash,
            cursor.range_start,
            cursor.range_stop,
            now(),
        )

    async def block_hash(self, cursor: str, height: int) -> str | None:
        """The hash this cursor processed at `height`, if it still remembers it."""
        async with self.db.read() as conn:
            value = await conn.fetchval("SELECT hash FROM blocks WHERE cursor = $1 AND height = $2", cursor, height)
        return None if value is None else str(value)

    async def commit_blocks(
        self,
        scope: Scope,
        cursor: Cursor,
        policy: ChainPolicy,
        effects: Sequence[BlockEffects],
        tip_height: int,
    ) -> Cursor:
        """Commit blocks' matches, outputs, alerts and the moved cursor in one transaction.

        `cursor` is where the caller believes the chain stands; if the stored cursor differs (another
        instance moved it), or the scope's lease fence no longer holds, nothing is written and
        LeaseLost is raised.
        """
        if not effects:
            return cursor
        last = effects[-1].block
        moved = Cursor(cursor.name, cursor.chain, last.height, last.hash, cursor.range_start, cursor.range_stop)
        stamp = now()
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, scope.fence)
            await _one_writer(conn, self.db.dialect, scope, policy.chain)
            await self._expect_cursor(conn, cursor)
            await conn.executemany(
                "INSERT INTO blocks (cursor, height, hash, parent_hash, time) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (cursor, height) DO UPDATE SET hash = excluded.hash,"
                " parent_hash = excluded.parent_hash, time = excluded.time",
                [(cursor.name, e.block.height, e.block.hash, e.block.parent_hash, e.block.time) for e in effects],
            )
            if scope.mode == "live":
                first = effects[0].block
                await conn.execute(
                    "INSERT INTO live_start (chain, height, time) VALUES ($1, $2, $3) ON CONFLICT (chain) DO NOTHING",
                    policy.chain,
                    first.height,
                    first.time,
                )
            matches = [match for effect in effects for match in effect.matches]
            if matches:
                await self._upsert_matches(conn, scope, policy, matches, tip_height, stamp)
            await self._record_outputs(conn, scope, policy.chain, effects)
            await self._confirm(conn, scope, policy, tip_height, stamp)
            await conn.execute(
                "DELETE FROM blocks WHERE cursor = $1 AND height < $2", cursor.name, last.height - policy.keep_blocks
            )
            await self._write_cursor(conn, moved)
        return moved

    async def _expect_cursor(self, conn: Conn, cursor: Cursor) -> None:
        row = await conn.fetchrow("SELECT height, hash FROM cursors WHERE name = $1", cursor.name)
        if row is not None and (row["height"], row["hash"]) != (cursor.height, cursor.hash):
            raise LeaseLost(
                f"cursor {cursor.name} is at {row['height']} {row['hash']}, not {cursor.height} {cursor.hash}: "
                "another instance is following this chain"
            )

    async def _record_outputs(self, conn: Conn, scope: Scope, chain: str, effects: Sequence[BlockEffects]) -> None:
        # Every insert before any spend: a spend in a later block of the batch finds its output, and
        # an output created and spent in one block is inserted, then marked spent, as in chain order.
        created = [
            (scope.name, chain, out.txid, out.vout, out.script, out.amount, effect.block.height)
            for effect in effects
            for out in effect.new_outputs
        ]
        if created:
            await conn.executemany(
                "INSERT INTO watched_outputs (scope, chain, txid, vout, script, amount, height)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                created,
            )
        spent = [
            (spender, effect.block.height, scope.name, chain, txid, vout)
            for effect in effects
            for txid, vout, spender in effect.spent_outputs
        ]
        if spent:
            await conn.executemany(
                "UPDATE watched_outputs SET spent_txid = $1, spent_height = $2"
                " WHERE scope = $3 AND chain = $4 AND txid = $5 AND vout = $6",
                spent,
            )

    async def _upsert_matches(
        self,
        conn: Conn,
        scope: Scope,
        policy: ChainPolicy,
        matches: Sequence[Match],
        tip_height: int,
        stamp: int,
    ) -> None:
        """Insert new matches, move known ones, and enqueue their alerts: one lookup of the known ids,
        one multi-row insert and one outbox write for the whole list, in the list's order."""
        details = await address_details(conn, policy.chain, {m.key for m in matches})
        matches = _with_late_revocations(matches, details)
        await extend_trees(conn, self.db.dialect, [info for info in details.values() if isinstance(info, dict)])
        pending = _pending_ids(matches)
        rows = await fetch_in(
            conn,
            "SELECT id, status, key FROM matches WHERE scope = $1 AND id",
            [scope.name],
            {m.id for m in matches} | set(pending.values()),
        )
        known: dict[str, str] = {row["id"]: row["status"] for row in rows}
        matches, mined = _following_pending(matches, pending, known, {row["id"]: bytes(row["key"]) for row in rows})
        if mined:  # the block's log index and amount, from now on
            await conn.executemany(
                "UPDATE matches SET idx = $1, amount = $2 WHERE scope = $3 AND id = $4",
                [(m.transfer.index, str(m.transfer.amount), scope.name, m.id) for m in mined],
            )
        inserts: list[tuple[Any, ...]] = []
        alerts: list[tuple[str, AlertEvent, int]] = []
        # A replay's match already deep enough is written confirmed: `_confirm` would turn it so in this
        # same transaction, and a replay announces first sightings only, never the confirmation. Written
        # 'seen' and then updated, every match would leave a dead 'seen' entry in PostgreSQL's status
        # index (no HOT update: the column is indexed), which each later `_confirm` walks until a vacuum.
        final_from = tip_height - policy.confirmations + 1 if scope.mode == "replay" else None

        async def flush() -> None:
            if inserts:
                await conn.executemany(_INSERT_MATCH, inserts)
                inserts.clear()
            await self._enqueue_many(conn, scope, policy, alerts, stamp)
            alerts.clear()

        for match in matches:
            block = match.block
            status = known.get(match.id)
            if status is None:
                status = "seen" if block is not None else "mempool"
                if block is not None and final_from is not None and block.height <= final_from:
                    status = "confirmed"
                inserts.append(_match_row(scope, match, details.get(match.key), status, stamp, policy))
                known[match.id] = status
                event = AlertEvent.DETECTED
            else:
                if block is None:
                    continue  # a mempool sighting of a transfer already recorded
                await flush()  # the row must exist, and its earlier alerts be written, before it moves
                if status in ("seen", "confirmed"):
                    await self._move_match(conn, scope, match, status, stamp)
                    continue
                event = AlertEvent.MINED if status == "mempool" else AlertEvent.DETECTED
                await self._move_match(conn, scope, match, "seen", stamp)
                known[match.id] = "seen"
            if match.is_alert:
                alerts.append((match.id, event, tip_height - block.height + 1 if block else 0))
        await flush()

    async def _move_match(self, conn: Conn, scope: Scope, match: Match, status: str, stamp: int) -> None:
        block = match.block
        await conn.execute(
            "UPDATE matches SET status = $1, block_height = $2, block_hash = $3, block_time = $4, updated_at = $5"
            " WHERE scope = $6 AND id = $7",
            status,
            block.height if block else None,
            block.hash if block else None,
            match.block_time,
            stamp,
            scope.name,
            match.id,
        )

    async def _confirm(self, conn: Conn, scope: Scope, policy: ChainPolicy, tip_height: int, stamp: int) -> None:
        deepest = tip_height - policy.confirmations + 1
        # `+block_height`: look the rows up by status (few are 'seen' at any time). Searched by height,
        # a commit would walk every match below the depth, a cost that grows with the store.
        rows = await conn.fetch(
            "SELECT id, block_height FROM matches"
            " WHERE scope = $1 AND chain = $2 AND status = 'seen' AND +block_height <= $3",
            scope.name,
            policy.chain,
            deepest,
        )
        if not rows:
            return
        await conn.execute(
            "UPDATE matches SET status = 'confirmed', updated_at = $1"
            " WHERE scope = $2 AND chain = $3 AND status = 'seen' AND +block_height <= $4",
            stamp,
            scope.name,
            policy.chain,
            deepest,
        )
        # Deposits are not alerts; the deposits sink hears of them once, when they are final.
        alerts = [(row["id"], AlertEvent.CONFIRMED, tip_height - int(row["block_height"]) + 1) for row in rows]
        await self._enqueue_many(conn, scope, policy, alerts, stamp)

    async def _enqueue(
        self,
        conn: Conn,
        scope: Scope,
        policy: ChainPolicy,
        match_id: str,
        event: AlertEvent,
        confirmations: int,
        stamp: int,
    ) -> None:
        await self._enqueue_many(conn, scope, policy, [(match_id, event, confirmations)], stamp)

    async def _enqueue_many(
        self,
        conn: Conn,
        scope: Scope,
        policy: ChainPolicy,
        alerts: Sequence[tuple[str, AlertEvent, int]],
        stamp: int,
    ) -> None:
        """Outbox messages (match id, event, confirmations) in this order, each from its match's row
        as it stands now; a match's messages take the next revisions after what the outbox holds."""
        if not scope.send_alerts or not alerts:
            return
        ids = {match_id for match_id, _, _ in alerts}
        if scope.mode == "replay":
            # A replay announces first sightings only, and nothing the live daemon (or an earlier
            # replay) already sent for the same id: the receivers have heard of it.
            told = {
                row[0] for row in await fetch_in(conn, "SELECT DISTINCT alert_id FROM outbox WHERE alert_id", [], ids)
            }
            pruned = await fetch_in(conn, "SELECT alert_id FROM outbox_pruned WHERE alert_id", [], ids)
            told |= {row[0] for row in pruned}
            fresh = []
            for alert in alerts:
                if alert[1] is AlertEvent.DETECTED and alert[0] not in told:
                    fresh.append(alert)
                    told.add(alert[0])
            alerts = fresh
            ids = {match_id for match_id, _, _ in alerts}
            if not alerts:
                return
        rows = {
            row["id"]: row
            for row in await fetch_in(
                conn,
                "SELECT m.*, t.descriptor AS tree_descriptor FROM matches m LEFT JOIN key_trees t ON t.id = m.tree_id"
                " WHERE m.scope = $1 AND m.id",
                [scope.name],
                ids,
            )
        }
        # Revisions continue after what the outbox holds and after what retention removed from it.
        pruned_revs = await fetch_in(conn, "SELECT alert_id, rev FROM outbox_pruned WHERE alert_id", [], ids)
        revs: dict[str, int] = {row[0]: int(row[1]) for row in pruned_revs}
        for row in await fetch_in(
            conn, "SELECT alert_id, MAX(rev) FROM outbox WHERE alert_id", [], ids, " GROUP BY alert_id"
        ):
            revs[row[0]] = max(revs.get(row[0], 0), int(row[1]))
        messages = []
        for match_id, event, confirmations in alerts:
            row = rows[match_id]
            kind = MatchKind(row["kind"])
            poisoning = bool(row["poisoning"])
            if poisoning and policy.poisoning_alerts == "off":
                continue  # recorded, never announced
            rev = revs[match_id] = revs.get(match_id, 0) + 1
            severity = "info" if poisoning else str(policy.severities.get(kind, "info"))
            payload = build_payload(
                row,
                alert_id=match_id,
                rev=rev,
                event=event,
                severity=severity,
                chain_id=policy.chain_id,
                confirmations=confirmations,
                mode=scope.mode,
                detected_at=stamp,
            )
            messages.append(
                (
                    match_id,
                    rev,
                    str(event),
                    str(kind),
                    severity,
                    row["chain"],
                    f"{row['chain']}:{row['address']}",
                    row["block_height"],
                    dumps(payload),
                    stamp,
                )
            )
        await conn.executemany(
            "INSERT INTO outbox (alert_id, rev, event, kind, severity, chain, order_key, block_height, payload,"
            " status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'new', $10)"
            " ON CONFLICT (alert_id, rev) DO NOTHING",
            messages,
        )

    async def rewind(self, scope: Scope, cursor: Cursor, policy: ChainPolicy, to: BlockRef) -> Cursor:
        """Undo every block above `to` (a reorg): retract their matches and move the cursor back."""
        stamp = now()
        moved = Cursor(cursor.name, cursor.chain, to.height, to.hash, cursor.range_start, cursor.range_stop)
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, scope.fence)
            await _one_writer(conn, self.db.dialect, scope, policy.chain)
            await self._expect_cursor(conn, cursor)
            rows = await conn.fetch(
                "SELECT id, kind, status FROM matches WHERE scope = $1 AND chain = $2 AND block_height > $3"
                " AND status IN ('seen', 'confirmed')",
                scope.name,
                policy.chain,
                to.height,
            )
            await conn.executemany(
                "UPDATE matches SET status = 'retracted', updated_at = $1 WHERE scope = $2 AND id = $3",
                [(stamp, scope.name, row["id"]) for row in rows],
            )
            # A deposit was only announced once final; retract only what was announced.
            retracted = [
                (row["id"], AlertEvent.RETRACTED, 0)
                for row in rows
                if row["kind"] != MatchKind.DEPOSIT or row["status"] == "confirmed"
            ]
            await self._enqueue_many(conn, scope, policy, retracted, stamp)
            await conn.execute("DELETE FROM blocks WHERE cursor = $1 AND height > $2", cursor.name, to.height)
            await conn.execute(
                "DELETE FROM watched_outputs WHERE scope = $1 AND chain = $2 AND height > $3",
                scope.name,
                policy.chain,
                to.height,
            )
            await conn.execute(
                "UPDATE watched_outputs SET spent_txid = NULL, spent_height = NULL"
                " WHERE scope = $1 AND chain = $2 AND spent_height > $3",
                scope.name,
                policy.chain,
                to.height,
            )
            await self._write_cursor(conn, moved)
        return moved

    async def record_mempool(self, scope: Scope, policy: ChainPolicy, matches: Sequence[Match]) -> int:
        """Record unconfirmed matches (block None) and alert on the new ones; return how many were new.

        A token transfer whose block was committed first (the pool was read just before) is already
        recorded under the block's id (`pending_token_id` differs from it): its sighting adds nothing."""
        stamp = now()
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, scope.fence)
            await _one_writer(conn, self.db.dialect, scope, policy.chain)
            before = await conn.fetchval("SELECT COUNT(*) FROM outbox")
            fresh = []
            for match in matches:
                status = await conn.fetchval(
                    "SELECT status FROM matches WHERE scope = $1 AND id = $2", scope.name, match.id
                )
                if status is None and not await self._mined_token(conn, scope, match):
                    fresh.append(match)
                elif status == "retracted":  # dropped earlier, back in the mempool now
                    await self._move_match(conn, scope, match, "mempool", stamp)
                    if match.is_alert:
                        await self._enqueue(conn, scope, policy, match.id, AlertEvent.DETECTED, 0, stamp)
            if fresh:
                await self._upsert_matches(conn, scope, policy, fresh, 0, stamp)
            after = await conn.fetchval("SELECT COUNT(*) FROM outbox")
        return int(after - before)

    async def _mined_token(self, conn: Conn, scope: Scope, match: Match) -> bool:
        """Whether a pending token match's transfer is in a block already (same transaction, contract,
        kind and key; not retracted)."""
        contract = match.transfer.asset.contract
        if contract is None:
            return False  # ETH: the block's match has the pending match's id
        # `kind <> 'deposit'` lets both databases use the partial index `matches_alerts_by_tx`.
        found = await conn.fetchval(
            "SELECT 1 FROM matches WHERE scope = $1 AND txid = $2 AND kind <> 'deposit' AND kind = $3"
            " AND asset_contract = $4 AND key = $5 AND block_height IS NOT NULL"
            " AND status IN ('seen', 'confirmed')",
            scope.name,
            match.transfer.txid,
            str(match.kind),
            contract,
            match.key,
        )
        return found is not None

    async def drop_mempool(self, scope: Scope, policy: ChainPolicy, match_ids: Sequence[str]) -> int:
        """Retract unconfirmed matches whose transaction left the mempool without being mined."""
        stamp = now()
        dropped = 0
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, scope.fence)
            await _one_writer(conn, self.db.dialect, scope, policy.chain)
            for match_id in match_ids:
                changed = await conn.execute(
                    "UPDATE matches SET status = 'retracted', updated_at = $1"
                    " WHERE scope = $2 AND id = $3 AND status = 'mempool'",
                    stamp,
                    scope.name,
                    match_id,
                )
                if changed:
                    dropped += 1
                    kind = await conn.fetchval(
                        "SELECT kind FROM matches WHERE scope = $1 AND id = $2", scope.name, match_id
                    )
                    if kind != MatchKind.DEPOSIT:
                        await self._enqueue(conn, scope, policy, match_id, AlertEvent.RETRACTED, 0, stamp)
        return dropped

    async def mempool_match_ids(self, scope: Scope, chain: str) -> list[str]:
        """Ids of matches seen only in the mempool so far."""
        return [match_id for match_id, _ in await self.mempool_matches(scope, chain)]

    async def mempool_matches(self, scope: Scope, chain: str) -> list[tuple[str, str]]:
        """`(id, txid)` of the matches seen only in the mempool so far."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT id, txid FROM matches WHERE scope = $1 AND chain = $2 AND status = 'mempool'", scope.name, chain
            )
        return [(str(r[0]), str(r[1])) for r in rows]

    async def watched_outputs(self, chain: str, scope: Scope | None = None) -> list[WatchedOutput]:
        """Unspent outputs that paid revoked scripts."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT txid, vout, script, amount, height FROM watched_outputs"
                " WHERE scope = $1 AND chain = $2 AND spent_txid IS NULL",
                (scope or Scope.live()).name,
                chain,
            )
        return [WatchedOutput(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    async def add_watched_outputs(
        self, chain: str, outputs: Sequence[WatchedOutput], scope: Scope | None = None
    ) -> int:
        """Add outputs found outside following (scantxoutset, prevouts); return how many were new."""
        added = 0
        async with self.db.transaction() as conn:
            for out in outputs:
                added += await conn.execute(
                    "INSERT INTO watched_outputs (scope, chain, txid, vout, script, amount, height)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    (scope or Scope.live()).name,
                    chain,
                    out.txid,
                    out.vout,
                    out.script,
                    out.amount,
                    out.height,
                )
        return added

    async def matches(
        self,
        scope: Scope,
        *,
        chain: str | None = None,
        kind: MatchKind | None = None,
        heights: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Matches of a scope in chain order (height, txid, index), as plain dicts; `heights` is inclusive."""
        sql = "SELECT * FROM matches WHERE scope = $1"
        args: list[Any] = [scope.name]
        async with self.db.read() as conn:
            if heights is not None and chain is None:
                # The index is (scope, chain, block_height): without the chain a height range reads every
                # row of the scope, a cost that grows with each commit of a long replay. A replay scope
                # holds one chain's matches: its cursor's (the cursor bears the scope's name).
                chain = await conn.fetchval("SELECT chain FROM cursors WHERE name = $1", scope.name)
            if heights is not None:
                args += list(heights)
                sql += f" AND block_height BETWEEN ${len(args) - 1} AND ${len(args)}"
            if chain is not None:
                args.append(chain)
                sql += f" AND chain = ${len(args)}"
            if kind is not None:
                args.append(str(kind))
                sql += f" AND kind = ${len(args)}"
            sql += " ORDER BY block_height, txid, idx, kind"
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def list_matches(
        self,
        scope: str,
        *,
        deposits_only: bool = False,
        chain: str | None = None,
        kind: str | None = None,
        address: str | None = None,
        owner: str | None = None,
        since: int | None = None,
        final: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Matches of a scope (`live` or `replay:<run id>`), newest first, filtered; for the CLI.

        `address` compares case-insensitively for EVM text (0x...), exactly otherwise (base58 is
        case-sensitive); `since` is unix seconds against the block time (the first sighting while
        unmined). `deposits_only` with `final` reads the documented `deposits` view's meaning.
        """
        sql = "SELECT * FROM matches WHERE scope = $1"
        args: list[Any] = [scope]

        def where(clause: str, value: Any) -> None:
            nonlocal sql
            args.append(value)
            sql += " AND " + clause.replace("$?", f"${len(args)}")

        if deposits_only:
            where("kind = $?", "deposit")
        if chain is not None:
            where("chain = $?", chain)
        if kind is not None:
            where("kind = $?", kind)
        if address is not None:
            if address[:2].lower() == "0x":
                where("LOWER(address) = $?", address.lower())
            else:
                where("address = $?", address)
        if owner is not None:
            where("owner = $?", owner)
        if since is not None:
            where("COALESCE(block_time, first_seen) >= $?", since)
        if final:
            sql += " AND status = 'confirmed'"
        args.append(limit)
        sql += (
            " ORDER BY COALESCE(block_height, -1) DESC, COALESCE(block_time, first_seen) DESC, txid, idx, kind"
            f" LIMIT ${len(args)}"
        )
        async with self.db.read() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def unsent_alerts(self, scope: Scope) -> int:
        """Alert matches of a scope (not retracted) that have no message in the outbox: nobody was told."""
        async with self.db.read() as conn:
            value = await conn.fetchval(
                "SELECT COUNT(*) FROM matches m WHERE m.scope = $1 AND m.kind <> 'deposit'"
                " AND m.status <> 'retracted' AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = m.id)"
                " AND NOT EXISTS (SELECT 1 FROM outbox_pruned p WHERE p.alert_id = m.id)",
                scope.name,
            )
        return int(value or 0)

    async def delete_scope(self, scope: Scope) -> None:
        """Forget a replay run: its matches, outputs, cursor and blocks."""
        async with self.db.transaction() as conn:
            for table in ("matches", "watched_outputs"):
                await conn.execute(f"DELETE FROM {table} WHERE scope = $1", scope.name)
            await conn.execute("DELETE FROM blocks WHERE cursor = $1", scope.name)
            await conn.execute("DELETE FROM cursors WHERE name = $1", scope.name)
