"""Shared parts of the proof suites: the CI and full forms, the daemon as a subprocess, traffic on the
test chains with the expected matches computed from what was sent, and the end-of-run checks.

Expected matches are derived by the test alone: from the transactions it sent (sender, recipient,
value), the node's receipts (status, log indexes) and the address book it wrote, with the rules of
the design (a transfer to a revoked address at or after its revocation time alerts, before it is a
deposit; a transfer from a revoked address is a sweep). The pipeline's output is then compared with
that, never with itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depositwatch.addressbook import ChainDirectory, ChainInfo, read_import_csv
from depositwatch.devnet import (
    Anvil,
    call_data,
    deploy_token,
    impersonate,
    mint_token,
    rpc,
    send_transaction,
    set_balance,
)
from depositwatch.models import match_id, pending_token_id
from depositwatch.store import Scope, SqlStore, open_store
from tests.btcnode.chain import ChainRuleError
from tests.receivers import WEBHOOK_SECRET, Received, Receiver, Reply
from tests.util import NotifySocket, free_port

# --- the two forms --------------------------------------------------------------------------------

FULL = os.environ.get("DEPOSITWATCH_PROOF", "").strip().lower() == "full"
FORM = "full" if FULL else "ci"
SEED = int(os.environ.get("DEPOSITWATCH_PROOF_SEED", "20240611"))


def form_param(timeout_ci: float, timeout_full: float) -> pytest.MarkDecorator:
    """Parametrize a proof test with its form: `ci` (always runs) or `full` (marked slow; DEPOSITWATCH_PROOF=full)."""
    marks = [pytest.mark.timeout(timeout_full if FULL else timeout_ci)]
    if FULL:
        marks.append(pytest.mark.slow)
    return pytest.mark.parametrize("form", [pytest.param(FORM, marks=marks, id=FORM)])


def report(title: str, lines: Iterable[str]) -> None:
    """Print a block of figures (shown with `pytest -s`, and kept in the captured output otherwise)."""
    print(f"\n== {title} ==", flush=True)
    for line in lines:
        print("  " + line, flush=True)


# --- the address book ------------------------------------------------------------------------------

LONG_AGO = 1_577_836_800  # 2020-01-01: revoked before any test block
FAR_FUTURE = 4_102_444_800  # 2100-01-01: revoked "later": a transfer now is still a deposit


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class Book:
    """A chain's watched addresses, keyed as the test sees them (lowercase hex of the key bytes)."""

    chain: str
    kind: str  # "evm" or "bitcoin"
    network: str | None
    revoked: dict[str, int] = field(default_factory=dict)  # key hex -> revoked_at
    active: set[str] = field(default_factory=set)
    text: dict[str, str] = field(default_factory=dict)  # key hex -> address as written in the CSV

    def add(self, key_hex: str, address: str, revoked_at: int | None = None) -> None:
        self.text[key_hex] = address
        if revoked_at is None:
            self.active.add(key_hex)
        else:
            self.revoked[key_hex] = revoked_at

    def classify(self, to: str | None, sender: str | None, when: int) -> list[tuple[str, str]]:
        """(kind, watched key) pairs a transfer makes, by the design's rules."""
        found = []
        if to is not None:
            at = self.revoked.get(to)
            if at is not None and when >= at:
                found.append(("revoked_incoming", to))
            elif at is not None or to in self.active:
                found.append(("deposit", to))
        if sender is not None:
            at = self.revoked.get(sender)
            if at is not None and when >= at:
                found.append(("revoked_outgoing", sender))
        return found

    def csv(self) -> str:
        rows = ["chain,address,status,label,owner,revoked_at,reason"]
        for i, (key, address) in enumerate(sorted(self.text.items())):
            at = self.revoked.get(key)
            if at is None:
                rows.append(f"{self.chain},{address},active,a{i},cust-{i},,")
            else:
                rows.append(f"{self.chain},{address},revoked,r{i},cust-{i},{iso(at)},breach")
        return "\n".join(rows) + "\n"

    def directory(self) -> ChainDirectory:
        return ChainDirectory({self.chain: ChainInfo(self.kind, self.network)})


async def import_book(store_url: str, book: Book) -> None:
    """Write the book into the store through the importer's own parser."""
    entries = read_import_csv(book.csv(), book.directory())
    store = await open_store(store_url, migrate=True)
    try:
        await store.import_addresses(entries)
    finally:
        await store.close()


# --- what should come out --------------------------------------------------------------------------


@dataclass
class Want:
    """One match the pipeline must record, and alert on if it is not a deposit.

    A token transfer made by a plain `transfer` call (`contract` set) may have been seen pending first:
    its alert then has the pending sighting's id (`pending_id`), else the block's. Which one is read from
    the store once the run is over (`resolve_ids`); the checks then hold every want to exactly that id.
    """

    chain: str
    kind: str
    txid: str
    index: int | None
    key: str
    amount: int
    height: int
    contract: str | None = None
    chosen: str | None = None

    @property
    def triple(self) -> tuple[str, str, int | None]:
        return (self.kind, self.txid.lower(), self.index)

    @property
    def alert(self) -> bool:
        return self.kind != "deposit"

    @property
    def block_id(self) -> str:
        return match_id(self.chain, self.kind, self.txid, self.index)  # type: ignore[arg-type]

    @property
    def pending_id(self) -> str | None:
        if self.contract is None or not self.alert:
            return None
        return pending_token_id(self.chain, self.kind, self.txid, self.contract)  # type: ignore[arg-type]

    @property
    def id(self) -> str:
        return self.chosen or self.block_id


def resolve_ids(rows: Iterable[dict[str, Any]], wants: Iterable[Want]) -> Counter[str]:
    """Hold each want that may have been seen pending to the id its stored match has (the block's or the
    pending sighting's, nothing else); return how many took each."""
    by_triple = {(r["kind"], r["txid"].lower(), r["idx"]): r for r in rows}
    taken: Counter[str] = Counter()
    for want in wants:
        if want.pending_id is None:
            continue
        row = by_triple.get(want.triple)
        if row is None:
            continue  # not recorded: the checks say so
        assert row["id"] in (want.block_id, want.pending_id), (want.triple, row["id"])
        want.chosen = row["id"]
        taken["pending" if row["id"] == want.pending_id else "block"] += 1
    return taken


# --- processes -------------------------------------------------------------------------------------


class Proc:
    """One run of the `depositwatch` CLI as a subprocess; its stdout and stderr go to its own log file."""

    def __init__(self, argv: list[str], log: Path, notify: NotifySocket | None) -> None:
        self.argv = argv
        self.log = log
        self.notify = notify
        env = {**os.environ}
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify.path)
        with log.open("wb") as sink:
            self.popen = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    async def wait(self, timeout: float) -> int:
        """The exit code; AssertionError (with the log) if it does not exit in time."""
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.argv[3:]} did not exit within {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)
        return int(self.popen.returncode)

    async def terminate(self, timeout: float = 30.0) -> int:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    def ready(self) -> bool:
        return self.notify is not None and self.notify.said("READY=1")

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive or time.monotonic() > deadline:
                raise AssertionError(f"the daemon is not ready (exit {self.returncode}):\n{self.tail()}")
            await asyncio.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records (other lines, such as a traceback, are left out)."""
        found = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def close(self) -> None:
        if self.alive:
            self.kill()
        if self.notify is not None:
            self.notify.close()


class Runner:
    """Starts CLI runs, numbered, each with its own log (and notify socket for `run`)."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp = tmp
        self.name = name
        self.procs: list[Proc] = []

    def spawn(self, *args: str, notify: bool = False) -> Proc:
        n = len(self.procs)
        sock = NotifySocket(self.tmp / f"{self.name}-{n}.sock") if notify else None
        argv = [sys.executable, "-m", "depositwatch", *args]
        proc = Proc(argv, self.tmp / f"{self.name}-{n}.log", sock)
        self.procs.append(proc)
        return proc

    def daemon(self, config: Path) -> Proc:
        return self.spawn("--config", str(config), "--log-format", "json", "run", notify=True)

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


async def until_done(
    progress: Callable[[], int], target: int, what: str, *, stall: float = 30.0, cap: float = 900.0
) -> float:
    """Wait until `progress()` reaches `target`; fail when it stops moving for `stall` seconds (a stuck
    pipeline, not a slow one) or after `cap` seconds. Returns the seconds it took."""
    began = last_move = time.monotonic()
    seen = progress()
    while seen < target:
        now = time.monotonic()
        if now - last_move > stall or now - began > cap:
            raise AssertionError(f"{what}: stuck at {seen} of {target} for {now - last_move:.0f} s")
        await asyncio.sleep(0.1)
        current = progress()
        if current != seen:
            seen, last_move = current, time.monotonic()
    return time.monotonic() - began


# --- receivers -------------------------------------------------------------------------------------


def jittery(rng: random.Random, slow_share: float = 0.3, slow: tuple[float, float] = (0.15, 0.5)) -> Any:
    """A responder that acknowledges everything, some answers slowly (so a kill can land mid-delivery)."""

    def respond(_req: Received, _rx: Receiver) -> Reply:
        delay = rng.uniform(*slow) if rng.random() < slow_share else 0.0
        return Reply(200, delay=delay)

    return respond


@dataclass
class AlertFigures:
    deliveries: int
    alerts: int
    repeats: int
    events: Counter[str]


def check_alerts(receiver: Receiver, wants: Iterable[Want], *, mode: str | None = None) -> AlertFigures:
    """The acknowledged `detected` alerts are exactly the expected alerts; repeats are byte-identical."""
    alerts = {w.id: w for w in wants if w.alert}
    accepted = receiver.accepted
    bodies = [r.json() for r in accepted]
    detected = [b for b in bodies if b["event"] == "detected"]
    got = {b["id"] for b in detected}
    missing = sorted(set(alerts) - got)
    extra = sorted(got - set(alerts))
    assert not missing and not extra, (
        f"alert ids differ: {len(missing)} missing {[alerts[i].triple for i in missing][:5]}, "
        f"{len(extra)} unexpected {[(b['kind'], b['txid'], b['index']) for b in detected if b['id'] in extra][:5]}"
    )
    for body in detected:
        want = alerts[body["id"]]
        if body["id"] == want.pending_id and body["id"] != want.block_id:  # seen pending: no log index yet
            assert body["mempool"] is True and body["index"] is None, body
            assert (body["kind"], body["txid"].lower()) == want.triple[:2], body
        else:
            assert (body["kind"], body["txid"].lower(), body["index"]) == want.triple, body
        assert int(body["amount"]) == want.amount, (body, want)
        if mode is not None:
            assert body["mode"] == mode, body
    # Any repeat carries the same idempotency key and the same body.
    by_key: dict[str | None, bytes] = {}
    for r in accepted:
        assert r.key is not None, r.headers
        assert by_key.setdefault(r.key, r.body) == r.body, f"two bodies under idempotency key {r.key}"
    keys_of: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for r, b in zip(accepted, bodies, strict=True):
        assert r.key == b["idempotency_key"], (r.key, b["idempotency_key"])
        keys_of[(b["id"], b["event"])].add(r.key)
    doubled = {k: v for k, v in keys_of.items() if len(v) > 1}
    assert not doubled, f"one alert event under several idempotency keys: {doubled}"
    assert not any(b["event"] == "retracted" for b in bodies), "a retraction was sent, but no reorg happened"
    return AlertFigures(len(accepted), len(got), len(accepted) - len(by_key), Counter(b["event"] for b in bodies))


# --- the store -------------------------------------------------------------------------------------


@dataclass
class StoreView:
    cursor: tuple[int, str] | None
    blocks: dict[int, str]
    matches: list[dict[str, Any]]
    outbox: list[Any]


async def store_view(store_url: str, cursor_name: str, scope: Scope) -> StoreView:
    store = await open_store(store_url)
    try:
        return await read_view(store, cursor_name, scope)
    finally:
        await store.close()


async def read_view(store: SqlStore, cursor_name: str, scope: Scope) -> StoreView:
    cursor = await store.get_cursor(cursor_name)
    async with store.db.read() as conn:
        rows = await conn.fetch("SELECT height, hash FROM blocks WHERE cursor = $1", cursor_name)
    return StoreView(
        None if cursor is None else (cursor.height, cursor.hash),
        {int(r["height"]): str(r["hash"]) for r in rows},
        await store.matches(scope),
        await store.outbox.messages(limit=10_000_000),
    )


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease now (an unexpired row of the lease table)."""

    holder: str
    epoch: int

    @property
    def pid(self) -> int:
        """The holder's process id (holder ids are `host:pid:random`)."""
        return int(self.holder.rsplit(":", 2)[1])


async def lease_holder(store_url: str, name: str) -> LeaseHolder | None:
    """The live holder of lease `name`, or None while it is free or expired."""
    store = await open_store(store_url)
    try:
        for row in await store.leases.rows():
            if row.name == name and row.expires_in > 0:
                return LeaseHolder(row.holder, row.epoch)
        return None
    finally:
        await store.close()


async def cursor_at(store_url: str, cursor_name: str) -> tuple[int, str] | None:
    store = await open_store(store_url)
    try:
        cursor = await store.get_cursor(cursor_name)
        return None if cursor is None else (cursor.height, cursor.hash)
    finally:
        await store.close()


def check_matches_subset(view: StoreView, wants: Iterable[Want]) -> None:
    """No wrong match: everything recorded is expected (the run may not have seen everything yet)."""
    expected = {w.triple: w for w in wants}
    pending = {(w.kind, w.txid.lower(), w.pending_id): w for w in wants if w.pending_id is not None}
    for row in view.matches:
        triple = (row["kind"], row["txid"].lower(), row["idx"])
        want = expected.get(triple)
        if want is None and row["idx"] is None and row["block_height"] is None:  # a pending sighting
            want = pending.get((row["kind"], row["txid"].lower(), row["id"]))
        assert want is not None, f"a match nobody expected: {triple} at {row['block_height']}"
        assert row["status"] != "retracted", f"retracted without a reorg: {triple}"
        assert int(row["amount"]) == want.amount and row["key"].hex() == want.key, (row, want)
        if row["block_height"] is not None:
            assert row["block_height"] == want.height, (row, want)


def check_store(
    view: StoreView, wants: list[Want], node_hashes: dict[int, str], start: int, tip: tuple[int, str]
) -> dict[str, int]:
    """Cursor at the tip; every block from the start processed with the node's hash; every expected
    transfer matched exactly once; one `detected` message per alert in the outbox, none retracted."""
    assert view.cursor == tip, f"cursor {view.cursor}, node tip {tip}"
    missing = [h for h in range(start, tip[0] + 1) if h not in view.blocks]
    assert not missing, f"blocks never processed (or forgotten): {missing[:10]}"
    wrong = [h for h in range(start, tip[0] + 1) if view.blocks[h] != node_hashes[h]]
    assert not wrong, f"blocks recorded with another hash than the node's: {wrong[:10]}"
    check_matches_subset(view, wants)
    got = Counter((r["kind"], r["txid"].lower(), r["idx"]) for r in view.matches)
    expected = Counter(w.triple for w in wants)
    assert got == expected, f"matches differ: missing {list(expected - got)[:5]}, extra {list(got - expected)[:5]}"
    events: dict[str, list[str]] = defaultdict(list)
    for message in view.outbox:
        events[message.alert_id].append(message.event)
    for want in wants:
        if not want.alert:
            continue
        seq = events.get(want.id, [])
        assert seq.count("detected") == 1, f"{want.triple}: outbox events {seq}"
        assert "retracted" not in seq, f"{want.triple}: outbox events {seq}"
    return {"blocks": tip[0] - start + 1, "matches": len(view.matches), "outbox": len(view.outbox)}


# --- EVM traffic -----------------------------------------------------------------------------------

EVM_CHAIN_ID = 31337
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
EVM_REVOKED = ("0x" + "a1" * 20, "0x" + "a2" * 20)
EVM_LATE = "0x" + "a9" * 20
EVM_ACTIVE = ("0x" + "c3" * 20, "0x" + "c4" * 20)
EVM_OTHER = ("0x" + "e5" * 20, "0x" + "e6" * 20)


def evm_book(chain: str = "eth") -> Book:
    book = Book(chain, "evm", None)
    for address in EVM_REVOKED:
        book.add(address[2:], address, LONG_AGO)
    book.add(EVM_LATE[2:], EVM_LATE, FAR_FUTURE)
    for address in EVM_ACTIVE:
        book.add(address[2:], address, None)
    return book


class EvmTraffic:
    """Blocks of transfers on anvil (started with `no_mining=True`), and the matches they must make.

    Each block carries a random mix of: ETH and token transfers to revoked, late-revoked, active and
    unwatched addresses; sweeps of ETH and tokens from revoked addresses; a token `transferMany` to
    several addresses at once; a token transfer that reverts (status 0: it must match nothing).
    """

    ACTIONS = ("eth", "eth", "token", "token", "eth_sweep", "token_sweep", "many", "failing", "other")

    def __init__(self, node: Anvil, book: Book, rng: random.Random, *, pending: float = 0.0) -> None:
        self.node = node
        self.book = book
        self.rng = rng
        self.pending = pending  # up to this many seconds in the pool before the block is mined
        self.token = ""
        self.sender = ""
        self.wants: list[Want] = []
        self.blocks = 0
        self.transactions = 0
        self.kinds: Counter[str] = Counter()

    async def setup(self) -> int:
        """Deploy the token, fund the senders and the revoked addresses; return the first height to follow."""
        w3 = self.node.w3
        owner = self.node.accounts[0].address
        self.sender = self.node.accounts[1].address
        self.token = await deploy_token(w3, owner, "TT", 6)
        for holder in (self.sender, *EVM_REVOKED):
            await mint_token(w3, self.token, owner, holder, 10**15)
        for address in EVM_REVOKED:
            await set_balance(w3, address, 10**24)
            await impersonate(w3, address)
        await self.node.mine()
        return await self.node.block_number() + 1

    def _target(self) -> str:
        return self.rng.choice([*EVM_REVOKED, *EVM_REVOKED, EVM_LATE, *EVM_ACTIVE, *EVM_OTHER])

    async def _send(self, action: str) -> tuple[str, dict[str, Any]]:
        w3, rng = self.node.w3, self.rng
        amount = rng.randrange(1, 10**6)
        if action in ("eth", "other"):
            to = self._target() if action == "eth" else rng.choice(EVM_OTHER)
            tx = await send_transaction(w3, self.sender, to, value=amount * 10**9)
            return tx, {"native": (self.sender, to, amount * 10**9)}
        if action == "eth_sweep":
            sender = rng.choice(EVM_REVOKED)
            to = rng.choice([*EVM_OTHER, *EVM_REVOKED])
            tx = await send_transaction(w3, sender, to, value=amount * 10**9, gas=21_000)
            return tx, {"native": (sender, to, amount * 10**9)}
        if action in ("token", "token_sweep", "failing"):
            sender = rng.choice(EVM_REVOKED) if action == "token_sweep" else self.sender
            to = self._target()
            signature = "failingTransfer(address,uint256)" if action == "failing" else "transfer(address,uint256)"
            data = call_data(signature, ("address", "uint256"), (_checksum(to), amount))
            tx = await send_transaction(w3, sender, self.token, data=data, gas=200_000)
            return tx, {}
        # many: one transaction, one Transfer log per recipient
        recipients = [self._target() for _ in range(rng.randint(2, 4))]
        amounts = [rng.randrange(1, 10**6) for _ in recipients]
        data = call_data(
            "transferMany(address[],uint256[])",
            ("address[]", "uint256[]"),
            ([_checksum(r) for r in recipients], amounts),
        )
        tx = await send_transaction(w3, self.sender, self.token, data=data, gas=100_000 + 40_000 * len(recipients))
        return tx, {}

    async def block(self, size: int | None = None) -> int:
        """Send 1-4 transactions, mine them into one block, record the matches; return its height."""
        size = size if size is not None else self.rng.randint(1, 4)
        sent = []
        for _ in range(size):
            action = self.rng.choice(self.ACTIONS)
            sent.append((action, *await self._send(action)))
        if self.pending:
            await asyncio.sleep(self.rng.uniform(0, self.pending))
        await self.node.mine()
        height = await self.node.block_number()
        block = await rpc(self.node.w3, "eth_getBlockByNumber", hex(height), False)
        if len(block["transactions"]) != len(sent):
            raise AssertionError(f"block {height} holds {len(block['transactions'])} transactions, {len(sent)} sent")
        when = int(block["timestamp"], 16)
        for action, tx, info in sent:
            receipt = await rpc(self.node.w3, "eth_getTransactionReceipt", tx)
            assert receipt is not None and int(receipt["blockNumber"], 16) == height, (tx, receipt)
            ok = receipt["status"] == "0x1"
            assert ok == (action != "failing"), (action, receipt["status"])
            self.kinds[action] += 1
            if not ok:
                continue
            if "native" in info:
                sender, to, value = info["native"]
                self._want(tx, None, to, sender, value, height, when)
            for entry in receipt["logs"]:
                topics = entry["topics"]
                if entry["address"].lower() != self.token.lower() or topics[0] != TRANSFER_TOPIC or len(topics) != 3:
                    continue
                sender, to = "0x" + topics[1][-40:], "0x" + topics[2][-40:]
                # A plain `transfer` call may be seen pending first (its alert then keeps that id).
                contract = self.token.lower() if action in ("token", "token_sweep") else None
                self._want(tx, int(entry["logIndex"], 16), to, sender, int(entry["data"], 16), height, when, contract)
        self.blocks += 1
        self.transactions += len(sent)
        return height

    def _want(
        self,
        tx: str,
        index: int | None,
        to: str,
        sender: str,
        amount: int,
        height: int,
        when: int,
        contract: str | None = None,
    ) -> None:
        for kind, key in self.book.classify(to.lower()[2:], sender.lower()[2:], when):
            self.wants.append(Want(self.book.chain, kind, tx.lower(), index, key, amount, height, contract))

    async def run(self, stop: asyncio.Event, gap: tuple[float, float] = (0.05, 0.35)) -> None:
        """Make blocks until `stop` is set."""
        while not stop.is_set():
            await self.block()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*gap))

    async def hashes(self, start: int, stop: int) -> dict[int, str]:
        """The node's block hashes for heights start..stop."""
        found = {}
        for height in range(start, stop + 1):
            block = await rpc(self.node.w3, "eth_getBlockByNumber", hex(height), False)
            found[height] = block["hash"]
        return found

    async def tip(self) -> tuple[int, str]:
        block = await rpc(self.node.w3, "eth_getBlockByNumber", "latest", False)
        return int(block["number"], 16), block["hash"]


def _checksum(address: str) -> str:
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address(address))


def evm_chain_toml(
    rpc_url: str,
    *,
    token: str,
    start: int,
    name: str = "eth",
    batch_blocks: int = 3,
    confirmations: int = 3,
    poll_interval: float = 0.1,
    pending_tokens: bool = False,
    drop_grace: float | None = None,
) -> str:
    """The chain's config. Pending token calls are off unless asked: a token alert first seen pending
    keeps the pending id, which the checks resolve from the store (`resolve_ids`) where a test asks."""
    return (
        f'[[chains]]\nname = "{name}"\nkind = "evm"\nchain_id = {EVM_CHAIN_ID}\nrpc_urls = ["{rpc_url}"]\n'
        f"confirmations = {confirmations}\npoll_interval = {poll_interval}\nbatch_blocks = {batch_blocks}\n"
        f"start_height = {start}\nreorg_depth = 10000\nmax_lag_blocks = 1000\n"
        f'tokens = [{{ symbol = "TT", contract = "{token}", decimals = 6 }}]\n'
        f"pending_tokens = {'true' if pending_tokens else 'false'}\n"
        + (f"mempool_drop_grace = {drop_grace}\n" if drop_grace is not None else "")
    )


def config_toml(
    store_url: str,
    chains: str,
    sink_url: str | None,
    *,
    http: bool = False,
    sink_timeout: float = 3.0,
    kinds: tuple[str, ...] = ("revoked_incoming", "revoked_outgoing", "deposit"),
    lease_ttl: float | None = None,
) -> str:
    text = (
        f'[store]\nurl = "{store_url}"\n'
        + (f'[http]\nlisten = "127.0.0.1:{free_port()}"\n' if http else "[http]\nenabled = false\n")
        + "[alerts]\npoll_interval = 0.05\nshutdown_grace = 2\n"
        + (f"[ha]\nlease_ttl = {lease_ttl}\n" if lease_ttl is not None else "")
        + chains
    )
    if sink_url is not None:
        text += (
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{sink_url}"\n'
            f'secret = {{ value = "{WEBHOOK_SECRET}" }}\n'
            f"timeout = {sink_timeout}\nkinds = {json.dumps(list(kinds))}\n"
            "retry = { max_attempts = 1000, initial_backoff = 0.05, max_backoff = 0.5 }\n"
        )
    return text


# --- Bitcoin traffic -------------------------------------------------------------------------------


def _btc_scripts() -> dict[str, Any]:
    from tests.btcnode import p2pkh, p2sh, p2tr, p2wpkh, p2wsh

    return {
        "revoked": (p2wpkh(b"\xa1" * 20), p2tr(b"\xa2" * 32), p2pkh(b"\xa3" * 20)),
        "late": p2sh(b"\xa9" * 20),
        "active": (p2wpkh(b"\xc3" * 20), p2wsh(b"\xc4" * 32)),
        "other": (p2wpkh(b"\xe5" * 20), p2tr(b"\xe6" * 32)),
    }


BTC = _btc_scripts()


def btc_book(chain: str = "btc") -> Book:
    from tests.btcnode import script_to_address

    book = Book(chain, "bitcoin", "regtest")
    for script in BTC["revoked"]:
        book.add(script.hex(), str(script_to_address(script, "regtest")), LONG_AGO)
    book.add(BTC["late"].hex(), str(script_to_address(BTC["late"], "regtest")), FAR_FUTURE)
    for script in BTC["active"]:
        book.add(script.hex(), str(script_to_address(script, "regtest")), None)
    return book


class BtcTraffic:
    """Blocks of payments on the regtest stand-in, left in the mempool a moment before they are mined.

    Payments go to revoked, late-revoked, active and unwatched scripts of every type; sweeps spend the
    revoked (and late-revoked) outputs paid earlier, change to an unwatched script.
    """

    def __init__(self, chain: Any, book: Book, rng: random.Random) -> None:
        self.chain = chain
        self.book = book
        self.rng = rng
        self.wants: list[Want] = []
        self.blocks = 0
        self.transactions = 0
        self.kinds: Counter[str] = Counter()
        self.paid: dict[tuple[str, int], tuple[bytes, int]] = {}  # watched outputs paid, by outpoint

    def setup(self) -> int:
        self.chain.mine(110)
        return int(self.chain.height) + 1

    def _target(self) -> bytes:
        return bytes(self.rng.choice([*BTC["revoked"], *BTC["revoked"], BTC["late"], *BTC["active"], *BTC["other"]]))

    def _send(self) -> Any:
        rng, chain = self.rng, self.chain
        sources = [s for s in (*BTC["revoked"], BTC["late"]) if chain.coins(s)]
        if sources and rng.random() < 0.35:
            source = rng.choice(sources)
            coins = chain.coins(source)
            take = coins if rng.random() < 0.5 else coins[:1]
            total = sum(coin.value for _, coin in take)
            to = rng.choice([*BTC["other"], *BTC["revoked"]])
            try:
                tx = chain.send([(to, total - 1_000)], from_script=source, change_script=BTC["other"][0])
            except ChainRuleError as exc:
                # after a reorg the very same sweep (same coins, same outputs) can already be mined on
                # the new branch: the node refuses it as Core does (-27), and a payment is sent instead
                if exc.code != -27:
                    raise
            else:
                self.kinds["sweep"] += 1
                return tx
        outputs = [(self._target(), rng.randrange(10_000, 5_000_000)) for _ in range(rng.randint(1, 3))]
        self.kinds["pay"] += 1
        return chain.send(outputs)

    async def block(self, pause: tuple[float, float] = (0.0, 0.4)) -> int:
        """1-3 transactions, a moment in the mempool, then one block; record the matches."""
        sent = [self._send() for _ in range(self.rng.randint(1, 3))]
        await asyncio.sleep(self.rng.uniform(*pause))
        (record,) = self.chain.mine(1)
        mined = {tx.txid for tx in record.txs}
        assert all(tx.txid in mined for tx in sent), "a transaction was left out of the block"
        when = record.header.time
        for tx in sent:
            for vin, txin in enumerate(tx.inputs):
                paid = self.paid.pop((txin.prev_txid_hex, txin.prev_vout), None)
                if paid is not None:
                    script, value = paid
                    for kind, key in self.book.classify(None, script.hex(), when):
                        self.wants.append(Want(self.book.chain, kind, tx.txid, vin, key, value, record.height))
            for vout, out in enumerate(tx.outputs):
                key = out.script.hex()
                if key in self.book.revoked:
                    self.paid[(tx.txid, vout)] = (out.script, out.value)
                for kind, watched in self.book.classify(key, None, when):
                    self.wants.append(Want(self.book.chain, kind, tx.txid, vout, watched, out.value, record.height))
        self.blocks += 1
        self.transactions += len(sent)
        return int(record.height)

    async def run(self, stop: asyncio.Event, gap: tuple[float, float] = (0.05, 0.3)) -> None:
        while not stop.is_set():
            await self.block()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*gap))

    def hashes(self, start: int, stop: int) -> dict[int, str]:
        return {h: str(self.chain.block_at(h).hash) for h in range(start, stop + 1)}

    def tip(self) -> tuple[int, str]:
        return int(self.chain.height), str(self.chain.tip.hash)


def btc_chain_toml(
    node: Any, url: str, *, start: int, name: str = "btc", batch_blocks: int = 3, drop_grace: float | None = None
) -> str:
    return (
        f'[[chains]]\nname = "{name}"\nkind = "bitcoin"\nnetwork = "regtest"\nrpc_urls = ["{url}"]\n'
        f'rpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
        f"confirmations = 3\npoll_interval = 0.1\nbatch_blocks = {batch_blocks}\nstart_height = {start}\n"
        "reorg_depth = 10000\nmax_lag_blocks = 1000\nmempool = true\n"
        + (f"mempool_drop_grace = {drop_grace}\n" if drop_grace is not None else "")
    )


# --- the reorg-aware oracle ---------------------------------------------------------------------------
#
# With reorgs, an alert id may see `detected`, `retracted`, `detected` again (a transaction mined anew),
# so the checks above (one `detected`, never a retraction) hold only without reorgs. These variants
# judge each id by its last message (highest rev): a transfer of the final chain ends `confirmed`; one
# that left the chain ends `retracted`, or was never announced (it was orphaned before the daemon saw it).


def _rev(key: str) -> int:
    """The rev of an idempotency key `id:rev`."""
    return int(key.rsplit(":", 1)[1])


def last_events(bodies: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Each alert id's last event (the one with the highest rev)."""
    last: dict[str, tuple[int, str]] = {}
    for body in bodies:
        rev = _rev(body["idempotency_key"])
        if body["id"] not in last or rev > last[body["id"]][0]:
            last[body["id"]] = (rev, body["event"])
    return {alert_id: event for alert_id, (_, event) in last.items()}


def settled(receiver: Receiver, final: Iterable[Want], gone: Iterable[Want]) -> int:
    """How many ids the receiver has in their final state: `confirmed` for the final chain's, nothing or
    `retracted` for the others."""
    last = last_events(r.json() for r in receiver.accepted)
    final_ids = {w.id for w in final}
    done = sum(last.get(i) == "confirmed" for i in final_ids)
    return done + sum(last.get(i, "retracted") == "retracted" for i in {w.id for w in gone} - final_ids)


def check_alerts_after_reorgs(
    receiver: Receiver, final: list[Want], gone: list[Want], *, mode: str | None = None
) -> AlertFigures:
    """Every transfer of the final chain alerted (its last message `confirmed`, after a `detected` with
    its fields), every announced transfer that left the chain retracted under its id (its last message
    `retracted`), nothing else; no idempotency key with two bodies, no event of one rev under two keys."""
    wanted = {w.id: w for w in final}
    left = {w.id: w for w in gone if w.id not in wanted}
    accepted = receiver.accepted
    bodies = [r.json() for r in accepted]
    unknown = sorted({b["id"] for b in bodies} - set(wanted) - set(left))
    assert not unknown, f"messages for transfers nobody made: {unknown[:5]}"
    by_key: dict[str | None, bytes] = {}
    for r, body in zip(accepted, bodies, strict=True):
        assert r.key is not None and r.key == body["idempotency_key"], (r.key, body["idempotency_key"])
        assert by_key.setdefault(r.key, r.body) == r.body, f"two bodies under idempotency key {r.key}"
        if mode is not None and body["event"] == "detected":
            assert body["mode"] == mode, body
    revs: dict[tuple[str, int], set[str]] = defaultdict(set)
    for body in bodies:
        revs[(body["id"], _rev(body["idempotency_key"]))].add(body["event"])
    doubled = {k: v for k, v in revs.items() if len(v) > 1}
    assert not doubled, f"one rev with several events: {doubled}"
    last = last_events(bodies)
    for alert_id, want in wanted.items():
        assert last.get(alert_id) == "confirmed", f"{want.triple} at {want.height}: last message {last.get(alert_id)}"
    detected = [b for b in bodies if b["event"] == "detected"]
    for body in detected:
        assert body["id"] in wanted or body["id"] in left, body
        want = wanted.get(body["id"]) or left[body["id"]]
        assert (body["kind"], body["txid"].lower(), body["index"]) == want.triple, body
        assert int(body["amount"]) == want.amount, (body, want)
    missing = sorted(w.triple for i, w in wanted.items() if w.alert and i not in {b["id"] for b in detected})
    assert not missing, f"final-chain alerts never detected: {missing[:5]}"
    unretracted = sorted(w.triple for i, w in left.items() if last.get(i, "retracted") != "retracted")
    assert not unretracted, f"transfers gone from the chain without a retraction: {unretracted[:5]}"
    events = Counter(b["event"] for b in bodies)
    return AlertFigures(len(accepted), len({b["id"] for b in detected}), len(accepted) - len(by_key), events)


def check_store_after_reorgs(
    view: StoreView,
    final: list[Want],
    gone: list[Want],
    node_hashes: dict[int, str],
    start: int,
    tip: tuple[int, str],
) -> dict[str, int]:
    """Cursor at the final tip; every block from the start with the final chain's hash; the live matches
    exactly the final chain's transfers, each once; a retracted match only for a transfer that left the
    chain (or was mined anew); each outbox id ends like its transfer (see `check_alerts_after_reorgs`)."""
    assert view.cursor == tip, f"cursor {view.cursor}, node tip {tip}"
    missing = [h for h in range(start, tip[0] + 1) if h not in view.blocks]
    assert not missing, f"blocks never processed (or forgotten): {missing[:10]}"
    wrong = [h for h in range(start, tip[0] + 1) if view.blocks[h] != node_hashes[h]]
    assert not wrong, f"blocks recorded with another hash than the final chain's: {wrong[:10]}"
    beyond = [h for h in view.blocks if h > tip[0]]
    assert not beyond, f"blocks above the tip left from an orphaned branch: {beyond[:10]}"
    wanted = {w.triple: w for w in final}
    known = {**{w.triple: w for w in gone}, **wanted}
    live = Counter()
    retracted = 0
    for row in view.matches:
        triple = (row["kind"], row["txid"].lower(), row["idx"])
        want = known.get(triple)
        assert want is not None, f"a match nobody expected: {triple} at {row['block_height']}"
        assert int(row["amount"]) == want.amount and row["key"].hex() == want.key, (row, want)
        if row["status"] == "retracted":
            retracted += 1
            continue
        assert triple in wanted, f"a transfer gone from the chain is still matched: {triple}"
        live[triple] += 1
        if row["block_height"] is not None:
            assert row["block_height"] == wanted[triple].height, (row, wanted[triple])
    expected = Counter(w.triple for w in final)
    assert live == expected, f"matches differ: missing {list(expected - live)[:5]}, extra {list(live - expected)[:5]}"
    last: dict[str, tuple[int, str]] = {}
    for message in view.outbox:
        assert message.status == "delivered", (message.alert_id, message.event, message.status)
        if message.alert_id not in last or message.rev > last[message.alert_id][0]:
            last[message.alert_id] = (message.rev, message.event)
    final_ids = {w.id for w in final}
    for want in final:
        assert last[want.id][1] == "confirmed", f"{want.triple}: last outbox event {last[want.id]}"
    for want in gone:
        if want.id not in final_ids and want.id in last:
            assert last[want.id][1] == "retracted", f"{want.triple}: last outbox event {last[want.id]}"
    blocks = tip[0] - start + 1
    return {"blocks": blocks, "matches": sum(live.values()), "retracted": retracted, "outbox": len(view.outbox)}


def btc_final_wants(chain: Any, book: Book, start: int) -> list[Want]:
    """The matches the final chain makes, from its blocks alone (the heights `start`..tip), by the
    rules `BtcTraffic` applies when it mines: after a reorg a transaction may be mined anew elsewhere."""
    wants: list[Want] = []
    paid: dict[tuple[str, int], tuple[bytes, int]] = {}
    for height in range(start, int(chain.height) + 1):
        record = chain.block_at(height)
        when = record.header.time
        for tx in record.txs[1:]:
            for vin, txin in enumerate(tx.inputs):
                spent = paid.pop((txin.prev_txid_hex, txin.prev_vout), None)
                if spent is not None:
                    script, value = spent
                    for kind, key in book.classify(None, script.hex(), when):
                        wants.append(Want(book.chain, kind, tx.txid, vin, key, value, height))
            for vout, out in enumerate(tx.outputs):
                key = out.script.hex()
                if key in book.revoked:
                    paid[(tx.txid, vout)] = (out.script, out.value)
                for kind, watched in book.classify(key, None, when):
                    wants.append(Want(book.chain, kind, tx.txid, vout, watched, out.value, height))
    return wants
