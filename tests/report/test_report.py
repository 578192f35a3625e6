"""`depositwatch report`: the counting and sweep rules (the pure module), the window options, the
plot's series and file, and the refusals (missing store, bad times, no matplotlib)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from depositwatch.commands.report import PLOT_SIZE
from depositwatch.models import Match, MatchKind, Transfer
from depositwatch.report import Window, build_report, plot_series
from depositwatch.store import Scope, open_store
from depositwatch.store.reporting import ReportRows
from depositwatch.timeutil import iso
from tests.ledger import ETH, SENDER, T0, key, text
from tests.report.test_report_example import build_example
from tests.store.rigs import _reset_logging, cli, ledger_at  # noqa: F401 (_reset_logging: an autouse fixture)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and the chunk's name."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# -- the pure rules, on rows made by hand -------------------------------------------------------------------


def row(kind: str, txid: str, idx: int | None, amount: int, height: int, *, who: bytes = key(5), **rest: Any) -> Any:
    """A `matches` row as the store returns it, ETH by default, in the live scope."""
    return {
        "scope": "live", "chain": "eth", "kind": kind, "asset_symbol": "ETH", "asset_contract": None,
        "asset_decimals": 18, "amount": str(amount), "key": who, "address": "0x" + who.hex(), "label": "",
        "owner": "", "txid": txid, "idx": idx, "block_height": height, "block_time": T0 + 600 * height, **rest,
    }  # fmt: skip


def rows(matches: list[Any], outputs: list[Any] | None = None, retro: set[Any] | None = None) -> ReportRows:
    book = {("eth", key(5)): {"owner": "cust-1", "label": "hot-5"}, ("eth", key(6)): {"owner": "cust-1", "label": ""}}
    return ReportRows(matches, retro or set(), outputs or [], book)


def test_account_sweeps_count_from_the_first_landing_block_and_are_capped() -> None:
    """Outgoing before the first landing is not a sweep of it; outgoing in the same block and later is;
    what is swept of an address is at most what landed on it; the earliest landings are swept first."""
    report = build_report(
        rows(
            [
                row("revoked_outgoing", "0xa0", None, 9, 1),  # before anything landed: not counted
                row("revoked_incoming", "0xb0", None, 10, 2),
                row("revoked_outgoing", "0xb1", None, 4, 2),  # the same block: counted
                row("revoked_incoming", "0xc0", None, 20, 3),
                row("revoked_outgoing", "0xd0", None, 100, 4),  # more than landed: capped
                row("revoked_incoming", "0xe0", None, 1, 5, who=key(6)),  # another address: nothing left it
            ]
        ),
        Window(),
    )
    [group] = report.groups
    assert [(x.txid, x.swept) for x in group.landings] == [("0xb0", 10), ("0xc0", 20), ("0xe0", 0)]
    assert (group.amount, group.swept, group.swept_state) == (31, 30, "partly")
    assert group.landings[0].sweep_txids == {"0xb1", "0xd0"}


def test_one_transfer_is_counted_once_whatever_recorded_it() -> None:
    """The identity is chain, txid (any case), index and asset: live, retro and replay rows of one transfer
    are one landing with three sources; a token transfer in the same transaction is another."""
    token = {
        "asset_symbol": "USDT",
        "asset_contract": "0xdAC17F958D2ee523a2206206994597C13D831ec7",
        "asset_decimals": 6,
    }
    report = build_report(
        rows(
            [
                row("revoked_incoming", "0xAB", None, 10, 2),
                row("revoked_incoming", "0xab", None, 10, 2, scope="replay:1"),
                row("revoked_incoming", "0xaB", None, 10, 2, scope="replay:2"),
                row("revoked_incoming", "0xab", 3, 7, 2, **token),
            ],
            retro={("eth", "0xab", None)},
        ),
        Window(),
    )
    assert [(g.asset.symbol, [(x.amount, sorted(x.sources)) for x in g.landings]) for g in report.groups] == [
        ("ETH", [(10, ["replay", "retro"])]),
        ("USDT", [(7, ["live"])]),
    ]


def test_bitcoin_sweeps_are_the_very_outputs_spent_and_unwatched_outputs_are_unknown() -> None:
    """Bitcoin: spent in any scope's watched outputs is swept (at the sweep's block time); unspent
    everywhere is not; in no scope's watched outputs is not known."""
    script = bytes.fromhex("0014") + b"\x11" * 20
    btc = {"chain": "btc", "asset_symbol": "BTC", "asset_decimals": 8, "who": script}
    outputs = [
        {"chain": "btc", "txid": "aa", "vout": 0, "spent_txid": None, "spent_height": None},
        {"chain": "btc", "txid": "aa", "vout": 0, "spent_txid": "ff", "spent_height": 9},  # another scope
        {"chain": "btc", "txid": "bb", "vout": 1, "spent_txid": None, "spent_height": None},
    ]
    report = build_report(
        rows(
            [
                row("revoked_incoming", "aa", 0, 1_000, 2, **btc),
                row("revoked_incoming", "bb", 1, 2_000, 3, **btc),
                row("revoked_incoming", "cc", 0, 4_000, 4, **btc),  # a deposit turned retro, never watched
                row("revoked_outgoing", "ff", 0, 1_000, 9, **btc),
                row("revoked_outgoing", "ee", 0, 2_000, 9, **{**btc, "who": b"\x00\x14" + b"\x22" * 20}),
            ],
            outputs,
        ),
        Window(),
    )
    [group] = report.groups
    assert [(x.txid, x.swept, x.tracked, x.sweep_times) for x in group.landings] == [
        ("aa", 1_000, True, [T0 + 600 * 9]),
        ("bb", 0, True, []),
        ("cc", 0, False, []),
    ]
    assert (group.swept, group.untracked, group.swept_state) == (1_000, 4_000, "unknown")


def test_the_window_selects_landings_by_block_time_and_chain() -> None:
    """--since and --until are inclusive bounds on the landing's block time; sweeps after --until still count."""
    matches = [
        row("revoked_incoming", "0x1", None, 1, 1),
        row("revoked_incoming", "0x2", None, 2, 2),
        row("revoked_incoming", "0x3", None, 4, 3),
        row("revoked_outgoing", "0x9", None, 2, 9),
    ]
    report = build_report(rows(matches), Window(since=T0 + 1200, until=T0 + 1200))
    assert [(x.txid, x.swept) for g in report.groups for x in g.landings] == [("0x2", 2)]
    assert build_report(rows(matches), Window(chain="btc")).groups == []


# -- the command on the example store ------------------------------------------------------------------------


async def test_the_command_reads_every_scope_and_filters(
    capsys: pytest.CaptureFixture[str], store_url: str, tmp_path: Path
) -> None:
    """JSON groups and totals with exact amounts; --since/--until take ISO 8601 or unix seconds; --chain."""
    example = await build_example(store_url, tmp_path)
    capsys.readouterr()  # what building it printed
    code, stdout, stderr = await cli(capsys, "report", "--store", store_url, "--format", "json")
    assert code == 0, stderr
    body = json.loads(stdout)
    assert set(body) == {"window", "groups", "totals"}
    assert [(g["owner"], g["chain"], g["asset"]["symbol"], g["amount"], g["swept"]) for g in body["groups"]] == [
        ("cust-0", "eth", "ETH", str(4 * 10**17), "no"),
        ("cust-1", "eth", "ETH", str(2 * 10**18), "partly"),
        ("cust-1", "eth", "USDT", "250000000", "no"),
        ("ops", "btc", "BTC", "128523455", "partly"),
        ("user-0", "btc", "BTC", "100000", "yes"),
    ]
    [user0] = [g for g in body["groups"] if g["owner"] == "user-0"]
    assert user0["sources"] == ["retro", "replay"] and user0["sweep_txids"] == [example.retro_sweep]
    assert [t["amount_decimal"] for t in body["totals"]] == ["1.28623455", "2.4", "250"]

    async def owners(*options: str) -> list[tuple[str, str, int]]:
        code, stdout, stderr = await cli(capsys, "report", "--store", store_url, "--format", "json", *options)
        assert code == 0, stderr
        return [(g["owner"], g["asset"]["symbol"], g["count"]) for g in json.loads(stdout)["groups"]]

    # ETH landings at T0 + 1200 (cust-1) and T0 + 1800 (cust-0, retro); USDT at T0 + 2400.
    assert await owners("--chain", "eth", "--until", str(T0 + 1800)) == [("cust-0", "ETH", 1), ("cust-1", "ETH", 1)]
    assert await owners("--since", iso(T0 + 1800) or "", "--chain", "eth") == [
        ("cust-0", "ETH", 1),
        ("cust-1", "USDT", 1),
    ]
    assert await owners("--chain", "btc", "--since", "2023-11-21T22:31:00+00:00") == [("ops", "BTC", 3)]
    assert await owners("--chain", "doge") == []

    code, stdout, stderr = await cli(capsys, "report", "--store", store_url, "--since", "last week")
    assert (code, stdout) == (2, "") and "--since" in stderr
    code, stdout, stderr = await cli(
        capsys, "report", "--store", store_url, "--since", "1700001000", "--until", "1700000000"
    )
    assert (code, stdout) == (2, "") and "before --since" in stderr

    # The plot's series are the report's numbers: one line per asset, cumulative, ending at the totals.
    png = tmp_path / "landed.png"
    code, _, stderr = await cli(capsys, "report", "--store", store_url, "--format", "csv", "--plot", str(png))
    assert code == 0, stderr
    assert png_size(png.read_bytes()) == PLOT_SIZE
    store = await open_store(store_url)
    try:
        report = build_report(await store.reports.rows(), Window())
    finally:
        await store.close()
    series = plot_series(report)
    assert [s.label for s in series] == ["btc BTC", "eth ETH", "eth USDT"]
    assert [s.points[-1][1] for s in series] == [int(t["amount"]) for t in body["totals"]]
    btc = series[0]
    landings = sorted((x.time, x.amount) for g in report.groups if g.chain == "btc" for x in g.landings)
    running, expected = 0, {}
    for time, amount in landings:
        running += amount
        expected[time] = running
    assert btc.points == sorted(expected.items())


async def test_a_mempool_sighting_is_not_counted(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """Only transfers in a block count; one seen only in the mempool may never land."""
    async with ledger_at(sqlite_url) as ledger:
        await ledger.book(revoked=[(5, T0)])
        await ledger.block([(5, 3)])
        pending = Transfer(ETH, 9, "0x" + "cd" * 32, None, key(5), None, SENDER, text(5))
        match = Match("eth", MatchKind.REVOKED_INCOMING, key(5), pending, None, None)
        assert await ledger.store.record_mempool(Scope.live(), ledger.policy, [match]) == 1
    code, stdout, _ = await cli(capsys, "report", "--store", sqlite_url, "--format", "json")
    assert code == 0
    [group] = json.loads(stdout)["groups"]
    assert (group["count"], group["amount"]) == (1, "3")


async def test_refusals(capsys: pytest.CaptureFixture[str], sqlite_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    """A missing store is an error (exit 1), as for every read-only command; --plot without matplotlib
    says so in one line, before reading anything, and writes nothing."""
    code, stdout, stderr = await cli(capsys, "report", "--store", sqlite_url)
    assert (code, stdout) == (1, "") and "no SQLite store" in stderr
    store = await open_store(sqlite_url, migrate=True)
    await store.close()
    code, stdout, stderr = await cli(capsys, "report", "--store", sqlite_url, "--format", "md")
    assert code == 0 and "No funds reached revoked addresses" in stdout

    code, stdout, stderr = await cli(capsys, "report", "--store", sqlite_url, "--plot", str(tmp_path / "no" / "p.png"))
    assert (code, stdout) == (1, "") and stderr.startswith(f"depositwatch: --plot {tmp_path}/no/p.png: ")
    assert len(stderr.splitlines()) == 1

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra finds
    png = tmp_path / "plot.png"
    code, stdout, stderr = await cli(capsys, "report", "--store", sqlite_url, "--plot", str(png))
    assert (code, stdout) == (1, "")
    assert (
        stderr == "depositwatch: --plot needs matplotlib, which is not installed: pip install 'depositwatch[report]'\n"
    )
    assert not png.exists()
