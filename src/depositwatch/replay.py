"""Replay: the live pipeline over a fixed block range, with its own resumable cursor."""

from __future__ import annotations

import functools
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from depositwatch.chains.base import ChainSource
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.evm import EvmSource
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.follower import BlockHook, Follower
from depositwatch.jsonutil import dumps
from depositwatch.messages import row_flag
from depositwatch.models import Asset
from depositwatch.pipeline import attach, make_hook, make_policy, make_settings, opened_source
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, Scope, SqlStore
from depositwatch.timeutil import iso

# A replay stops after this many failed attempts in a row at the same step (with the follower's
# backoff, 0.25 s doubling: about 15 s), where the daemon would keep trying.
REPLAY_MAX_FAILURES = 6


def run_id(chain: str, start: int, stop: int, identity: str) -> str:
    """A replay run's id: the same range of the same chain resumes the same run."""
    return hashlib.sha256(f"{chain}|{start}|{stop}|{identity}".encode()).hexdigest()[:16]


def wire_for_replay(
    chain: ChainConfig, source: ChainSource, registry: AddressRegistry, store: SqlStore
) -> BlockHook | None:
    """Attach the chain's hook and token cache to a replay's source; the book is fixed for the run, so an EVM
    node can leave out the logs that touch none of its keys. Returns the hook."""
    hook = make_hook(chain)
    attach(source, registry, hook, store.tokens)
    if isinstance(source, EvmSource):
        book = registry.book(chain.name)
        source.set_log_filter(book.active | book.revoked.keys())
    return hook


async def range_run_id(source: ChainSource, chain: str, start: int, stop: int) -> str:
    """The run id of `start..stop` on the node behind the open `source`; ValueError when `stop` is above its tip."""
    identity = await source.identity()
    tip = await source.tip()
    if stop > tip.height:
        raise ValueError(f"--to {stop} is above the node's tip {tip.height}")
    return run_id(chain, start, stop, identity)


def output_record(row: dict[str, Any], chain_id: int | None) -> dict[str, Any]:
    """One line of replay output, from a `matches` row."""
    asset = Asset(row["asset_symbol"], row["asset_decimals"], row["asset_contract"])
    return {
        "kind": row["kind"],
        "chain": row["chain"],
        "chain_id": chain_id,
        "asset": asset.symbol,
        "asset_contract": asset.contract,
        "asset_decimals": asset.decimals,
        "token_listed": row_flag(row, "asset_listed", default=True),
        "amount": row["amount"],
        "amount_decimal": asset.to_decimal(int(row["amount"])),
        "from": row["from_address"],
        "to": row["to_address"],
        "address": row["address"],
        "txid": row["txid"],
        "index": row["idx"],
        "block_height": row["block_height"],
        "block_hash": row["block_hash"],
        "block_time": iso(row["block_time"]),
        "label": row["label"],
        "owner": row["owner"],
        "revoked_at": iso(row["revoked_at"]),
        "status": row["status"],
        "tree_id": row.get("tree_id"),  # the key tree and index a derived address belongs to, else None
        "tree_index": row.get("tree_index"),
    }


@dataclass(slots=True)
class ReplaySummary:
    """What a replay run did."""

    run_id: str
    chain: str
    start: int
    stop: int
    blocks: int = 0
    transfers: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None
    kinds: Counter[str] = field(default_factory=Counter)
    path: str | None = None  # EVM: how the blocks were read, and why (`EvmSource.fetch_path`)

    @property
    def was_complete(self) -> bool:
        """The run had already reached its last block before this call: nothing new was done."""
        return self.resumed_from is not None and self.resumed_from >= self.stop

    def text(self) -> str:
        """The human summary printed on stderr."""
        rate = self.blocks / self.seconds if self.seconds else 0.0
        found = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items())) or "no matches"
        resumed = f" (resumed after block {self.resumed_from})" if self.resumed_from is not None else ""
        return (
            f"replay {self.chain} {self.start}..{self.stop}{resumed}: {self.blocks} blocks, {self.transfers} transfers"
            f" in {self.seconds:.1f}s ({rate:.1f} blocks/s); {found}; run {self.run_id}"
            + (f"; {self.path}" if self.path else "")
        )


async def replay(
    *,
    chain: ChainConfig,
    store: SqlStore,
    start: int,
    stop: int,
    output: TextIO,
    send_alerts: bool = False,
    alerts: AlertsConfig | None = None,
    progress: bool = False,
    restart: bool = False,
    prevouts: bool = False,
    on_commit: Callable[[Sequence[BlockEffects]], Any] | None = None,
) -> ReplaySummary:
    """Replay blocks `start..stop` (inclusive) of one chain; write each match as a JSON line to `output`."""
    if stop < start:
        raise ValueError(f"--to {stop} is below --from {start}")
    async with opened_source(chain) as source:
        rid = await range_run_id(source, chain.name, start, stop)
        scope = Scope.replay(rid, send_alerts)
        if restart:
            await store.delete_scope(scope)
        registry = await AddressRegistry.load(store, [chain.name])
        summary = ReplaySummary(rid, chain.name, start, stop)

        def emit(rows: list[dict[str, Any]]) -> None:
            for row in rows:
                summary.kinds[row["kind"]] += 1
                output.write(dumps(output_record(row, chain.chain_id)) + "\n")
            output.flush()

        bar = _progress(stop - start + 1, chain.name) if progress else None

        async def committed(effects: Sequence[BlockEffects]) -> None:
            first, last = effects[0].block.height, effects[-1].block.height
            summary.blocks += len(effects)
            summary.transfers += sum(len(e.block.transfers) for e in effects)
            emit(await store.matches(scope, heights=(first, last)))
            if bar is not None:
                bar.update(len(effects))
            if on_commit is not None:
                await on_commit(effects)

        hook = wire_for_replay(chain, source, registry, store)
        source.read_until = stop  # nothing past the range is read ahead
        if prevouts:
            # Outputs paid to revoked scripts before the range and spent inside it: their sweeps count.
            from depositwatch.chains.btc_prevouts import prevouts_paying

            if not isinstance(source, BitcoinSource):
                raise ValueError("--prevouts is for Bitcoin chains")
            found = await prevouts_paying(source, start, stop + 1, registry.book(chain.name).revoked)
            await store.add_watched_outputs(chain.name, found, scope)
        settings = make_settings(chain, start_height=start, stop_height=stop)
        if isinstance(source, BitcoinSource):
            # The first two ranges' blocks are asked for now, while the run's cursor is made ready and its
            # first tip asked (a run that resumes elsewhere drops them at its first fetch).
            source.read_ahead(start, min(stop, start + 2 * settings.batch_blocks - 1) + 1)
        if (
            isinstance(source, EvmSource)
            and source.fetch_path.startswith("filtered")
            and "batch_blocks" not in chain.model_fields_set
        ):
            # A filtered step costs its requests and its commit, hardly its blocks: unless batch_blocks is set,
            # take one trace_filter span a step.
            from depositwatch.chains.evm_filtered import REPLAY_STEP

            settings = replace(settings, batch_blocks=max(settings.batch_blocks, REPLAY_STEP))
        follower = Follower(
            source=source,
            store=store,
            registry=registry,
            policy=make_policy(chain, alerts or AlertsConfig()),
            scope=scope,
            cursor_name=scope.name,
            settings=replace(
                settings,
                log_matches=False,
                max_failures=REPLAY_MAX_FAILURES,
            ),
            hook=hook,
            on_commit=committed,
            reload_book=functools.partial(registry.reload, store, [chain.name]),  # a key tree grew
        )
        cursor = await follower.start()
        if cursor.height >= start:
            # Resuming: what earlier attempts committed is written again first, so every run's output is whole.
            summary.resumed_from = cursor.height
            emit(await store.matches(scope, heights=(start, cursor.height)))
            if bar is not None:
                bar.update(cursor.height - start + 1)
        began = time.perf_counter()
        await follower.run()
        summary.seconds = time.perf_counter() - began
        if isinstance(source, EvmSource):
            summary.path = source.fetch_path  # as it ended: a node may have stopped filtering during the run
        if bar is not None:
            bar.close()
        return summary


def _progress(total: int, chain: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="block", desc=f"replay {chain}", file=sys.stderr, smoothing=0.1)
