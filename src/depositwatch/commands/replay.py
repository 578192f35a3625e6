"""`depositwatch replay`: run the pipeline over a historical block range."""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from depositwatch.addressbook import ChainDirectory, ChainInfo, read_book_csv, read_text
from depositwatch.commands import CommandError, add_store_option, err, load, reading_rows, store_from
from depositwatch.commands.replay_parallel import (
    add_parallel_options,
    check_parallel_options,
    is_parallel,
    join_run,
    run_parallel,
)
from depositwatch.commands.trees import import_book
from depositwatch.config import (
    ChainConfig,
    Config,
    ConfigError,
    Secret,
    TokenConfig,
    Trc10Config,
    format_validation_error,
    redact_text,
)
from depositwatch.follower import ReorgTooDeep
from depositwatch.replay import replay
from depositwatch.store import Scope, open_store

GC_GEN0_THRESHOLD = 200_000  # allocations between young collections (Python's default: 700)
DRAIN_SECONDS = 60.0  # --send-alerts: how long delivery may go on after the range is done

MAINNET_TOKENS = [
    TokenConfig(symbol="USDT", contract="0xdAC17F958D2ee523a2206206994597C13D831ec7", decimals=6),
    TokenConfig(symbol="USDC", contract="0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", decimals=6),
]


def register(sub: Any) -> None:
    """Add `replay`."""
    p = sub.add_parser(
        "replay",
        help="replay a block range through the live pipeline (resumable); one JSON line per match",
        description="With a config: --chain NAME names a configured chain. Ad hoc, with no config or store: "
        "--rpc-url URL --watch FILE.csv [--network N] [--token SYMBOL:CONTRACT:DECIMALS ...] "
        "(TRON: --chain tron [--api-key-env VAR]).",
    )
    p.add_argument(
        "--chain",
        help="chain name (ad hoc: btc for Bitcoin, tron or tron-* for TRON, anything else is EVM)",
    )
    p.add_argument("--from", dest="start", type=int, help="first block")
    p.add_argument("--to", dest="stop", type=int, help="last block (inclusive)")
    p.add_argument("--output", "-o", help="write matches here instead of stdout")
    p.add_argument("--send-alerts", action="store_true", help="also send alerts (never re-sends a live alert)")
    p.add_argument("--restart", action="store_true", help="discard an earlier run of the same range and start over")
    p.add_argument(
        "--prevouts",
        action="store_true",
        help="Bitcoin: also find outputs paid to revoked scripts before --from (getblock HASH 3) to see their sweeps",
    )
    p.add_argument("--rpc-url", help="ad hoc: the node (http://USER:PASS@HOST:PORT for Bitcoin Core)")
    p.add_argument("--network", default="mainnet", help="ad hoc Bitcoin: mainnet, testnet, signet or regtest")
    p.add_argument("--watch", help="ad hoc: the addresses (or key trees) to watch, as an import CSV")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        help="ad hoc EVM and TRON: SYMBOL:CONTRACT:DECIMALS (repeatable); TRON: a numeric CONTRACT is a TRC-10 id",
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="ad hoc TRON: the environment variable holding a provider's API key (sent as TRON-PRO-API-KEY)",
    )
    p.add_argument("--chain-id", type=int, help="ad hoc EVM: expected chain id (default: what the node says)")
    add_store_option(p)
    add_parallel_options(p)
    p.set_defaults(handler=_replay)


async def _replay(args: argparse.Namespace) -> int:
    check_parallel_options(args)
    with _bulk_collector():
        return await _replay_range(args)


@contextlib.contextmanager
def _bulk_collector() -> Iterator[None]:
    """What start-up made lives for the whole run: out of the collector's full passes. Node answers (tens
    of thousands of containers a batch, no cycles) are freed by reference counting; the collector's passes
    over them cost about a fifth of a replay's CPU at Python's gen-0 threshold (1,000 real-sized Ethereum
    blocks: 1.0 s of collector CPU at 700, 0.36 s at 20,000, 0.04 s at 200,000). Restored afterwards."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def _replay_range(args: argparse.Namespace) -> int:
    if args.rpc_url:
        return await _ad_hoc(args)
    if args.watch or args.token or args.api_key_env:
        raise CommandError("--watch, --token and --api-key-env are for the ad-hoc form (with --rpc-url)")
    config = load(args)
    store = await store_from(args, config)
    try:
        await join_run(args, store)
        chain = config.chain(args.chain)
        if is_parallel(args):
            return await run_parallel(args, config, chain, store)
        return await _run(args, config, chain, store)
    finally:
        await store.close()


async def _ad_hoc(args: argparse.Namespace) -> int:
    if not args.watch:
        raise CommandError("the ad-hoc form needs --watch FILE.csv (columns chain,address,status,...)")
    kind: Literal["bitcoin", "evm", "tron"] = "evm"
    if args.chain in {"btc", "bitcoin"}:
        kind = "bitcoin"
    elif args.chain == "tron" or args.chain.startswith("tron-"):
        kind = "tron"
    if args.api_key_env and kind != "tron":
        raise CommandError("--api-key-env is for TRON chains")
    try:
        if kind == "tron":
            chain = await _tron_chain(args)
        else:
            chain_id = args.chain_id
            if kind == "evm" and chain_id is None:
                chain_id = await _node_chain_id(args.rpc_url)
            tokens = [_token(text) for text in args.token]
            if kind == "evm" and not tokens and chain_id == 1:
                tokens = MAINNET_TOKENS
            chain = ChainConfig(
                name=args.chain,
                kind=kind,
                network=args.network if kind == "bitcoin" else "adhoc",
                chain_id=chain_id,
                rpc_urls=[args.rpc_url],
                tokens=tokens,
                confirmations=1,
                mempool=False,
            )
    except ValidationError as exc:  # never echoes the values (the URL may hold a key or a password)
        raise CommandError(format_validation_error("bad ad-hoc chain options", exc)) from None
    except ValueError as exc:
        raise CommandError(f"bad ad-hoc chain options: {redact_text(str(exc))}") from None
    directory = ChainDirectory({args.chain: ChainInfo(kind, args.network if kind == "bitcoin" else None)})
    with reading_rows(f" in {args.watch}"):
        rows = read_book_csv(read_text(args.watch), directory, source=args.watch)
    with tempfile.TemporaryDirectory(prefix="depositwatch-replay-") as tmp:
        url = args.store or f"sqlite:///{Path(tmp) / 'replay.db'}"
        # The temporary file goes with the folder when the run ends: nothing in it must survive a power cut.
        store = await open_store(url, migrate=True, scratch=not args.store)
        try:
            return await _ad_hoc_run(args, chain, store, rows, url)
        finally:
            await store.close()


async def _ad_hoc_run(args: argparse.Namespace, chain: ChainConfig, store: Any, rows: Any, url: str) -> int:
    if not args.shard_worker:  # a worker process of a parallel run: the command that started it imported the book
        await import_book(store, rows, dry_run=False)
    if is_parallel(args):
        return await run_parallel(args, Config(chains=[chain]), chain, store, url)
    return await _run(args, Config(chains=[chain]), chain, store)


async def _run(args: argparse.Namespace, config: Config, chain: ChainConfig, store: Any) -> int:
    with contextlib.ExitStack() as stack:
        # A local file opened once; the blocking open is negligible next to the replay.
        output = stack.enter_context(Path(args.output).open("a", encoding="utf-8")) if args.output else sys.stdout  # noqa: ASYNC230
        if args.output and args.restart:
            output.truncate(0)
        dispatcher = None
        settled = True
        if args.send_alerts:
            dispatcher = await _start_dispatcher(config, store.outbox)
        try:
            summary = await replay(
                chain=chain,
                store=store,
                start=args.start,
                stop=args.stop,
                output=output,
                send_alerts=args.send_alerts,
                alerts=config.alerts,
                progress=sys.stderr.isatty(),
                restart=args.restart,
                prevouts=args.prevouts,
                on_commit=None if dispatcher is None else _waker(dispatcher),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except ReorgTooDeep as exc:  # the node's chain no longer holds the blocks replayed so far
            err(f"depositwatch: node: {exc}")
            return 1
        finally:
            if dispatcher is not None:
                settled = await dispatcher.drain(timeout=DRAIN_SECONDS)
                await dispatcher.stop(grace=5)
    err(summary.text())
    if summary.was_complete:
        # Resuming a finished run does nothing new: say so, and refuse to pass for an alerting run.
        err(
            f"run {summary.run_id} had already replayed {summary.start}..{summary.stop}: nothing was replayed again;"
            " `--restart` discards that run and replays the range from the node"
            + (", sending the alerts no receiver has had yet" if args.send_alerts else "")
        )
        unsent = await store.unsent_alerts(Scope.replay(summary.run_id, args.send_alerts))
        if args.send_alerts and unsent:
            err(
                f"{unsent} alert(s) of that run were never sent (it ran without --send-alerts) and were not sent now;"
                " run again with --send-alerts --restart to send them"
            )
            return 1
    if not settled:
        # Nothing is lost (the alerts stay in the outbox), but whoever ran this must know they are not out yet.
        counts = await store.outbox.counts()
        err(
            f"alerts not all delivered after {DRAIN_SECONDS:g} s: {counts['new'] + counts['pending']} still pending "
            "in the outbox; the daemon's dispatcher or `depositwatch alerts deliver --until-empty` sends them"
        )
        return 1
    return 0


def _waker(dispatcher: Any) -> Any:
    async def wake(_: Any) -> None:
        dispatcher.wake()

    return wake


async def _start_dispatcher(config: Config, outbox: Any) -> Any:
    from depositwatch.alerts.factory import dispatcher_for

    if not config.sinks:
        raise CommandError("--send-alerts needs sinks in the config")
    return dispatcher_for(config, outbox)


async def _tron_chain(args: argparse.Namespace) -> ChainConfig:
    """An ad-hoc TRON chain: mainnet's USDT by default when block 0 of the node is mainnet's."""
    from depositwatch.chains.base import ChainError
    from depositwatch.chains.tron import GENESIS_IDS, tron_client
    from depositwatch.chains.tron_decode import decode_header

    api_key = Secret(env=args.api_key_env) if args.api_key_env else None
    settings: dict[str, Any] = {"name": args.chain, "kind": "tron", "rpc_urls": [args.rpc_url], "api_key": api_key}
    probe = ChainConfig(**settings, network="adhoc", tokens=[])
    try:
        client = tron_client(probe)
    except ConfigError as exc:
        raise CommandError(f"--api-key-env: {exc}") from None
    try:
        block = await client.post_path("/wallet/getblockbynum", {"num": 0, "visible": False}, what="block 0")
        genesis = decode_header(block, 0)[1]
    except ChainError as exc:
        raise CommandError(f"cannot read block 0 of the TRON node: {redact_text(str(exc))}") from None
    finally:
        await client.close()
    network = {v: k for k, v in GENESIS_IDS.items()}.get(genesis, "adhoc")
    if args.token:
        trc20 = [_token(t) for t in args.token if not t.split(":")[1:2] or not t.split(":")[1].isdigit()]
        settings["tokens"] = trc20
        settings["trc10"] = [_trc10(t) for t in args.token if t.split(":")[1:2] and t.split(":")[1].isdigit()]
    return ChainConfig(**settings, network=network, confirmations=1, mempool=False)


def _trc10(text: str) -> Trc10Config:
    symbol, token_id, decimals = text.split(":")
    if not decimals.isdigit():
        raise CommandError(f"--token {text!r}: expected SYMBOL:ID:DECIMALS for a TRC-10 token, e.g. BTT:1002000:6")
    try:
        return Trc10Config(id=token_id, symbol=symbol, decimals=int(decimals))
    except ValidationError as exc:
        raise CommandError(format_validation_error(f"--token {text!r}", exc)) from None


def _token(text: str) -> TokenConfig:
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise CommandError(
            f"--token {text!r}: expected SYMBOL:CONTRACT:DECIMALS, e.g. USDT:0xdAC1...1ec7:6"
            " (TRON: USDT:TR7NHq...jLj6t:6, or BTT:1002000:6 for a TRC-10 id)"
        )
    try:
        return TokenConfig(symbol=parts[0], contract=parts[1], decimals=int(parts[2]))
    except ValueError as exc:
        raise CommandError(f"--token {text!r}: {exc}") from None


async def _node_chain_id(url: str) -> int:
    """The chain id the node at `url` reports, through the node client (bounded, depth-limited parsing)."""
    from depositwatch.chains.base import ChainError
    from depositwatch.chains.rpc import NodeClient

    client = NodeClient([url], chain="adhoc", kind="evm", request_timeout=15.0, retry_for=0.0)
    try:
        answer = await client.call("eth_chainId", what="the chain id")
    except ChainError as exc:
        raise CommandError(f"cannot read eth_chainId: {redact_text(str(exc))}") from None
    finally:
        await client.close()
    if not isinstance(answer, str) or not answer.startswith("0x") or not 0 < len(answer) - 2 <= 16:
        raise CommandError(f"cannot read eth_chainId: the answer {answer!r:.100} is not a chain id")
    try:
        return int(answer, 16)
    except ValueError:
        raise CommandError(f"cannot read eth_chainId: the answer {answer!r:.100} is not a chain id") from None
