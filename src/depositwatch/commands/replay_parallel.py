"""`depositwatch replay --workers N`, `--join RUN_ID`: one replay run shared by several workers.

The options and the command's side of parallel replay (src/depositwatch/replay_shards.py does the
work): this process is one worker, and starts `N - 1` more as processes of the same command
(`--shard-worker RUN_ID`: they work and write nothing), so that decoding and matching use more than one
core; processes on other machines join with `--join RUN_ID` (or the same command) through a shared
PostgreSQL store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from depositwatch.commands import CommandError, err
from depositwatch.config import ChainConfig, Config
from depositwatch.follower import ReorgTooDeep
from depositwatch.replay_shards import ShardsDisagree, default_shard_blocks, open_run, participate
from depositwatch.store import SqlStore
from depositwatch.store.shards import ShardStore, cut

MAX_WORKERS = 64


def add_parallel_options(p: argparse.ArgumentParser) -> None:
    """`--workers`, `--shard-blocks`, `--join` (and the hidden `--shard-worker` of the processes it starts)."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="replay the range in shards with N worker processes (1: one process, no shards)",
    )
    p.add_argument(
        "--shard-blocks",
        type=int,
        help="blocks per shard of a parallel run (default: the range over 4 shards a worker, 100 to 10,000)",
    )
    p.add_argument(
        "--join",
        metavar="RUN_ID",
        help="work on the parallel run RUN_ID of this store (chain and range from the store), then write its output",
    )
    p.add_argument("--shard-worker", metavar="RUN_ID", help=argparse.SUPPRESS)


def check_parallel_options(args: argparse.Namespace) -> None:
    """Refuse what does not go together, before anything is opened."""
    if not 1 <= args.workers <= MAX_WORKERS:
        raise CommandError(f"--workers must be 1 to {MAX_WORKERS}")
    if args.shard_blocks is not None and args.shard_blocks < 1:
        raise CommandError("--shard-blocks must be at least 1")
    if args.join and args.shard_worker:
        raise CommandError("--join and --shard-worker do not go together")
    if args.join and args.restart:
        raise CommandError("--restart discards a run: not while joining it (run the first command with --restart)")
    if args.join and not args.rpc_url:
        return  # chain and range come from the store
    missing = [
        name for name, value in (("--chain", args.chain), ("--from", args.start), ("--to", args.stop)) if value is None
    ]
    if missing:
        raise CommandError(f"replay needs {', '.join(missing)} (or --join RUN_ID with a config)")
    if is_parallel(args):
        if args.send_alerts:
            raise CommandError("--send-alerts is for a single-worker replay (no --workers, --join)")
        if args.prevouts:
            raise CommandError("--prevouts is for a single-worker replay (no --workers, --join)")


def is_parallel(args: argparse.Namespace) -> bool:
    """Whether the command runs the parallel form."""
    return bool(args.workers > 1 or args.join or args.shard_worker or args.shard_blocks)


async def join_run(args: argparse.Namespace, store: SqlStore) -> None:
    """`--join RUN_ID` with a config: the chain and range of the run recorded in the store."""
    if not args.join or args.rpc_url:
        return
    run = await ShardStore(store).run(args.join)
    if run is None:
        raise CommandError(f"no parallel replay run {args.join} in this store")
    for name, value, given in (("--chain", run.chain, args.chain), ("--from", run.start, args.start)):
        if given is not None and given != value:
            raise CommandError(f"run {run.run_id} has {name} {value}, not {given}")
    if args.stop is not None and args.stop != run.stop:
        raise CommandError(f"run {run.run_id} has --to {run.stop}, not {args.stop}")
    args.chain, args.start, args.stop = run.chain, run.start, run.stop


async def run_parallel(
    args: argparse.Namespace, config: Config, chain: ChainConfig, store: SqlStore, store_url: str | None = None
) -> int:
    """The parallel form: create or join the run, start the worker processes, work, write the output."""
    shard_blocks = args.shard_blocks or default_shard_blocks(args.stop - args.start + 1, args.workers)
    try:
        run = await open_run(
            store,
            chain,
            args.start,
            args.stop,
            shard_blocks=shard_blocks,
            restart=args.restart and not args.shard_worker,
            join=args.join or args.shard_worker,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.shard_blocks and run.shard_blocks != args.shard_blocks:
        err(f"run {run.run_id} was cut into shards of {run.shard_blocks} blocks: going on with those")
    if not args.shard_worker:
        shards = len(cut(run.start, run.stop, run.shard_blocks))
        err(
            f"replay {run.chain} {run.start}..{run.stop}: run {run.run_id}, {shards} shards of {run.shard_blocks}"
            f" blocks; more workers (here, or on machines sharing this store): replay --join {run.run_id}"
        )
    url = store_url or args.store  # None: the worker processes read the store from the same config
    argv = _worker_argv(args, chain, run.run_id, url)
    password = config.store.password.resolve().get_secret_value() if config.store.password and not args.store else None
    with contextlib.ExitStack() as stack:
        output = None
        if not args.shard_worker:
            # Every run writes its whole output: a file holds one run's, never the remains of an interrupted one.
            output = stack.enter_context(Path(args.output).open("w", encoding="utf-8")) if args.output else sys.stdout  # noqa: ASYNC230
        workers = [_worker(argv) for _ in range(args.workers - 1)]
        try:
            summary = await participate(
                chain=chain,
                store=store,
                run=run,
                output=output,
                workers=workers,
                alerts=config.alerts,
                ttl=config.ha.lease_ttl,
                password=password,
            )
        except (ReorgTooDeep, ShardsDisagree) as exc:
            err(f"depositwatch: node: {exc}")
            return 1
    if args.shard_worker:
        return 0
    err(summary.text())
    if summary.already_done:
        err(
            f"run {run.run_id} had already replayed {run.start}..{run.stop}: nothing was replayed again;"
            " `--restart` discards that run and replays the range from the node"
        )
    return 0


def _worker_argv(args: argparse.Namespace, chain: ChainConfig, rid: str, store_url: str | None) -> list[str]:
    """The command line of a worker process: this command, working on run `rid` and writing nothing."""
    argv = [sys.executable, "-m", "depositwatch"]
    if args.config:
        argv += ["--config", args.config]
    argv += ["--log-level", args.log_level or "warning"]
    if args.log_format:
        argv += ["--log-format", args.log_format]
    argv += ["replay", "--chain", chain.name, "--from", str(args.start), "--to", str(args.stop), "--shard-worker", rid]
    if store_url:
        argv += ["--store", store_url]
    if args.rpc_url:
        argv += ["--rpc-url", args.rpc_url, "--watch", args.watch, "--network", args.network]
        for token in args.token:
            argv += ["--token", token]
        if args.api_key_env:
            argv += ["--api-key-env", args.api_key_env]
        if chain.chain_id is not None:
            argv += ["--chain-id", str(chain.chain_id)]
    return argv


async def _worker(argv: list[str]) -> Any:
    """Run one worker process to its end; stopped with this command if this command stops first.

    Its exit status is not this command's: whatever shard it leaves, another worker (this process)
    takes over; an error that stops it stops this process too when it meets the same shard.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
        raise
