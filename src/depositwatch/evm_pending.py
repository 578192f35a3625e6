"""Ethereum pending transactions: an early, unconfirmed alert for ETH or tokens moving to or from a revoked
address.

Where the node offers it (`txpool_content`: geth, erigon, anvil, ...), every step reads the node's pending
pool and matches each new transaction that carries value and has a recipient, and each ERC-20 call
`transfer(address,uint256)` (a9059cbb) or `transferFrom(address,address,uint256)` (23b872dd) whose
tokens go to or come from a revoked address (the transaction's `to` is the token contract):

- to a revoked address, at or after its revocation: `revoked_incoming`;
- from a revoked address: `revoked_outgoing` (the attacker sweeping with the leaked key, or pulling
  tokens out through an allowance with `transferFrom`).

Token calls (unless the chain's `pending_tokens` is off) are decoded strictly (`token_call`): exact
length, address words with 12 zero upper bytes, the amount one 32-byte word; anything else is not a
token call. A configured token keeps its name; any other contract (with `any_tokens`, the default) is
named from the contract as its block logs are (`chains/evm_tokens.py`, `token_listed` false).

The matches go to `store.record_mempool` (status `mempool`, a `detected` alert with `confirmations: 0`
and `mempool: true`). An ETH match's id is the id the follower gives the same transaction in a block
(the transaction hash, no index); a token match's is `pending_token_id` (the transaction and the
contract: the log index is not known before the block), which the block's match of that transfer takes
when the store holds it. Either way the block's commit turns them `seen` with a `mined` event (and the
block's log index and amount for tokens) and then the confirmation updates. A token call read from the
pool just before its block was committed is already in the store under the block's id: the sighting
adds nothing (the store serializes a chain's live writers, so one of the two always sees the other).

The watcher starts from the sightings the store holds still unconfirmed (recorded before a restart, or
by the instance that led the chain before a failover), so they are retracted the same way.

A transaction that leaves the pool was mined, dropped, or replaced (the same sender and nonce mined, or
pooled, with another hash). Once it has been gone for `drop_grace` seconds, and the follower has
processed the node's tip (`caught_up()`), the node is asked for it (`eth_getTransactionByHash`): unknown
means dropped or replaced, and its matches are retracted (`store.drop_mempool`, which changes only
matches still in status `mempool`, so a block committed meanwhile wins). A transaction the node still
knows is left alone: mined, the follower takes it; still pending, it is looked at again. A mined
transaction whose receipt says it failed (status 0: a token call that reverted, ETH to a contract that
refused it) moved nothing: its matches are retracted too.

Not covered here: the WebSocket `newPendingTransactions` subscription (polling `txpool_content` every
`poll_interval` gives the same transactions); token calls other than those two (`transferMany`-style
batches, calls through a router) are seen from their block only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from depositwatch.chains.base import BadNodeAnswer, ChainError
from depositwatch.chains.evm import EvmSource
from depositwatch.chains.evm_decode import _checksum
from depositwatch.chains.evm_tokens import PLACEHOLDER_SYMBOL
from depositwatch.chains.rpc import Call
from depositwatch.matcher import match_transfers
from depositwatch.models import Asset, Match, MatchKind, Transfer, pending_token_id
from depositwatch.registry import AddressRegistry
from depositwatch.store import ChainPolicy, Scope, SqlStore
from depositwatch.supervise import Episode

log = structlog.get_logger(__name__)

_KEPT = (MatchKind.REVOKED_INCOMING, MatchKind.REVOKED_OUTGOING)
_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
MAX_POOL = 200_000  # pending transactions taken from one answer; a larger pool is a hostile or broken node
MAX_LOOKUPS = 200  # eth_getTransactionByHash calls a step, for transactions that left the pool
TRANSFER = "a9059cbb"  # transfer(address,uint256)
TRANSFER_FROM = "23b872dd"  # transferFrom(address,address,uint256)
# "0x", the selector and the argument words: the only lengths kept from a pending transaction's input
_CALL_LENGTHS = {2 + 8 + 64 * 2: TRANSFER, 2 + 8 + 64 * 3: TRANSFER_FROM}
_ZERO_HEAD = "0" * 24  # the 12 upper bytes of an address word


class PendingTx:
    """One pending transaction, reduced to what matching needs (`input` only when it has the length of a
    token transfer call)."""

    __slots__ = ("hash", "input", "sender", "to", "value")

    def __init__(self, hash_: str, sender: str, to: str | None, value: int, input_: str | None = None) -> None:
        self.hash = hash_
        self.sender = sender
        self.to = to
        self.value = value
        self.input = input_


def _address_word(word: str) -> bytes | None:
    if len(word) != 64 or not word.startswith(_ZERO_HEAD):
        return None
    try:
        key = bytes.fromhex(word[24:])
    except ValueError:
        return None
    return key if len(key) == 20 else None  # fromhex skips spaces


def token_call(data: str, sender: str) -> tuple[bytes, bytes, int] | None:
    """`(from, to, amount)` of an ERC-20 `transfer` (from the transaction's sender) or `transferFrom` call;
    None for anything else (another length or selector, an address word with upper bytes set, not hex)."""
    selector = _CALL_LENGTHS.get(len(data)) if isinstance(data, str) and data[:2] in ("0x", "0X") else None
    if selector is None or data[2:10].lower() != selector:
        return None
    words = [data[n : n + 64] for n in range(10, len(data), 64)]
    try:
        amount = int(words[-1], 16)  # one 32-byte word: at most 2**256 - 1
    except ValueError:
        return None
    if not all(c in "0123456789abcdefABCDEF" for c in words[-1]):
        return None  # int() takes "_" and spaces
    accounts = [_address_word(word) for word in words[:-1]]
    if any(a is None for a in accounts):
        return None
    if selector == TRANSFER:
        frm = _address_word(sender[2:].rjust(64, "0"))
        if frm is None:
            return None
        accounts.insert(0, frm)
    frm_key, to_key = accounts
    assert frm_key is not None and to_key is not None
    return frm_key, to_key, amount


def parse_txpool(answer: Any, chain: str) -> dict[str, PendingTx]:
    """The `pending` part of a `txpool_content` answer, by hash; raises BadNodeAnswer when malformed."""
    where = f"chain {chain}: txpool_content"
    if not isinstance(answer, dict) or not isinstance(answer.get("pending"), dict):
        raise BadNodeAnswer(f"{where}: the answer has no `pending` object")
    found: dict[str, PendingTx] = {}
    for sender, by_nonce in answer["pending"].items():
        if not isinstance(sender, str) or not _ADDRESS.match(sender) or not isinstance(by_nonce, dict):
            raise BadNodeAnswer(f"{where}: sender {sender!r:.60} is not an address with transactions by nonce")
        for tx in by_nonce.values():
            if len(found) >= MAX_POOL:
                raise BadNodeAnswer(f"{where}: more than {MAX_POOL} pending transactions")
            if not isinstance(tx, dict):
                raise BadNodeAnswer(f"{where}: a transaction of {sender} is not an object")
            tx_hash, frm, to, value = tx.get("hash"), tx.get("from", sender), tx.get("to"), tx.get("value")
            if not isinstance(tx_hash, str) or not _HASH.match(tx_hash):
                raise BadNodeAnswer(f"{where}: hash {tx_hash!r:.80} is not 32 bytes of hex")
            if not isinstance(frm, str) or frm.lower() != sender.lower():
                raise BadNodeAnswer(f"{where}: transaction {tx_hash} is listed under {sender} but from {frm!r:.60}")
            if to is not None and (not isinstance(to, str) or not _ADDRESS.match(to)):
                raise BadNodeAnswer(f"{where}: transaction {tx_hash} has recipient {to!r:.60}")
            if not isinstance(value, str) or not _QUANTITY.match(value):
                raise BadNodeAnswer(f"{where}: transaction {tx_hash} has value {value!r:.80}")
            data = tx.get("input", tx.get("data"))
            if data is not None and not isinstance(data, str):
                raise BadNodeAnswer(f"{where}: transaction {tx_hash} has input {data!r:.60}")
            found[tx_hash.lower()] = PendingTx(
                tx_hash.lower(),
                sender.lower(),
                to.lower() if to else None,
                int(value, 16),
                data if data is not None and len(data) in _CALL_LENGTHS else None,
            )
    return found


class PendingWatcher:
    """Watches one EVM node's pending pool for one chain; `run()` until cancelled."""

    def __init__(
        self,
        source: EvmSource,
        store: SqlStore,
        registry: AddressRegistry,
        policy: ChainPolicy,
        scope: Scope,
        caught_up: Callable[[], bool],
        *,
        drop_grace: float = 60.0,
    ) -> None:
        self.source = source
        self.store = store
        self.registry = registry
        self.policy = policy
        self.scope = scope
        self.chain = source.name
        self.caught_up = caught_up
        self.drop_grace = drop_grace
        self.pending_tokens = source.config.pending_tokens
        self.known: set[str] = set()  # pool hashes already looked at
        self._ids_by_tx: dict[str, list[str]] = {}  # match ids of transactions seen in the pool
        self._absent_since: dict[str, float] = {}  # tx hash -> when it was first missed from the pool
        self._book_version = registry.version
        self._resumed = False  # whether the sightings an earlier watcher recorded were taken over
        self._log = log.bind(chain=self.chain, scope=scope.name)

    async def offered(self) -> bool:
        """Whether the node serves `txpool_content`; said in the log either way."""
        ((result, error),) = await self.source.rpc.replies([Call("txpool_content", (), "the pending pool")])
        if error is None and isinstance(result, dict) and isinstance(result.get("pending"), dict):
            self._log.info("the node offers pending transactions: watching them (txpool_content)")
            return True
        reason = f"error {error.code}: {error.message[:200]}" if error is not None else f"answer {result!r:.100}"
        self._log.warning(
            "the node offers no pending transactions (txpool_content): alerts come from blocks only", reason=reason
        )
        return False

    async def step(self) -> int:
        """Read the pool once; return how many alert messages were queued (new and retracted)."""
        if not self._resumed:
            await self._resume()
        if self.registry.version != self._book_version:
            self._book_version = self.registry.version
            self.known.clear()  # the book changed: every pending transaction deserves another look
        pool = parse_txpool(await self.source.rpc.call("txpool_content", (), "the pending pool"), self.chain)
        queued = 0
        for tx_hash in pool.keys() & self._absent_since.keys():
            del self._absent_since[tx_hash]  # back (or still) in the pool
        now = time.monotonic()
        for tx_hash in self._ids_by_tx.keys() - pool.keys():
            self._absent_since.setdefault(tx_hash, now)
        self.known &= pool.keys() | self._ids_by_tx.keys()
        new = [tx for tx_hash, tx in pool.items() if tx_hash not in self.known]
        self.known.update(tx.hash for tx in new)
        matches = await self._match(new)
        if matches:
            queued += await self.store.record_mempool(self.scope, self.policy, matches)
            for match in matches:
                self._ids_by_tx.setdefault(match.transfer.txid, []).append(match.id)
                self._log.info("pending match", kind=str(match.kind), txid=match.transfer.txid)
        queued += await self._retract_gone()
        return queued

    async def _resume(self) -> None:
        """Watch the transactions of the sightings still unconfirmed in the store, recorded before a
        restart or by the instance that led the chain before this one: those gone from the pool are
        looked up and retracted as if this watcher had recorded them."""
        for match_id, txid in await self.store.mempool_matches(self.scope, self.chain):
            ids = self._ids_by_tx.setdefault(txid.lower(), [])
            if match_id not in ids:
                ids.append(match_id)
        self._resumed = True
        if self._ids_by_tx:
            self._log.info("unconfirmed pending sightings taken over from the store", count=len(self._ids_by_tx))

    async def _match(self, txs: list[PendingTx]) -> list[Match]:
        book = self.registry.book(self.chain)
        if not book.revoked or not txs:
            return []
        native = self.source.native
        transfers = []
        unlisted: set[str] = set()
        for tx in txs:
            if tx.to is None:
                continue
            if tx.value > 0:
                sender, recipient = bytes.fromhex(tx.sender[2:]), bytes.fromhex(tx.to[2:])
                if sender in book.revoked or recipient in book.revoked:
                    transfers.append(_transfer(native, tx.value, tx.hash, sender, recipient))
            called = token_call(tx.input, tx.sender) if tx.input is not None and self.pending_tokens else None
            if called is None:
                continue
            frm, to, amount = called
            if frm not in book.revoked and to not in book.revoked:
                continue
            asset = self.source.tokens.get(tx.to)
            if asset is None:
                if not self.source.config.any_tokens:
                    continue
                asset = Asset(PLACEHOLDER_SYMBOL, 0, tx.to, listed=False)  # named below
                unlisted.add(tx.to)
            transfers.append(_transfer(asset, amount, tx.hash, frm, to))
        if unlisted:
            assets = await self.source.unlisted.assets(unlisted)
            transfers = [
                t
                if t.asset.listed or t.asset.contract is None
                else dataclasses.replace(t, asset=assets[t.asset.contract])
                for t in transfers
            ]
        found = match_transfers(self.chain, transfers, book, int(time.time()), None)
        return [
            m
            if m.transfer.asset.contract is None
            else dataclasses.replace(
                m, id=pending_token_id(self.chain, m.kind, m.transfer.txid, m.transfer.asset.contract)
            )
            for m in found
            if m.kind in _KEPT
        ]

    async def _retract_gone(self) -> int:
        """Retract the matches of transactions gone from the pool for `drop_grace` that the node no longer
        knows (dropped, or replaced by another transaction of the same sender and nonce)."""
        now = time.monotonic()
        due = [h for h, since in self._absent_since.items() if now - since >= self.drop_grace][:MAX_LOOKUPS]
        if not due or not self.caught_up():
            return 0
        answers = await self.source.rpc.replies(
            [Call("eth_getTransactionByHash", (tx_hash,), f"transaction {tx_hash}") for tx_hash in due]
        )
        gone: list[str] = []
        mined: list[str] = []
        for tx_hash, (result, error) in zip(due, answers, strict=True):
            if error is not None:
                raise BadNodeAnswer(f"chain {self.chain}: eth_getTransactionByHash {tx_hash}: {error.message[:200]}")
            if result is not None and not isinstance(result, dict):
                raise BadNodeAnswer(f"chain {self.chain}: eth_getTransactionByHash {tx_hash}: answer {result!r:.80}")
            if result is None:
                gone.append(tx_hash)
            elif result.get("blockNumber") is None:
                continue  # still pending somewhere: keep watching
            else:
                mined.append(tx_hash)
                continue
            self._absent_since.pop(tx_hash, None)
        gone += await self._failed(mined)
        retracted = 0
        ids = [match_id for tx_hash in gone for match_id in self._ids_by_tx.get(tx_hash, ())]
        if ids:
            retracted = await self.store.drop_mempool(self.scope, self.policy, ids)
            self._log.info("pending transactions dropped or replaced: matches retracted", count=retracted)
        for tx_hash in due:
            if tx_hash not in self._absent_since:
                self._ids_by_tx.pop(tx_hash, None)
                self.known.discard(tx_hash)
        return retracted

    async def _failed(self, mined: list[str]) -> list[str]:
        """The mined transactions whose receipt says they failed (status 0); each mined transaction with a
        receipt is settled (no longer watched), one without a receipt yet is looked at again."""
        if not mined:
            return []
        answers = await self.source.rpc.replies(
            [Call("eth_getTransactionReceipt", (tx_hash,), f"receipt of {tx_hash}") for tx_hash in mined]
        )
        failed: list[str] = []
        for tx_hash, (receipt, error) in zip(mined, answers, strict=True):
            if error is not None:
                raise BadNodeAnswer(f"chain {self.chain}: eth_getTransactionReceipt {tx_hash}: {error.message[:200]}")
            if receipt is None:
                continue  # not served yet: look again
            status = receipt.get("status") if isinstance(receipt, dict) else None
            if status not in ("0x0", "0x1"):
                raise BadNodeAnswer(f"chain {self.chain}: eth_getTransactionReceipt {tx_hash}: status {status!r:.40}")
            if status == "0x0":
                failed.append(tx_hash)
            self._absent_since.pop(tx_hash, None)
        return failed

    async def run(self) -> None:
        """Step every `poll_interval` until cancelled; returns at once when the node offers no pool.

        Node trouble is logged at most once a minute and retried with backoff."""
        if not await self.offered():
            return
        interval = self.source.config.poll_interval
        trouble = Episode(
            self._log,
            "pending watcher: node trouble, retrying",
            "pending watcher: node connection restored",
            first_backoff=interval,
        )
        while True:
            try:
                await self.step()
            except ChainError as exc:
                await asyncio.sleep(trouble.failed(exc))
                continue
            trouble.recovered()
            await asyncio.sleep(interval)


def _transfer(asset: Asset, amount: int, txid: str, sender: bytes, recipient: bytes) -> Transfer:
    return Transfer(
        asset=asset,
        amount=amount,
        txid=txid,
        index=None,
        to_key=recipient,
        from_key=sender,
        from_address=_checksum(sender),
        to_address=_checksum(recipient),
    )
