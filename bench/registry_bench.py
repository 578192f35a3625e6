"""The address registry at scale: load time from each store, resident memory, lookups per second.

    python bench/registry_bench.py --sizes 1000000,10000000 --stores sqlite,postgres --repeat 3 \\
        --plot docs/img/registry_memory.png

For each size the stores are filled once with the same synthetic book (half Bitcoin: an even mix of
P2PKH, P2SH, P2WPKH, P2WSH and P2TR scripts over random hashes; half Ethereum; about 10% revoked).
Filling is setup and is not measured. Each measurement then runs in a fresh process
(`--child`) so its resident memory is the registry's and nothing else's: it opens the store, times
`AddressRegistry.load`, reads VmRSS and VmHWM from /proc/self/status, and times lookups over a mix of
active hits, revoked hits and misses, both the matcher's way (one `book.get(key)`; a book without
`get`, from before the key tables, is read as the matcher read it then: `revoked.get(key)`, then
`key in active`) and through `registry.lookup(chain, key)`.

With `--baseline DIR` every measurement is also made with the `depositwatch` package of another tree
(`DIR/src`, for example `git archive` of an older commit, with its extensions built), alternating with
this tree's on the same filled stores, so both sides share the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/registry_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MB,
    PG_URL,
    machine_line,
    markdown_table,
    peak_rss_mb,
    postgres_version,
    rss_mb,
    save_figure,
    scratch_schema,
    with_search_path,
)

CHUNK = 100_000  # rows per generated chunk; the book of size N is the first N rows of one sequence
SEED = 20240611
REVOKED_SHARE = 0.10
REVOKED_AT = 1_700_000_000
BTC, ETH = "btc", "eth"
BTC_TYPES = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr")
TARGET_RSS_BYTES = 600e6  # 10M addresses in at most 600 MB
TARGET_LOOKUP_NS = 1000  # a lookup under a microsecond
TARGET_PG_LOAD_S = 60.0  # 10M from PostgreSQL in under a minute


# --------------------------------------------------------------------------------------------------
# the synthetic book


def _btc_script(kind: int, digest: bytes) -> bytes:
    from depositwatch.addresses.bitcoin import p2pkh_script, p2sh_script, witness_script

    if kind == 0:
        return p2pkh_script(digest[:20])
    if kind == 1:
        return p2sh_script(digest[:20])
    if kind == 2:
        return witness_script(0, digest[:20])
    if kind == 3:
        return witness_script(0, digest)
    return witness_script(1, digest)


def chunk_keys(seed: int, index: int, count: int = CHUNK) -> list[tuple[str, bytes, int, bool]]:
    """Rows `index * CHUNK ...` of the book as (chain, key, Bitcoin type index or -1, revoked).

    Cheap (no address text), so a measuring process can rebuild a sample of the keys it loaded.
    Even rows are Bitcoin, cycling through the five script types; odd rows are Ethereum.
    """
    rng = random.Random(seed * 1_000_003 + index)
    rows = []
    first = index * CHUNK
    for n in range(first, first + count):
        revoked = rng.random() < REVOKED_SHARE
        if n % 2 == 0:
            kind = (n // 2) % len(BTC_TYPES)
            rows.append((BTC, _btc_script(kind, rng.randbytes(32)), kind, revoked))
        else:
            rows.append((ETH, rng.randbytes(20), -1, revoked))
    return rows


def chunk_records(args: tuple[int, int, int]) -> list[tuple[Any, ...]]:
    """Full `addresses` rows for one chunk, address text included (run in worker processes)."""
    from depositwatch.addresses import bitcoin_script_to_address, ethereum_checksum_address

    seed, index, count = args
    stamp = REVOKED_AT - 86_400
    records = []
    for n, (chain, key, kind, revoked) in enumerate(chunk_keys(seed, index, count), start=index * CHUNK):
        if chain == BTC:
            address = bitcoin_script_to_address(key, "mainnet")
            kind_name = BTC_TYPES[kind]
        else:
            address = ethereum_checksum_address(key)
            kind_name = "ethereum"
        records.append(
            (
                chain,
                key,
                address,
                kind_name,
                "revoked" if revoked else "active",
                f"user-{n}",
                "custody",
                REVOKED_AT + n % 3600 if revoked else None,
                "bench" if revoked else "",
                stamp,
                stamp,
            )
        )
    return records


def chunk_plan(size: int) -> list[tuple[int, int, int]]:
    return [(SEED, i, min(CHUNK, size - i * CHUNK)) for i in range((size + CHUNK - 1) // CHUNK)]


def miss_keys(count: int) -> list[tuple[str, bytes]]:
    """Keys of the same shapes that are not in the book."""
    rng = random.Random(SEED ^ 0x5A5A5A)
    out = []
    for n in range(count):
        if n % 2 == 0:
            out.append((BTC, _btc_script((n // 2) % len(BTC_TYPES), rng.randbytes(32))))
        else:
            out.append((ETH, rng.randbytes(20)))
    return out


# --------------------------------------------------------------------------------------------------
# filling the stores (setup, not measured)


@dataclass
class Scratch:
    """The stores of one size: URLs to measure and what to remove afterwards."""

    urls: dict[str, str]
    pg_schema: str | None = None
    sqlite_file: str | None = None


async def prepare(size: int, stores: list[str], workdir: str) -> tuple[Scratch, float]:
    """Create and migrate each store, then fill them all from one pass over the generated rows."""
    import asyncpg

    from depositwatch.store import open_store
    from depositwatch.store.book import ADDRESS_COLUMNS  # here: a --baseline tree's measuring child lacks it

    columns = list(ADDRESS_COLUMNS)
    scratch = Scratch(urls={})
    pg = None
    lite = None
    started = time.perf_counter()
    try:
        if "postgres" in stores:
            scratch.pg_schema = scratch_schema("dw_bench_registry")
            admin = await asyncpg.connect(PG_URL)
            try:
                await admin.execute(f"CREATE SCHEMA {scratch.pg_schema}")
            finally:
                await admin.close()
            url = with_search_path(PG_URL, scratch.pg_schema)
            store = await open_store(url, migrate=True)
            await store.close()
            scratch.urls["postgres"] = url
            pg = await asyncpg.connect(url)
            # The same table, its primary key built once after the copy rather than row by row.
            await pg.execute("ALTER TABLE addresses DROP CONSTRAINT addresses_pkey")
        if "sqlite" in stores:
            fd, path = tempfile.mkstemp(prefix="dw_bench_registry_", suffix=".db", dir=workdir)
            os.close(fd)
            Path(path).unlink()
            scratch.sqlite_file = path
            url = f"sqlite:///{path}"
            store = await open_store(url, migrate=True)
            await store.close()
            scratch.urls["sqlite"] = url
            lite = sqlite3.connect(path, isolation_level=None)
            lite.execute("PRAGMA synchronous=OFF")
            lite.execute("PRAGMA cache_size=-2000000")  # 2 GB: the key index stays in memory while filling
            lite.execute("BEGIN")
        marks = ", ".join("?" for _ in columns)
        insert = f"INSERT INTO addresses ({', '.join(columns)}) VALUES ({marks})"
        done = 0
        with multiprocessing.get_context("fork").Pool(max(1, os.cpu_count() or 1)) as pool:
            for records in pool.imap(chunk_records, chunk_plan(size)):
                if pg is not None:
                    await pg.copy_records_to_table("addresses", records=records, columns=columns)
                if lite is not None:
                    lite.executemany(insert, records)
                    if (done // CHUNK) % 10 == 9:  # a million rows per transaction
                        lite.execute("COMMIT")
                        lite.execute("BEGIN")
                done += len(records)
                _progress(f"  filling {size:,}: {done:,} rows")
        _progress("")
        if lite is not None:
            lite.execute("COMMIT")
            lite.execute("ANALYZE")
            lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if pg is not None:
            await pg.execute("SET maintenance_work_mem = '1GB'")
            await pg.execute("ALTER TABLE addresses ADD CONSTRAINT addresses_pkey PRIMARY KEY (chain, key)")
            # A table in steady state: hint bits set and statistics current, as after autovacuum.
            await pg.execute("VACUUM (ANALYZE) addresses")
    except BaseException:
        await cleanup(scratch)
        raise
    finally:
        if pg is not None:
            await pg.close()
        if lite is not None:
            lite.close()
    return scratch, time.perf_counter() - started


async def cleanup(scratch: Scratch) -> None:
    """Drop the PostgreSQL schema and delete the SQLite file."""
    import asyncpg

    if scratch.pg_schema is not None:
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {scratch.pg_schema} CASCADE")
        finally:
            await admin.close()
    if scratch.sqlite_file is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(scratch.sqlite_file + suffix).unlink(missing_ok=True)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text.ljust(60))
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------------
# the measuring process


@dataclass
class Figures:
    """What one measuring process reports."""

    size: int
    store: str
    load_s: float
    rss_before_mb: float
    rss_after_mb: float
    peak_mb: float
    book_ns: float  # per lookup, the matcher's way: median of the passes
    lookup_ns: float  # per lookup, through registry.lookup: median of the passes
    book_best_ns: float  # the fastest pass of each (the machine may be shared: the least disturbed)
    lookup_best_ns: float
    loop_ns: float  # the bare Python loop over the same keys, included in both figures above
    full_gc_s: float  # one full cyclic-GC pass with the registry loaded
    queries: int
    loaded: int
    code: str = "this tree"  # or "baseline": the tree given with --baseline


def _queries(size: int, count: int) -> dict[str, list[bytes]]:
    """`count` keys per the mix: 40% active hits, 20% revoked hits, 40% misses, shuffled, per chain."""
    chunks = (size + CHUNK - 1) // CHUNK
    picks = sorted({round(i * (chunks - 1) / 9) for i in range(10)}) if chunks > 1 else [0]
    active: list[tuple[str, bytes]] = []
    revoked: list[tuple[str, bytes]] = []
    for index in picks:
        for chain, key, _kind, is_revoked in chunk_keys(SEED, index, min(CHUNK, size - index * CHUNK)):
            (revoked if is_revoked else active).append((chain, key))
    rng = random.Random(SEED + 1)
    want_active, want_revoked = count * 2 // 5, count // 5
    mix = [rng.choice(active) for _ in range(want_active)]
    mix += [rng.choice(revoked) for _ in range(want_revoked)]
    mix += miss_keys(count - want_active - want_revoked)
    rng.shuffle(mix)
    out: dict[str, list[bytes]] = {}
    for chain, key in mix:
        out.setdefault(chain, []).append(key)
    return out


def _fresh(keys: list[bytes]) -> list[bytes]:
    """New objects with the same bytes: a transaction's keys come off the wire, their hash not cached."""
    return [bytes(bytearray(k)) for k in keys]


def _time_book(registry: Any, queries: dict[str, list[bytes]]) -> tuple[float, int]:
    at = REVOKED_AT + 7200
    elapsed = alerts = deposits = 0
    for chain, keys in queries.items():
        book = registry.book(chain)
        fresh = _fresh(keys)
        if hasattr(book, "get"):  # one probe: None, ACTIVE, or the revocation time (matcher.py)
            from depositwatch.keytable import ACTIVE

            state_of = book.get
            started = time.perf_counter_ns()
            for key in fresh:
                state = state_of(key)
                if state is None:
                    pass
                elif state is ACTIVE:
                    deposits += 1
                elif at >= state:
                    alerts += 1
                else:
                    deposits += 1
            elapsed += time.perf_counter_ns() - started
            continue
        active, revoked = book.active, book.revoked  # the books before the key tables
        started = time.perf_counter_ns()
        for key in fresh:
            revoked_at = revoked.get(key)
            if revoked_at is not None and at >= revoked_at:
                alerts += 1
            elif revoked_at is not None or key in active:
                deposits += 1
        elapsed += time.perf_counter_ns() - started
    return elapsed, alerts + deposits


def _time_lookup(registry: Any, queries: dict[str, list[bytes]]) -> tuple[float, int]:
    elapsed = found = 0
    lookup = registry.lookup
    for chain, keys in queries.items():
        fresh = _fresh(keys)
        started = time.perf_counter_ns()
        for key in fresh:
            if lookup(chain, key) is not None:
                found += 1
        elapsed += time.perf_counter_ns() - started
    return elapsed, found


def _time_loop(queries: dict[str, list[bytes]]) -> float:
    elapsed = 0
    for keys in queries.values():
        fresh = _fresh(keys)
        started = time.perf_counter_ns()
        for key in fresh:
            if key is None:
                break
        elapsed += time.perf_counter_ns() - started
    return elapsed


async def child(size: int, store_name: str, url: str, queries: int, passes: int) -> Figures:
    from depositwatch.registry import AddressRegistry
    from depositwatch.store import connect_store

    # Without the schema check: a --baseline tree's package reads the book of a store this tree migrated.
    store = await connect_store(url)
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    registry = await AddressRegistry.load(store)
    load_s = time.perf_counter() - started
    await store.close()
    started = time.perf_counter()
    gc.collect()
    full_gc_s = time.perf_counter() - started
    after, peak = rss_mb(), peak_rss_mb()
    loaded = len(registry)

    mix = _queries(size, queries)
    total = sum(len(k) for k in mix.values())
    hits = total - (queries - queries * 2 // 5 - queries // 5)
    book_runs, lookup_runs, loop_runs = [], [], []
    for _ in range(passes):
        elapsed, found = _time_book(registry, mix)
        assert found == hits, (found, hits)
        book_runs.append(elapsed / total)
        elapsed, found = _time_lookup(registry, mix)
        assert found == hits, (found, hits)
        lookup_runs.append(elapsed / total)
        loop_runs.append(_time_loop(mix) / total)
    return Figures(
        size=size,
        store=store_name,
        load_s=load_s,
        rss_before_mb=before,
        rss_after_mb=after,
        peak_mb=peak,
        book_ns=statistics.median(book_runs),
        lookup_ns=statistics.median(lookup_runs),
        book_best_ns=min(book_runs),
        lookup_best_ns=min(lookup_runs),
        loop_ns=statistics.median(loop_runs),
        full_gc_s=full_gc_s,
        queries=total,
        loaded=loaded,
    )


def measure(size: int, store_name: str, url: str, queries: int, passes: int, baseline: str | None = None) -> Figures:
    """Run one measurement in a fresh interpreter (with `baseline`, on that tree's package) and read
    back its figures."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--size",
        str(size),
        "--store",
        store_name,
        "--url",
        url,
        "--queries",
        str(queries),
        "--passes",
        str(passes),
    ]
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = str(Path(baseline).resolve() / "src")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {store_name} at {size:,} failed:\n{done.stderr}")
    figures = Figures(**json.loads(done.stdout.strip().splitlines()[-1]))
    if baseline is not None:
        figures.code = "baseline"
    if figures.loaded != size:
        raise RuntimeError(f"{store_name} at {size:,}: the registry holds {figures.loaded:,} keys")
    return figures


# --------------------------------------------------------------------------------------------------
# report


def table(results: list[Figures]) -> str:
    headers = [
        "addresses",
        "store",
        "code",
        "load s",
        "RSS before MB",
        "RSS after MB",
        "peak MB",
        "bytes/address",
        "ns/lookup, book (best)",
        "ns/lookup, lookup() (best)",
        "lookups/s, book",
    ]
    rows = [
        [
            f"{r.size:,}",
            r.store,
            r.code,
            f"{r.load_s:.1f}",
            f"{r.rss_before_mb:.0f}",
            f"{r.rss_after_mb:.0f}",
            f"{r.peak_mb:.0f}",
            f"{(r.rss_after_mb - r.rss_before_mb) * MB / r.size:.0f}",
            f"{r.book_ns:.0f} ({r.book_best_ns:.0f})",
            f"{r.lookup_ns:.0f} ({r.lookup_best_ns:.0f})",
            f"{1e3 / r.book_ns:.2f} M",
        ]
        for r in results
    ]
    return markdown_table(headers, rows, align="lllrrrrrrrr")


def verdicts(results: list[Figures]) -> list[str]:
    """One line per target, judged on this tree's figures at the largest size measured (load times
    against the baseline's where there is one)."""
    lines = []
    ours = [r for r in results if r.code != "baseline"]
    largest = max(r.size for r in ours)
    top = [r for r in ours if r.size == largest]
    worst_rss = max(top, key=lambda r: r.rss_after_mb)
    worst_peak = max(top, key=lambda r: r.peak_mb)
    ok = worst_rss.rss_after_mb * MB <= TARGET_RSS_BYTES
    lines.append(
        f"- {largest:,} addresses in at most {TARGET_RSS_BYTES / 1e6:.0f} MB RSS: {'met' if ok else 'MISSED'} "
        f"(at most {worst_rss.rss_after_mb:.0f} MiB = {worst_rss.rss_after_mb * MB / 1e6:.0f} MB after loading, "
        f"{worst_rss.store}; peak {worst_peak.peak_mb:.0f} MiB, {worst_peak.store})"
    )
    book = max(ours, key=lambda r: r.book_ns)
    call = max(ours, key=lambda r: r.lookup_ns)
    ok = max(book.book_ns, call.lookup_ns) < TARGET_LOOKUP_NS
    lines.append(
        f"- a lookup under a microsecond: {'met' if ok else 'MISSED'} (slowest median: {book.book_ns:.0f} ns the "
        f"matcher's way, {book.store} at {book.size:,}; {call.lookup_ns:.0f} ns through lookup(), {call.store} at "
        f"{call.size:,})"
    )
    pg = [r for r in top if r.store == "postgres"]
    if pg:
        ok = pg[0].load_s < TARGET_PG_LOAD_S
        lines.append(
            f"- loading {largest:,} from PostgreSQL in under a minute: {'met' if ok else 'MISSED'} "
            f"({pg[0].load_s:.1f} s)"
        )
    for r in ours:
        base = [b for b in results if b.code == "baseline" and (b.size, b.store) == (r.size, r.store)]
        if base:
            b = base[0]
            lines.append(
                f"- {r.size:,} from {r.store}, against the baseline: load {r.load_s:.1f} s vs {b.load_s:.1f} s "
                f"(x{r.load_s / b.load_s:.2f}), RSS after {r.rss_after_mb:.0f} vs {b.rss_after_mb:.0f} MiB "
                f"(x{r.rss_after_mb / b.rss_after_mb:.2f}), matcher's way {r.book_ns:.0f} vs {b.book_ns:.0f} ns "
                f"(x{r.book_ns / b.book_ns:.2f}), lookup() {r.lookup_ns:.0f} vs {b.lookup_ns:.0f} ns "
                f"(x{r.lookup_ns / b.lookup_ns:.2f})"
            )
    return lines


def plot(results: list[Figures], path: str) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colours = {("sqlite", "this tree"): "tab:blue", ("postgres", "this tree"): "tab:orange"}
    colours |= {("sqlite", "baseline"): "tab:gray", ("postgres", "baseline"): "tab:brown"}
    for (store, code), colour in colours.items():
        mine = sorted((r for r in results if (r.store, r.code) == (store, code)), key=lambda r: r.size)
        if not mine:
            continue
        name = store if code == "this tree" else f"{store}, baseline"
        xs = [0] + [r.size / 1e6 for r in mine]
        ax.plot(xs, [mine[0].rss_before_mb] + [r.rss_after_mb for r in mine], "o-", color=colour, label=f"{name}: RSS")
        ax.plot(xs, [mine[0].rss_before_mb] + [r.peak_mb for r in mine], "s--", color=colour, label=f"{name}: peak")
    ax.axhline(
        TARGET_RSS_BYTES / MB, color="tab:red", linestyle=":", label=f"target: 600 MB ({TARGET_RSS_BYTES / MB:.0f} MiB)"
    )
    ax.set_xlabel("addresses in the registry (millions)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("Address registry: memory of the process after AddressRegistry.load")
    ax.set_ylim(0, max([TARGET_RSS_BYTES / MB, *(r.peak_mb for r in results)]) * 1.15)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    save_figure(fig, path, dpi=None)
    plt.close(fig)


def run(args: argparse.Namespace) -> list[Figures]:
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    unknown = set(stores) - {"sqlite", "postgres"}
    if unknown:
        raise SystemExit(f"unknown store(s): {', '.join(sorted(unknown))}")
    pg_version = asyncio.run(postgres_version()) if "postgres" in stores else None
    results: list[Figures] = []
    for size in sizes:
        scratch, fill_s = asyncio.run(prepare(size, stores, args.workdir))
        print(f"# filled {size:,} addresses into {', '.join(stores)} in {fill_s:.0f} s (setup)", file=sys.stderr)
        try:
            for store in stores:
                url = scratch.urls[store]
                codes = [None] if args.baseline is None else [None, args.baseline]
                runs: dict[str | None, list[Figures]] = {code: [] for code in codes}
                for _ in range(args.repeat):  # alternating: both trees under the same load
                    for code in codes:
                        runs[code].append(measure(size, store, url, args.queries, args.passes, code))
                for code in codes:
                    best = sorted(runs[code], key=lambda r: r.load_s)[len(runs[code]) // 2]  # the median load
                    results.append(best)
                    print(f"# {size:,} {store}: {json.dumps(asdict(best))}", file=sys.stderr)
        finally:
            asyncio.run(cleanup(scratch))
    print("machine:", machine_line(pg_version))
    print()
    print(table(results))
    print()
    print("\n".join(verdicts(results)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000000", help="comma-separated address counts")
    parser.add_argument("--stores", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--queries", type=int, default=1_000_000, help="lookups per timing pass")
    parser.add_argument("--passes", type=int, default=7, help="timing passes (median and best reported)")
    parser.add_argument("--repeat", type=int, default=1, help="loads per store and size (median load time)")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the SQLite file goes")
    parser.add_argument("--plot", help="save a PNG of memory against address count here")
    parser.add_argument("--json", help="save the figures as JSON here")
    parser.add_argument("--baseline", help="also measure the depositwatch package of this tree (DIR/src)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = asyncio.run(child(args.size, args.store, args.url, args.queries, args.passes))
        print(json.dumps(asdict(figures)))
        return
    run(args)


if __name__ == "__main__":
    main()
