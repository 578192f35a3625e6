"""Key trees in the store: time to expand into the derivation cache, time to load the cache, memory.

    python bench/tree_bench.py --sizes 1000000,10000000 --stores sqlite,postgres --markdown FILE

For each size N and store, a scratch store gets two trees of N/2 indexes each: a revoked wpkh() tree on
chain `btc` (22-byte scripts) and an active EVM tree on chain `eth` (20-byte accounts), the mix of
bench/registry_bench.py's book. Measured:

- **expand**: `SqlStore.trees.import_entries` of both (derive every key, write it to `tree_keys`), in this
  process pinned to one CPU; wall and CPU seconds (the store server's own CPU is not in the CPU figure),
  split into the cache writes (the driver's `copy_rows` calls, timed around each: wall, and this
  process's CPU encoding the rows) and the rest, which is derivation (the derivation rate is the keys
  over that CPU time); the process's resident peak while expanding.
- **load, trees**: `AddressRegistry.load` in a fresh process (`--child`), as a daemon's restart does:
  seconds, resident memory it added, that memory per key, and the process's resident memory after it.
- **load, plain**: the same keys moved into `addresses` as plain entries (address text 40-44 hex
  characters, the width of real addresses), the trees removed, loaded the same way: the yardstick.

Both loads run in fresh interpreters so their memory is the registry's and nothing else's.

`--synthetic` fills the cache with random keys of the same shapes (22-byte P2WPKH scripts, 20-byte
accounts) instead of deriving them, for the load and memory figures at sizes whose expansion would take
too long on a shared machine (the expansion columns are then empty; its rate is linear in the keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/tree_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PG_URL,
    machine_line,
    markdown_table,
    peak_rss_mb,
    postgres_version,
    rss_mb,
    scratch_schema,
    with_search_path,
)
from depositwatch.addresses.descriptors import parse_tree
from depositwatch.models import AddressStatus, TreeEntry

XPUB = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
REVOKED_AT = 1_700_000_000


@dataclass
class Load:
    seconds: float
    keys: int
    added_mb: float
    rss_mb: float = float("nan")  # the process's resident memory after the load


@dataclass
class Expand:
    wall: float
    cpu: float
    write_wall: float  # inside the driver's copy_rows calls
    write_cpu: float
    peak_mb: float  # the expanding process's resident peak

    @property
    def derive_cpu(self) -> float:
        return self.cpu - self.write_cpu


@dataclass
class Row:
    size: int
    store: str
    expand: Expand
    trees: Load
    plain: Load


def entries(size: int) -> list[tuple[int, TreeEntry]]:
    half = size // 2
    btc = parse_tree("bitcoin", f"wpkh({XPUB}/0/*)")
    eth = parse_tree("evm", f"{XPUB}/0/*")
    return [
        (1, TreeEntry("btc", btc.descriptor, btc.script.value, 0, half - 1, AddressStatus.REVOKED,
                      network="mainnet", revoked_at=REVOKED_AT, reason="bench")),
        (2, TreeEntry("eth", eth.descriptor, eth.script.value, 0, size - half - 1, AddressStatus.ACTIVE)),
    ]  # fmt: skip


class CopyTimer:
    """Times every `copy_rows` of the store drivers' connections (wall, and this process's CPU)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from depositwatch.store import drivers

        classes = (drivers._PgConn, drivers._SqliteConn)
        originals = [cls.copy_rows for cls in classes]

        def timed(original: Any) -> Any:
            async def copy_rows(conn: Any, table: str, columns: Any, rows: Any) -> None:
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    await original(conn, table, columns, rows)
                finally:
                    self.wall += time.perf_counter() - wall
                    self.cpu += time.process_time() - cpu

            return copy_rows

        for cls, original in zip(classes, originals, strict=True):
            cls.copy_rows = timed(original)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for cls, original in zip(classes, originals, strict=True):
                cls.copy_rows = original  # type: ignore[method-assign]


async def expand(url: str, size: int) -> Expand:
    from depositwatch.store import open_store

    store = await open_store(url, migrate=True)
    copies = CopyTimer()
    try:
        with copies.installed():
            wall, cpu = time.perf_counter(), time.process_time()
            result = await store.trees.import_entries(entries(size))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert result.inserted == 2
        return Expand(wall, cpu, copies.wall, copies.cpu, peak_rss_mb())
    finally:
        await store.close()


async def fill_synthetic(url: str, size: int) -> None:
    """The two trees' rows with random keys in the cache (no derivation)."""
    from depositwatch.store import open_store

    store = await open_store(url, migrate=True)
    try:
        async with store.db.transaction() as conn:
            for line, entry in entries(size):
                await conn.execute(
                    "INSERT INTO key_trees (chain, descriptor, script, network, first_index, last_index, status,"
                    " revoked_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0)",
                    entry.chain, entry.descriptor, entry.script, entry.network, entry.first, entry.last,
                    str(entry.status), entry.revoked_at,
                )  # fmt: skip
                tree_id = int(await conn.fetchval("SELECT id FROM key_trees WHERE chain = $1", entry.chain))
                for start in range(entry.first, entry.last + 1, 100_000):
                    stop = min(start + 100_000, entry.last + 1)
                    rows = [
                        (tree_id, i, (b"\x00\x14" if line == 1 else b"") + os.urandom(20)) for i in range(start, stop)
                    ]
                    await conn.copy_rows("tree_keys", ("tree_id", "idx", "key"), rows)
    finally:
        await store.close()


async def to_plain(url: str) -> None:
    """Move every cached key into `addresses` as a plain entry and drop the trees."""
    from depositwatch.store import open_store

    store = await open_store(url)
    try:
        hexed = "encode(k.key, 'hex')" if store.dialect == "postgres" else "hex(k.key)"
        async with store.db.transaction() as conn:
            move = (
                "INSERT INTO addresses (chain, key, address, type, status, label, owner, revoked_at, reason,"
                f" created_at, updated_at) SELECT t.chain, k.key, {hexed}, t.script, t.status, '', '', t.revoked_at,"
                " '', 0, 0 FROM tree_keys k JOIN key_trees t ON t.id = k.tree_id"
            )
            if store.dialect == "postgres":  # millions of rows: past the pool's 60 s command timeout
                await conn.raw.execute(move, timeout=3600)  # type: ignore[attr-defined]
            else:
                await conn.execute(move)
            for table in ("tree_keys", "key_trees"):
                if store.dialect == "postgres":
                    await conn.raw.execute(f"DELETE FROM {table}", timeout=3600)  # type: ignore[attr-defined]
                else:
                    await conn.execute(f"DELETE FROM {table}")
    finally:
        await store.close()


async def child(url: str) -> Load:
    from depositwatch.registry import AddressRegistry
    from depositwatch.store import open_store

    store = await open_store(url)
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    registry = await AddressRegistry.load(store)
    seconds = time.perf_counter() - started
    await store.close()
    gc.collect()
    after = rss_mb()
    return Load(seconds, len(registry), after - before, after)


def load(url: str) -> Load:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--url", url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loading failed:\n{done.stderr}")
    return Load(**json.loads(done.stdout.strip().splitlines()[-1]))


async def scratch(store: str, workdir: str) -> tuple[str, str | None]:
    if store == "sqlite":
        return f"sqlite:///{workdir}/trees-{os.getpid()}-{time.monotonic_ns()}.db", None
    import asyncpg

    schema = scratch_schema("tree_bench")
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return with_search_path(PG_URL, schema), schema


async def drop(url: str, schema: str | None) -> None:
    if schema is None:
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


async def measure(size: int, store: str, workdir: str, cpu: int, synthetic: bool) -> Row:
    url, schema = await scratch(store, workdir)
    try:
        if synthetic:
            await fill_synthetic(url, size)
            expanded = Expand(*[float("nan")] * 5)
        else:
            os.sched_setaffinity(0, {cpu})
            expanded = await expand(url, size)
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        print(f"  expanded: {expanded}, load average {os.getloadavg()}", file=sys.stderr, flush=True)
        trees = load(url)
        print(f"  loaded trees: {trees}", file=sys.stderr, flush=True)
        await to_plain(url)
        plain = load(url)
    finally:
        await drop(url, schema)
    assert trees.keys == plain.keys == size, (trees, plain)
    return Row(size, store, expanded, trees, plain)


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"  # NaN: not measured (--synthetic)


def report(rows: list[Row], pg: str | None, synthetic: bool = False) -> str:
    table = markdown_table(
        ["keys", "store", "expand, wall s", "expand, CPU s", "load trees, s", "load plain, s",
         "memory trees, MB", "memory plain, MB", "bytes/key trees", "bytes/key plain"],
        [
            [f"{r.size:,}", r.store, _seconds(r.expand.wall), _seconds(r.expand.cpu), f"{r.trees.seconds:.1f}",
             f"{r.plain.seconds:.1f}", f"{r.trees.added_mb:,.0f}", f"{r.plain.added_mb:,.0f}",
             f"{r.trees.added_mb * 2**20 / r.size:.0f}", f"{r.plain.added_mb * 2**20 / r.size:.0f}"]
            for r in rows
        ],
        "llrrrrrrrr",
    )  # fmt: skip
    parts = markdown_table(
        ["keys", "store", "derive, CPU s", "derive, keys/CPU s", "cache write, wall s", "cache write, CPU s",
         "expand, peak RSS MB", "RSS after loading trees, MB", "RSS after loading plain, MB"],
        [
            [f"{r.size:,}", r.store, _seconds(r.expand.derive_cpu), _rate(r.size, r.expand.derive_cpu),
             _seconds(r.expand.write_wall), _seconds(r.expand.write_cpu), _megabytes(r.expand.peak_mb),
             _megabytes(r.trees.rss_mb), _megabytes(r.plain.rss_mb)]
            for r in rows
        ],
        "llrrrrrrr",
    )  # fmt: skip
    return (
        "## Key trees: the derivation cache\n\n"
        f"`python bench/tree_bench.py --sizes {','.join(str(s) for s in sorted({r.size for r in rows}))}"
        f" --stores {','.join(dict.fromkeys(r.store for r in rows))}{' --synthetic' if synthetic else ''}`\n\n"
        "Half the keys in a revoked wpkh() tree on `btc`, half in an active EVM tree on `eth`. Expand:"
        " `store.trees.import_entries` deriving every key and writing it to the cache, one process pinned to one CPU."
        " Load: `AddressRegistry.load` in a fresh process, first from the tree cache, then with the same"
        " keys as plain address entries; memory is what the load added to the process.\n"
        f"Machine: {machine_line(pg)}; load average {os.getloadavg()[0]:.2f} at the end.\n\n"
        + table
        + "\n\nThe expansion's parts: the cache writes (inside the driver's `copy_rows`) and the rest, derivation;"
        " resident memory of the expanding process at its peak and of the loading processes after the load.\n\n"
        + parts
        + "\n"
    )


def _rate(keys: int, seconds: float) -> str:
    return "-" if math.isnan(seconds) or seconds <= 0 else f"{keys / seconds:,.0f}"


def _megabytes(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


async def run(args: argparse.Namespace) -> str:
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for store in args.stores.split(","):
            print(f"{size:,} keys, {store}...", file=sys.stderr, flush=True)
            rows.append(await measure(size, store, args.workdir, args.cpu, args.synthetic))
            print(json.dumps(asdict(rows[-1])), file=sys.stderr, flush=True)
    pg = await postgres_version() if "postgres" in args.stores else None
    return report(rows, pg, args.synthetic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000", help="comma-separated key counts")
    parser.add_argument("--stores", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the SQLite file goes")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1, help="the CPU expansion is pinned to")
    parser.add_argument("--markdown", help="write the section to this file")
    parser.add_argument("--synthetic", action="store_true", help="random keys in the cache instead of derived ones")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asdict(asyncio.run(child(args.url)))))
        return
    text = asyncio.run(run(args))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
