"""Crash suite, replay: killed and rerun until it is done, its output exactly the expected matches."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from depositwatch.devnet import Anvil
from depositwatch.replay import run_id
from depositwatch.store import Scope
from tests.proof.crash import (
    EVM_FETCH_METHODS,
    Killer,
    Trial,
    bodies,
    landed_line,
    n,
    outcome_lines,
    write_config,
)
from tests.proof.faultproxy import Fault, FaultProxy
from tests.proof.harness import (
    EVM_CHAIN_ID,
    FULL,
    SEED,
    EvmTraffic,
    Runner,
    Want,
    check_alerts,
    check_store,
    evm_book,
    evm_chain_toml,
    form_param,
    jittery,
    report,
    store_view,
)
from tests.receivers import Receiver

# Kills per suite: (CI, full), and the shape of the runs.
REPLAY_KILLS = (8, 60)
REPLAY_BLOCKS = (130, 900)


@form_param(timeout_ci=150, timeout_full=3600)
async def test_replay_killed_and_rerun_until_done_outputs_exactly_the_expected_matches(
    form: str, tmp_path: Path, pg_url: str
) -> None:
    """`depositwatch replay --output FILE --send-alerts`, killed and run again until it finishes.

    The output file is opened for appending and a resumed run first writes again what earlier runs
    committed, so the file holds every run's lines; the last run's lines (from the file's size before it
    started) must be exactly the expected matches, once each.
    """
    rng = random.Random(SEED + 2)
    book = evm_book()
    runner = Runner(tmp_path, "replay")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node:
        traffic = EvmTraffic(node, book, random.Random(rng.random()))
        first = await traffic.setup()
        while traffic.blocks < n(REPLAY_BLOCKS):
            await traffic.block()
        last, _ = await traffic.tip()
        await node.mine(2)
        async with (
            FaultProxy(node.http_url) as proxy,
            Receiver(jittery(random.Random(rng.random()))) as receiver,
        ):
            # A node a little slower than loopback anvil, so that kills land while the range is worked
            # through (the full form's longer range needs it slower still); later runs only deliver.
            proxy.set(Fault("delay", seconds=0.03 if FULL else 0.005))
            chain = evm_chain_toml(proxy.url, token=traffic.token, start=first, batch_blocks=2)
            config = await write_config(tmp_path, pg_url, book, chain, receiver.url)
            output = tmp_path / "matches.jsonl"
            argv = ["--config", str(config), "replay", "--chain", "eth", "--from", str(first), "--to", str(last)]
            argv += ["--output", str(output), "--send-alerts"]
            killer = Killer(
                rng,
                proxy=proxy,
                fetch_methods=EVM_FETCH_METHODS,
                receiver=receiver,
                pg_url=pg_url,
                cursor_like="replay:%",
                random_window=(1.5, 4.5),
            )
            plan = killer.schedule(n(REPLAY_KILLS))
            trials: list[Trial] = []
            offsets: list[int] = []
            began = time.monotonic()
            try:
                while True:
                    offsets.append(output.stat().st_size if output.exists() else 0)
                    proc = runner.spawn(*argv)
                    if len(trials) >= len(plan):
                        code = await proc.wait(120)
                        trials.append(Trial(len(trials) + 1, "none", False, time.monotonic() - proc.started, "", code))
                        break
                    trial = await killer.kill(proc, plan[len(trials)], len(trials) + 1)
                    trials.append(trial)
                    if trial.exited is not None:
                        break
                final = runner.procs[-1]
                # The last run finishes its range, then drains the outbox for up to 60 s: it exits 0 when
                # the outbox settled, 1 when alerts are still pending, saying how many. They stay in the
                # outbox; a dispatcher delivers them: here `alerts deliver --until-empty`, as an operator
                # without a daemon would.
                code = trials[-1].exited
                assert code in (0, 1), final.tail()
                said = "still pending in the outbox" in final.text()
                assert said == (code == 1), final.tail()
                wants = [w for w in traffic.wants if first <= w.height <= last]
                alerts = {w.id for w in wants if w.alert}
                left = len(alerts - {b["id"] for b in bodies(receiver, "detected")})
                assert code == 1 or not left, f"exit 0 with {left} alerts undelivered\n{final.tail()}"
                if code:
                    deliver = runner.spawn("--config", str(config), "alerts", "deliver", "--until-empty")
                    assert await deliver.wait(900) == 0, deliver.tail()
            finally:
                runner.close()
            figures = check_alerts(receiver, wants, mode="replay")
            rid = run_id("eth", first, last, str(EVM_CHAIN_ID))
            scope = Scope.replay(rid, True)
            view = await store_view(pg_url, scope.name, scope)
            tip = (last, (await traffic.hashes(last, last))[last])
            stored = check_store(view, wants, await traffic.hashes(first - 1, last), first - 1, tip)
            hashes = await traffic.hashes(first, last)
    data = output.read_bytes()
    last_run = check_replay_output(data[offsets[-1] :], wants, hashes)
    whole = file_figures(data)
    report(
        f"crash: replay on anvil and PostgreSQL, --send-alerts ({form}, seed {SEED + 2})",
        [
            landed_line(trials, killer.points, time.monotonic() - began) + f"; {len(trials)} runs in all",
            f"range {first}..{last}: {traffic.blocks} blocks, {len(wants)} expected matches, "
            f"{sum(w.alert for w in wants)} alerts",
            f"last run's output: {last_run} lines = the expected matches, once each, every field checked; "
            f"{left} alerts undelivered when it exited {code}"
            + (", delivered afterwards by `alerts deliver --until-empty`" if code else ""),
            f"whole file: {whole['lines']} lines from {len(offsets)} runs, {whole['distinct']} distinct, "
            f"{whole['torn']} torn (a killed run's unfinished line, glued to the next run's first)",
            *outcome_lines(figures, stored, tip),
            *[t.line() for t in trials],
        ],
    )


def check_replay_output(data: bytes, wants: list[Want], hashes: dict[int, str]) -> int:
    """The lines of one complete run: every expected match once, nothing else, the fields right."""
    assert data.endswith(b"\n"), "the last run's output does not end with a complete line"
    lines = [json.loads(line) for line in data.decode().splitlines()]
    got = Counter((line["kind"], line["txid"].lower(), line["index"]) for line in lines)
    expected = Counter(w.triple for w in wants)
    assert got == expected, (
        f"replay output differs: missing {list(expected - got)[:5]}, extra {list(got - expected)[:5]}"
    )
    by_triple = {w.triple: w for w in wants}
    for line in lines:
        want = by_triple[(line["kind"], line["txid"].lower(), line["index"])]
        assert int(line["amount"]) == want.amount, (line, want)
        assert line["block_height"] == want.height and line["block_hash"] == hashes[want.height], (line, want)
        assert line["address"].lower()[2:] == want.key, (line, want)
    return len(lines)


def file_figures(data: bytes) -> dict[str, int]:
    lines = data.decode(errors="replace").splitlines()
    torn = 0
    distinct = set()
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            torn += 1
            continue
        distinct.add((parsed["kind"], parsed["txid"], parsed["index"]))
    return {"lines": len(lines), "distinct": len(distinct), "torn": torn}
