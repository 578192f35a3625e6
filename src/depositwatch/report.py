"""The incident report: funds that reached revoked addresses, per owner, chain and asset, with their sweeps.

Pure: it computes from the rows `SqlStore.reports.rows` reads and does no I/O. docs/report.md states the
rules this module implements; keep the two in step.

- A transfer is counted once, whichever scopes recorded it (live, retro, replay runs): its identity is
  (chain, lower-case transaction id, index, asset), the index being the output index (Bitcoin), the
  log index (tokens), the negative trace position (internal EVM transfers) or none (a native EVM
  transfer). Only `revoked_incoming` matches in a block count; retracted (orphaned) and mempool-only
  ones do not.
- Swept out afterwards. Bitcoin (an address key that is an output script): the very output was spent,
  as a watched output of any scope records it. Account chains (EVM, TRON: 20-byte keys): the
  `revoked_outgoing` transfers of the same asset from the same address in the block of its first
  counted landing or later, capped at what landed on that address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from depositwatch.models import Asset
from depositwatch.store.reporting import ReportRows

ACCOUNT_KEY_LENGTH = 20  # EVM and TRON keys; a Bitcoin key is an output script, never 20 bytes long

SOURCE_ORDER = ("live", "retro", "replay")


@dataclass(frozen=True, slots=True)
class Window:
    """Which landings count: block time from `since` to `until`, both inclusive, and one chain or all."""

    since: int | None = None
    until: int | None = None
    chain: str | None = None

    def holds(self, chain: str, time: int) -> bool:
        """Whether a landing on `chain` at block time `time` is inside the window."""
        return (
            (self.chain is None or chain == self.chain)
            and (self.since is None or time >= self.since)
            and (self.until is None or time <= self.until)
        )


@dataclass(slots=True)
class Landing:
    """One transfer to a revoked address, counted once."""

    chain: str
    asset: Asset
    txid: str
    index: int | None
    address: str
    key: bytes
    amount: int
    height: int
    time: int
    sources: set[str] = field(default_factory=set)
    swept: int = 0  # of `amount`, in base units
    tracked: bool = True  # False: a Bitcoin output no scope watched, so its spending is not known
    sweep_times: list[int] = field(default_factory=list)
    sweep_txids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Group:
    """The landings of one owner on one chain in one asset."""

    owner: str
    chain: str
    asset: Asset
    landings: list[Landing] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # address -> label

    @property
    def amount(self) -> int:
        """What landed, in base units."""
        return sum(landing.amount for landing in self.landings)

    @property
    def swept(self) -> int:
        """What of it was swept out afterwards, in base units."""
        return sum(landing.swept for landing in self.landings)

    @property
    def untracked(self) -> int:
        """What landed on Bitcoin outputs no scope watched: whether they were spent is not known."""
        return sum(landing.amount for landing in self.landings if not landing.tracked)

    @property
    def swept_state(self) -> str:
        """`yes` (all of it), `no` (none, and all was watched), `partly`, or `unknown` (some was not watched)."""
        return swept_state(self.amount, self.swept, self.untracked)


@dataclass(frozen=True, slots=True)
class Total:
    """One chain and asset, over every owner."""

    chain: str
    asset: Asset
    owners: int
    count: int
    amount: int
    swept: int
    untracked: int


@dataclass(frozen=True, slots=True)
class Report:
    """The groups (owner, chain, asset) and the totals (chain, asset), in a stable order."""

    window: Window
    groups: list[Group]
    totals: list[Total]


def swept_state(amount: int, swept: int, untracked: int) -> str:
    """The one word for how much of `amount` left again."""
    if amount and swept >= amount:
        return "yes"
    if untracked:
        return "unknown"
    return "no" if swept == 0 else "partly"


def _asset(row: dict[str, Any]) -> Asset:
    return Asset(row["asset_symbol"], int(row["asset_decimals"]), row["asset_contract"])


def _identity(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["chain"], str(row["txid"]).lower(), row["idx"], row["asset_symbol"], row["asset_contract"] or "")


def _source(row: dict[str, Any], retro: set[tuple[str, str, int | None]]) -> str:
    if row["scope"] != "live":
        return "replay"
    return "retro" if (row["chain"], str(row["txid"]).lower(), row["idx"]) in retro else "live"


def _landings(rows: ReportRows, window: Window) -> list[Landing]:
    found: dict[tuple[Any, ...], Landing] = {}
    for row in rows.matches:
        if row["kind"] != "revoked_incoming" or row["block_time"] is None:
            continue
        if not window.holds(row["chain"], int(row["block_time"])):
            continue
        ident = _identity(row)
        landing = found.get(ident)
        if landing is None:
            landing = found[ident] = Landing(
                chain=row["chain"],
                asset=_asset(row),
                txid=str(row["txid"]),
                index=row["idx"],
                address=row["address"],
                key=bytes(row["key"]),
                amount=int(row["amount"]),
                height=int(row["block_height"]),
                time=int(row["block_time"]),
            )
        landing.sources.add(_source(row, rows.retro))
    return sorted(found.values(), key=lambda x: (x.time, x.chain, x.height, x.txid, -1 if x.index is None else x.index))


def _outgoing(rows: ReportRows) -> list[dict[str, Any]]:
    """Every `revoked_outgoing` transfer once (the same identity rule as landings)."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows.matches:
        if row["kind"] == "revoked_outgoing" and row["block_height"] is not None:
            found.setdefault(_identity(row), row)
    return list(found.values())


def _sweep_utxo(landings: list[Landing], rows: ReportRows, outgoing: list[dict[str, Any]]) -> None:
    """Bitcoin: a landing is swept when its very output was spent (a watched output of any scope says so)."""
    spends: dict[tuple[str, str, int], set[str] | None] = {}
    for out in rows.outputs:
        where = (out["chain"], str(out["txid"]).lower(), int(out["vout"]))
        known = spends.setdefault(where, set())
        if out["spent_txid"] is not None and known is not None:
            known.add(str(out["spent_txid"]).lower())
    sweep_time: dict[tuple[str, str, bytes], int] = {}
    for row in outgoing:
        if row["block_time"] is not None:
            where_out = (row["chain"], str(row["txid"]).lower(), bytes(row["key"]))
            sweep_time[where_out] = min(sweep_time.get(where_out, int(row["block_time"])), int(row["block_time"]))
    for landing in landings:
        if landing.index is None:
            continue
        spenders = spends.get((landing.chain, landing.txid.lower(), landing.index))
        if spenders is None:
            landing.tracked = False
            continue
        if spenders:
            landing.swept = landing.amount
            for txid in spenders:
                landing.sweep_txids.add(txid)
                when = sweep_time.get((landing.chain, txid, landing.key))
                if when is not None:
                    landing.sweep_times.append(when)


def _sweep_accounts(landings: list[Landing], outgoing: list[dict[str, Any]]) -> None:
    """Account chains: outgoing of the same asset from the same address, from the first landing's block on,
    shared out over that address's landings in time order, at most what landed."""
    by_address: dict[tuple[str, bytes, str, str], list[Landing]] = {}
    for landing in landings:
        where = (landing.chain, landing.key, landing.asset.symbol, landing.asset.contract or "")
        by_address.setdefault(where, []).append(landing)
    out_by_address: dict[tuple[str, bytes, str, str], list[dict[str, Any]]] = {}
    for row in outgoing:
        where = (row["chain"], bytes(row["key"]), row["asset_symbol"], row["asset_contract"] or "")
        out_by_address.setdefault(where, []).append(row)
    for where, mine in by_address.items():
        first = min(landing.height for landing in mine)
        leaving = sorted(
            (row for row in out_by_address.get(where, []) if int(row["block_height"]) >= first),
            key=lambda row: (int(row["block_height"]), str(row["txid"]).lower()),
        )
        left = sum(int(row["amount"]) for row in leaving)
        for landing in mine:  # in time order: the earliest landings are the first swept
            landing.swept = min(landing.amount, left)
            left -= landing.swept
            if landing.swept:
                landing.sweep_txids.update(str(row["txid"]).lower() for row in leaving)
                landing.sweep_times.extend(int(row["block_time"]) for row in leaving if row["block_time"] is not None)


def build_report(rows: ReportRows, window: Window) -> Report:
    """Group and total the counted landings of `rows` inside `window`, with what was swept of them."""
    landings = _landings(rows, window)
    outgoing = _outgoing(rows)
    _sweep_utxo([x for x in landings if len(x.key) != ACCOUNT_KEY_LENGTH], rows, outgoing)
    _sweep_accounts([x for x in landings if len(x.key) == ACCOUNT_KEY_LENGTH], outgoing)
    groups: dict[tuple[str, str, str, str], Group] = {}
    for landing in landings:
        entry = rows.book.get((landing.chain, landing.key))
        owner = entry["owner"] if entry else ""
        label = entry["label"] if entry else ""
        key = (owner, landing.chain, landing.asset.symbol, landing.asset.contract or "")
        group = groups.setdefault(key, Group(owner, landing.chain, landing.asset))
        group.landings.append(landing)
        group.labels.setdefault(landing.address, label)
    ordered = [groups[key] for key in sorted(groups)]
    totals: dict[tuple[str, str, str], list[Group]] = {}
    for group in ordered:
        totals.setdefault((group.chain, group.asset.symbol, group.asset.contract or ""), []).append(group)
    return Report(
        window,
        ordered,
        [
            Total(
                chain=members[0].chain,
                asset=members[0].asset,
                owners=len(members),
                count=sum(len(g.landings) for g in members),
                amount=sum(g.amount for g in members),
                swept=sum(g.swept for g in members),
                untracked=sum(g.untracked for g in members),
            )
            for _, members in sorted(totals.items())
        ],
    )


@dataclass(frozen=True, slots=True)
class Series:
    """One asset's line on the plot: (block time, cumulative amount in base units) at each landing time."""

    chain: str
    asset: Asset
    points: list[tuple[int, int]]

    @property
    def label(self) -> str:
        """The legend's name of the line."""
        return f"{self.chain} {self.asset.symbol}"


def plot_series(report: Report) -> list[Series]:
    """The value landing on revoked addresses over time, cumulative, one series per chain and asset; the
    last point of each is that asset's total."""
    found: dict[tuple[str, str, str], tuple[Asset, dict[int, int]]] = {}
    for group in report.groups:
        _, per_time = found.setdefault((group.chain, group.asset.symbol, group.asset.contract or ""), (group.asset, {}))
        for landing in group.landings:
            per_time[landing.time] = per_time.get(landing.time, 0) + landing.amount
    series = []
    for (chain, _, _), (asset, per_time) in sorted(found.items()):
        running = 0
        points = []
        for time in sorted(per_time):
            running += per_time[time]
            points.append((time, running))
        series.append(Series(chain, asset, points))
    return series


def sorted_sources(sources: Iterable[str]) -> list[str]:
    """Sources in their documented order: live, retro, replay."""
    unique = set(sources)
    return [s for s in SOURCE_ORDER if s in unique]
