"""Parallel replay (`replay --workers N`, `--join RUN_ID`): shards claimed in the store under leases,
their matches written in block order, byte for byte what one worker writes; killed workers' shards are
taken over and a killed run resumes to the same output, nothing twice.

The node is bench/evm_synth.py's generated chain served over HTTP; the workers are real processes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from bench.evm_synth import SynthChain, SynthNode

from depositwatch.store import LeaseLost, SqlStore, connect_store, open_store
from depositwatch.store.shards import ReplayRun, ShardStore, cut
from tests.store.test_store_lifecycle import build_store_at

BLOCKS = 400


@pytest.fixture(scope="module")
def synth() -> SynthChain:
    return SynthChain(BLOCKS, txs=20, population=400, watched=20)


@pytest.fixture
async def node(synth: SynthChain) -> AsyncIterator[SynthNode]:
    async with SynthNode(synth) as served:
        yield served


async def depositwatch(*argv: str, timeout: float = 240) -> tuple[int, bytes, str]:
    """Run the command as a process (its worker processes are real ones too)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "depositwatch", "--log-level", "warning", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


def ad_hoc(node: SynthNode, watch: Path, first: int = 1, last: int = BLOCKS) -> list[str]:
    return [
        "replay",
        "--chain",
        "eth",
        "--rpc-url",
        node.url,
        "--watch",
        str(watch),
        "--from",
        str(first),
        "--to",
        str(last),
    ]


@pytest.fixture
def watch(tmp_path: Path, synth: SynthChain) -> Path:
    path = tmp_path / "watch.csv"
    path.write_text(synth.watch_csv())
    return path


@pytest.fixture
async def single(node: SynthNode, watch: Path) -> bytes:
    """What one worker writes for the whole range (the temporary store)."""
    code, out, err = await depositwatch(*ad_hoc(node, watch))
    assert code == 0, err
    assert out.count(b"\n") > 100  # matches in every shard of the runs below
    return out


def lines(out: bytes) -> list[bytes]:
    return out.splitlines()


async def test_parallel_output_is_a_single_workers_byte_for_byte(
    node: SynthNode, watch: Path, single: bytes, store_url: str
) -> None:
    """Three worker processes over 9 shards (the last one short) write, in block order, the very bytes one
    worker writes: on the temporary store, and on a store given with --store (SQLite and PostgreSQL)."""
    code, out, err = await depositwatch(*ad_hoc(node, watch), "--workers", "3", "--shard-blocks", "45")
    assert code == 0, err
    assert out == single
    assert "by 3 worker(s) here, 9 shards of 45 blocks" in err

    code, out, err = await depositwatch(
        *ad_hoc(node, watch), "--workers", "3", "--shard-blocks", "45", "--store", store_url
    )
    assert code == 0, err
    assert out == single
    store = await open_store(store_url)
    try:
        [run_id] = {line.split()[-1] for line in err.splitlines() if "; run " in line}
        shards = await ShardStore(store).shards(run_id)
        assert [(s.first, s.last) for s in shards] == cut(1, BLOCKS, 45)
        assert all(s.done for s in shards)
        # each shard's first block's parent is the previous shard's last block
        assert all(a.last_hash == b.anchor_hash for a, b in itertools.pairwise(shards))
    finally:
        await store.close()

    # The finished run again: nothing replayed, the whole output again.
    code, out, err = await depositwatch(*ad_hoc(node, watch), "--workers", "2", "--store", store_url)
    assert code == 0, err
    assert out == single
    assert "had already replayed" in err and "shards of 45 blocks" in err


def config_text(store_url: str, node_url: str) -> str:
    return (
        f'[store]\nurl = "{store_url}"\n\n[ha]\nlease_ttl = 2\n\n'
        f'[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = 1337\nrpc_urls = ["{node_url}"]\nconfirmations = 1\n'
        "batch_blocks = 10\n"
    )


async def test_a_run_killed_with_sigkill_resumes_to_the_same_output(
    synth: SynthChain, watch: Path, single: bytes, store_url: str, tmp_path: Path
) -> None:
    """SIGKILL to the command and its worker processes midway; the same command again completes the run
    (the dead workers' shards resumed from their cursors once their leases are free) with the same
    output, every match once, in the store too."""
    async with SynthNode(synth, delay=0.05) as slow:
        config = tmp_path / "depositwatch.toml"
        config.write_text(config_text(store_url, slow.url))
        code, _, err = await depositwatch("--config", str(config), "addresses", "import", str(watch))
        assert code == 0, err
        argv = ["--config", str(config), "replay", "--chain", "eth", "--from", "1", "--to", str(BLOCKS)]
        argv += ["--workers", "2", "--shard-blocks", "50"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "depositwatch", "--log-level", "warning", *argv,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        store = await open_store(store_url)
        try:
            shards = ShardStore(store)
            done: list[bool] = []
            for _ in range(2400):
                await asyncio.sleep(0.05)
                runs = await _runs(store)
                if runs:
                    done = [s.done for s in await shards.shards(runs[0])]
                    cursors = await _shard_cursors(store)
                    if sum(done) >= 2 and cursors:
                        break
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            assert 2 <= sum(done) < len(done), "the run must be stopped midway"

            code, out, err = await depositwatch(*argv)
            assert code == 0, err
            assert out == single
            assert len(set(lines(out))) == len(lines(out))
            [run_id] = await _runs(store)
            assert all(s.done for s in await shards.shards(run_id))
            async with store.db.read() as conn:
                stored = await conn.fetchval("SELECT count(*) FROM matches WHERE scope = $1", f"replay:{run_id}")
            assert stored == len(lines(out))
        finally:
            await store.close()


async def _runs(store: SqlStore) -> list[str]:
    async with store.db.read() as conn:
        return [r[0] for r in await conn.fetch("SELECT run_id FROM replay_runs")]


async def _shard_cursors(store: SqlStore) -> list[tuple[str, int]]:
    """Shard cursors part-way through their shard (a shard being replayed right now)."""
    async with store.db.read() as conn:
        rows = await conn.fetch(
            "SELECT c.name, c.height FROM cursors c JOIN replay_shards s ON c.name = 'replay:' || s.run_id || ':'"
            " || CAST(s.shard AS TEXT) WHERE s.done_at IS NULL AND c.height >= s.first_height"
        )
    return [(r[0], int(r[1])) for r in rows]


async def test_a_dead_workers_shard_is_taken_over_at_once_on_postgresql(
    synth: SynthChain, watch: Path, single: bytes, pg_url: str, tmp_path: Path
) -> None:
    """SIGKILL to one worker process while it holds a shard: its session is gone, so another worker takes
    the shard over (the lease's epoch moves on) and resumes it from its cursor; the run completes in the
    same command with the single-worker output."""
    async with SynthNode(synth, delay=0.05) as slow:
        config = tmp_path / "depositwatch.toml"
        config.write_text(config_text(pg_url, slow.url).replace("lease_ttl = 2", "lease_ttl = 600"))
        code, _, err = await depositwatch("--config", str(config), "addresses", "import", str(watch))
        assert code == 0, err
        argv = ["--config", str(config), "replay", "--chain", "eth", "--from", "1", "--to", str(BLOCKS)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "depositwatch", "--log-level", "warning", *argv, "--workers", "2",
            "--shard-blocks", "50", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        store = await open_store(pg_url)
        try:
            victim = await _worker_holding_a_started_shard(store, proc.pid)
            victim.kill()
            out, err_bytes = await asyncio.wait_for(proc.communicate(), 240)
            assert proc.returncode == 0, err_bytes.decode()
            assert out == single
            leases = {lease.name: lease for lease in await store.leases.rows()}
            assert any(lease.epoch >= 2 for lease in leases.values())  # a shard changed hands
        finally:
            await store.close()


async def _worker_holding_a_started_shard(store: SqlStore, parent: int) -> psutil.Process:
    """The worker process (a child of `parent`) holding a shard whose cursor has moved into it."""
    for _ in range(2400):
        await asyncio.sleep(0.05)
        children = {p.pid: p for p in psutil.Process(parent).children()}
        started = {name for name, _ in await _shard_cursors(store)}
        for lease in await store.leases.rows():
            pid = int(lease.holder.split(":")[1])
            if lease.name in started and pid in children and lease.expires_in > 0:
                return children[pid]
    pytest.fail("no worker process held a started shard")


async def test_claims_skip_held_shards_and_fence_a_worker_that_lost_its_shard(store: SqlStore) -> None:
    """Two workers claiming at once get different shards; a lease expired (or given back) is taken
    by the next claim with a new epoch, and the old holder's fenced writes are refused."""
    shards = ShardStore(store)
    run = await shards.create_run(ReplayRun("r1", "eth", 10, 34, 10, False))
    assert [(s.first, s.last) for s in await shards.shards("r1")] == [(10, 19), (20, 29), (30, 34)]
    assert await shards.create_run(ReplayRun("r1", "eth", 10, 34, 3, False)) == run  # the recorded cut stays

    claims = await asyncio.gather(*(shards.claim(run, holder, 30.0, None) for holder in ("w1", "w2")))
    taken = [c for c in claims if c is not None]
    assert sorted(shard.index for shard, _ in taken) == [0, 1]
    (first, old), (_, other) = sorted(taken, key=lambda c: c[0].index)
    third = await shards.claim(run, "w3", 30.0, None)
    assert third is not None and third[0].index == 2
    assert await shards.claim(run, "w4", 30.0, None) is None  # every shard held by a live worker

    async with store.db.transaction() as conn:  # w1's lease runs out
        await conn.execute("UPDATE leases SET expires_at = expires_at - 100 WHERE name = $1", old.name)
    again = await shards.claim(run, "w4", 30.0, None)
    assert again is not None and again[0].index == first.index and again[1].epoch == old.epoch + 1
    with pytest.raises(LeaseLost):
        await shards.finish(run, first.index, "0xaa", 10, 0, old)
    await shards.finish(run, first.index, "0xbb", 10, 0, again[1])
    await shards.finish(run, 1, "0xcc", 10, 0, other)
    assert [s.done for s in await shards.shards("r1")] == [True, True, False]
    assert (await shards.shards("r1"))[0].done_by == "w4"
    await shards.delete_run("r1")
    assert await shards.run("r1") is None and await shards.shards("r1") == []


async def test_claims_at_once_each_get_a_shard_while_shards_are_free(store: SqlStore) -> None:
    """Five workers claim at once, 300 times over: each gets a shard of its own. On PostgreSQL a claim
    could see a shard's lease free in its snapshot, then find it taken by a claim that committed meanwhile,
    and answer "none free" though others were (seen on a loaded machine): the lease decides, and the claim
    tries the next shard."""
    shards = ShardStore(store)
    for k in range(300):
        run = await shards.create_run(ReplayRun(f"r{k}", "eth", 1, 60, 10, False))
        claims = await asyncio.gather(*(shards.claim(run, f"w{i}", 30.0, None) for i in range(5)))
        assert None not in claims, f"round {k}"
        assert len({shard.index for shard, _ in (c for c in claims if c is not None)}) == 5


async def test_a_store_of_schema_6_gets_the_shard_tables(store_url: str) -> None:
    """`db migrate` brings a store of schema 6 to schema 7 and on: runs and shards can be recorded."""
    await build_store_at(store_url, 6)
    store = await connect_store(store_url)
    try:
        assert (await store.migrate())[0] == 7
        await store.check_schema()
        shards = ShardStore(store)
        await shards.create_run(ReplayRun("r2", "eth", 1, 5, 2, False))
        assert len(await shards.shards("r2")) == 3
    finally:
        await store.close()


def test_cut_covers_the_range_once() -> None:
    """Shards are contiguous, cover the range exactly, the last one possibly short."""
    assert cut(5, 5, 100) == [(5, 5)]
    assert cut(1, 10, 3) == [(1, 3), (4, 6), (7, 9), (10, 10)]
    with pytest.raises(ValueError, match="at least one block"):
        cut(1, 10, 0)


README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
OPERATIONS = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


def documented(where: str) -> list[list[str]]:
    """The commands of the README's parallel-replay section, or of docs/operations.md's walked block."""
    if where == "README":
        section = README[README.index("### Parallel replay") : README.index("## Alerts")]
        found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    else:
        found = re.search(r"<!-- parallel-replay -->\n```sh\n(.*?)```", OPERATIONS, re.DOTALL)
    assert found is not None
    return [shlex.split(line.split(" # ")[0]) for line in found.group(1).splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("where", ["README", "operations"])
async def test_the_documented_multi_machine_commands_run_as_written(
    where: str, synth: SynthChain, watch: Path, single: bytes, pg_url: str, tmp_path: Path
) -> None:
    """The documented pair, run as written against one PostgreSQL store (the config path, heights and
    output files put in place): the first command creates the run and prints its id first, the second
    joins it by that id; both write the single-worker output."""
    first, second = documented(where)
    assert first[0] == second[0] == "depositwatch" and "--workers" in first and "--join" in second
    async with SynthNode(synth, delay=0.05) as slow:
        config = tmp_path / "depositwatch.toml"
        config.write_text(config_text(pg_url, slow.url))
        code, _, err = await depositwatch("--config", str(config), "addresses", "import", str(watch))
        assert code == 0, err

        def real(argv: list[str], output: str) -> list[str]:
            values = {"18100000": "1", "18200000": str(BLOCKS), argv[argv.index("--output") + 1]: output}
            values[argv[argv.index("--config") + 1]] = str(config)
            return [values.get(arg, arg) for arg in argv[1:]]

        outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
        one = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "depositwatch", *real(first, str(outputs[0])), stderr=asyncio.subprocess.PIPE
        )
        assert one.stderr is not None
        said = b""
        while (match := re.search(rb"run ([0-9a-f]{16}),", said)) is None:
            line = await asyncio.wait_for(one.stderr.readline(), 120)
            assert line, said.decode()
            said += line
        joined = [match.group(1).decode() if arg == "RUN_ID" else arg for arg in real(second, str(outputs[1]))]
        code, _, err = await depositwatch(*joined)
        assert code == 0, err
        rest = await asyncio.wait_for(one.stderr.read(), 240)
        assert await one.wait() == 0, (said + rest).decode()
    assert outputs[0].read_bytes() == outputs[1].read_bytes() == single
    if where == "operations":  # its progress query, on the finished run
        section = OPERATIONS[OPERATIONS.index("## Parallel replay") : OPERATIONS.index("## Upgrade")]
        found = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
        assert found is not None
        store = await open_store(pg_url)
        try:
            async with store.db.read() as conn:
                row = await conn.fetchrow(found.group(1).replace("RUN_ID", match.group(1).decode()).rstrip("; \n"))
        finally:
            await store.close()
        assert (row["done"], row["shards"]) == (4, 4)


def test_the_bench_prints_the_figures_docs_performance_records(tmp_path: Path) -> None:
    """bench/replay_workers.py, the command docs/performance.md records, at a small size: a row for each
    store and worker count, the same matches whatever the count (it refuses to print otherwise)."""
    root = Path(__file__).resolve().parents[2]
    section = tmp_path / "section.md"
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "replay_workers.py"), "--blocks", "300", "--txs", "20", "--rounds", "1",
         "--workers", "1,2", "--stores", "temporary,tasks", "--markdown", str(section)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = section.read_text()
    assert text.startswith("## Parallel replay\n")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")
    ]
    assert [(row[0], row[1]) for row in rows[1:]] == [
        ("temporary", "1"),
        ("temporary", "2"),
        ("tasks", "1"),
        ("tasks", "2"),
    ]
    assert "load average" in text
