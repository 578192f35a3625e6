"""The Bitcoin mempool watcher: an early, unconfirmed alert for funds moving to or from revoked scripts.

Every step diffs the source's `mempool_txids()` against the transactions already looked at and
fetches the new ones with `mempool_txs` (raw, decoded and checked, in JSON-RPC batches of
`batch_size`, at most `max_in_flight` requests at a time and at most `max_new` transactions a step, so
a node with a huge mempool is worked through over several steps), and matches:

- outputs paying a revoked script, at or after its revocation: `revoked_incoming`;
- inputs spending a watched output (an output that paid a revoked script: the store's
  `watched_outputs`, or one seen earlier in the mempool, so a deposit and its immediate sweep are both
  caught before either is mined): `revoked_outgoing`.

Deposits to active addresses are not recorded from the mempool: they count once mined. Matches go to
`store.record_mempool` (status `mempool`, a `detected` alert with 0 confirmations); their ids are the
ids the follower gives the same transfer in a block, so the block's commit turns them `seen` with a
`mined` event.

A transaction that leaves the mempool was mined, replaced (RBF) or evicted. A match still `mempool`
whose transaction has been gone for the chain's `mempool_drop_grace` seconds (by the watcher's `clock`)
is retracted (`store.drop_mempool`), but
only while `caught_up()` says the follower has processed the node's tip, so a mined transaction is
never retracted because its block was not committed yet; `drop_mempool` itself only changes matches
still in status `mempool`, in the same transaction, so a block committed meanwhile wins.

When the address book changes (a revocation), the whole mempool is looked at again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from depositwatch.chains.base import ChainError
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_wire import Tx
from depositwatch.config import ChainConfig
from depositwatch.matcher import match_transfers
from depositwatch.models import Match, MatchKind, Spend, Transfer, WatchedOutput
from depositwatch.registry import AddressRegistry
from depositwatch.store import ChainPolicy, Scope, SqlStore
from depositwatch.supervise import Episode
from depositwatch.sweeps import sweeps

log = structlog.get_logger(__name__)

_KEPT = (MatchKind.REVOKED_INCOMING, MatchKind.REVOKED_OUTGOING)


class MempoolWatcher:
    """Watches one Bitcoin node's mempool for one chain; `run()` until cancelled."""

    def __init__(
        self,
        source: BitcoinSource,
        store: SqlStore,
        registry: AddressRegistry,
        policy: ChainPolicy,
        scope: Scope,
        chain_config: ChainConfig,
        caught_up: Callable[[], bool],
        *,
        max_new: int = 5000,
        batch_size: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.store = store
        self.registry = registry
        self.policy = policy
        self.scope = scope
        self.config = chain_config
        self.chain = chain_config.name
        self.caught_up = caught_up
        self.drop_grace = chain_config.mempool_drop_grace
        self.clock = clock  # seconds, for the drop grace and the trouble reports
        self.max_new = max_new
        self.batch_size = batch_size
        self.known: set[str] = set()  # mempool txids already looked at
        self._ids_by_tx: dict[str, list[str]] = {}  # match ids of transactions in the mempool
        self._revoked_outputs: dict[tuple[str, int], WatchedOutput] = {}  # unconfirmed outputs to revoked scripts
        self._absent_since: dict[str, float] = {}  # match id -> when its transaction was first missed
        self._book_version = registry.version
        self._log = log.bind(chain=self.chain, scope=scope.name)

    # one step -------------------------------------------------------------------------------------

    async def step(self) -> int:
        """Look at the mempool once; return how many alert messages were queued (new and dropped)."""
        if self.registry.version != self._book_version:
            self._book_version = self.registry.version
            self.known.clear()  # the book changed: every transaction deserves another look
        answer = await self.source.mempool_txids()
        current = set(answer)
        for txid in self.known - current:
            self._forget(txid)
        self.known &= current
        waiting = [txid for txid in answer if txid not in self.known]
        new = waiting[: self.max_new]
        queued = 0
        if new:
            matches = await self._look_at(new)
            if matches:
                queued += await self.store.record_mempool(self.scope, self.policy, matches)
                for match in matches:
                    self._ids_by_tx.setdefault(match.transfer.txid, []).append(match.id)
                    self._log.info(
                        "mempool match", kind=str(match.kind), txid=match.transfer.txid, index=match.transfer.index
                    )
        if len(waiting) <= self.max_new:
            # Only once every transaction in the mempool has been looked at can a match be missing from it.
            queued += await self._retract_dropped()
        return queued

    def _forget(self, txid: str) -> None:
        self._ids_by_tx.pop(txid, None)
        for key in [k for k in self._revoked_outputs if k[0] == txid]:
            del self._revoked_outputs[key]

    async def _look_at(self, txids: list[str]) -> list[Match]:
        book = self.registry.book(self.chain)
        if not book.revoked:
            self.known.update(txids)  # nothing here can be an alert
            return []
        chunks = [txids[i : i + self.batch_size] for i in range(0, len(txids), self.batch_size)]
        answers = await asyncio.gather(*(self.source.mempool_txs(chunk) for chunk in chunks))
        txs: list[Tx] = []
        for chunk, found in zip(chunks, answers, strict=True):
            txs.extend(found)
            self.known.update(chunk)
        if not txs:
            return []
        revoked = book.revoked
        incoming: list[Transfer] = []
        for tx in txs:
            paid = self.source.payments(tx, revoked)
            incoming += paid
            for t in paid:
                assert t.index is not None and t.to_key is not None
                self._revoked_outputs[(t.txid, t.index)] = WatchedOutput(t.txid, t.index, t.to_key, t.amount, None)
        watched = {(o.txid, o.vout): o for o in await self.store.watched_outputs(self.chain, self.scope)}
        watched.update(self._revoked_outputs)
        spends = [
            Spend(tx.txid, vin, txin.prev_txid_hex, txin.prev_vout) for tx in txs for vin, txin in enumerate(tx.inputs)
        ]
        swept = [transfer for _, transfer in sweeps(self.source.asset, self.source.network, spends, watched)]
        matches = match_transfers(self.chain, incoming + swept, book, int(time.time()), None)
        return [m for m in matches if m.kind in _KEPT]

    async def _retract_dropped(self) -> int:
        """Retract mempool matches whose transaction has been gone for the grace period."""
        stored = set(await self.store.mempool_match_ids(self.scope, self.chain))
        present = {match_id for ids in self._ids_by_tx.values() for match_id in ids}
        now = self.clock()
        for match_id in list(self._absent_since):
            if match_id not in stored or match_id in present:
                del self._absent_since[match_id]
        for match_id in stored - present:
            self._absent_since.setdefault(match_id, now)
        due = [m for m, since in self._absent_since.items() if now - since >= self.drop_grace]
        if not due or not self.caught_up():
            return 0
        # drop_mempool changes only matches still in status `mempool`: a block commit wins the race.
        dropped = await self.store.drop_mempool(self.scope, self.policy, due)
        for match_id in due:
            self._absent_since.pop(match_id, None)
        if dropped:
            self._log.info("mempool transactions dropped or replaced: matches retracted", count=dropped)
        return dropped

    # the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Step every `poll_interval` (sooner on a ZMQ mempool message) until cancelled.

        Node trouble is logged at most once a minute and retried with backoff; returns at once when the
        chain's `mempool` setting is off.
        """
        if not self.config.mempool:
            self._log.info("mempool watching is off")
            return
        trouble = Episode(
            self._log,
            "mempool watcher: node trouble, retrying",
            "mempool watcher: node connection restored",
            first_backoff=self.config.poll_interval,
            clock=self.clock,
        )
        while True:
            try:
                await self.step()
            except ChainError as exc:
                await asyncio.sleep(trouble.failed(exc))
                continue
            trouble.recovered()
            await self._wait(self.config.poll_interval)

    async def _wait(self, seconds: float) -> None:
        event = self.source.mempool_changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()
