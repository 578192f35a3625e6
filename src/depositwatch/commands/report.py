"""`depositwatch report`: funds that reached revoked addresses, for support (who to contact) and finance
(what to reimburse), as CSV, JSON or Markdown, with an optional plot of the value landing over time."""

from __future__ import annotations

import argparse
import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from depositwatch.commands import CommandError, add_store_option, err, store_from
from depositwatch.jsonutil import dumps
from depositwatch.models import Asset
from depositwatch.report import Group, Report, Series, Total, Window, build_report, plot_series, sorted_sources
from depositwatch.report import swept_state as state_of
from depositwatch.timeutil import iso, parse_timestamp

PLOT_SIZE = (1000, 500)  # pixels of the PNG
PLOT_DPI = 100
MISSING_PLOT = "--plot needs matplotlib, which is not installed: pip install 'depositwatch[report]'"
CSV_COLUMNS = [
    "section", "owner", "chain", "asset", "asset_contract", "asset_decimals", "owners", "count", "amount",
    "amount_decimal", "first_seen", "last_seen", "addresses", "txids", "sources", "swept", "swept_amount",
    "swept_decimal", "swept_first", "swept_last", "sweep_txids", "untracked_amount", "untracked_decimal",
]  # fmt: skip


def register(sub: Any) -> None:
    """Add the `report` command."""
    parser = sub.add_parser("report", help="funds that reached revoked addresses, per owner and asset, with sweeps")
    parser.add_argument("--since", help="only transfers in blocks from this time on (ISO 8601 with zone, or unix)")
    parser.add_argument("--until", help="only transfers in blocks up to this time (ISO 8601 with zone, or unix)")
    parser.add_argument("--chain", help="only this chain")
    parser.add_argument("--format", choices=["csv", "json", "md"], default="md", help="output format (default md)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the value landing over time, per asset")
    add_store_option(parser)
    parser.set_defaults(handler=_report)


def _time(args: argparse.Namespace, option: str) -> int | None:
    text = getattr(args, option)
    if text is None:
        return None
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise CommandError(f"--{option}: {exc}") from None


async def _report(args: argparse.Namespace) -> int:
    window = Window(_time(args, "since"), _time(args, "until"), args.chain)
    if window.since is not None and window.until is not None and window.until < window.since:
        raise CommandError(f"--until {args.until} is before --since {args.since}")
    if args.plot is not None:
        try:
            import matplotlib as mpl  # noqa: F401
        except ImportError:
            err(f"depositwatch: {MISSING_PLOT}")
            return 1
    store = await store_from(args)
    try:
        rows = await store.reports.rows(args.chain)
    finally:
        await store.close()
    report = build_report(rows, window)
    text = {"csv": render_csv, "json": render_json, "md": render_markdown}[args.format](report)
    if args.plot is not None:
        try:
            draw_plot(plot_series(report), Path(args.plot))
        except OSError as exc:
            err(f"depositwatch: --plot {args.plot}: {exc.strerror or exc}")
            return 1
    print(text, end="")
    return 0


# -- the records every format shows -----------------------------------------------------------------------


def _asset(asset: Asset) -> dict[str, Any]:
    return {"symbol": asset.symbol, "contract": asset.contract, "decimals": asset.decimals}


def group_record(group: Group) -> dict[str, Any]:
    """One owner, chain and asset: what landed, where, when, from which records, and what left again."""
    asset = group.asset
    sweep_times = [t for landing in group.landings for t in landing.sweep_times]
    return {
        "owner": group.owner,
        "chain": group.chain,
        "asset": _asset(asset),
        "count": len(group.landings),
        "amount": str(group.amount),
        "amount_decimal": asset.to_decimal(group.amount),
        "first_seen": iso(min(landing.time for landing in group.landings)),
        "last_seen": iso(max(landing.time for landing in group.landings)),
        "addresses": [{"address": a, "label": label} for a, label in sorted(group.labels.items())],
        "txids": list(dict.fromkeys(landing.txid for landing in group.landings)),
        "sources": sorted_sources(s for landing in group.landings for s in landing.sources),
        "swept": group.swept_state,
        "swept_amount": str(group.swept),
        "swept_decimal": asset.to_decimal(group.swept),
        "swept_first": iso(min(sweep_times)) if sweep_times else None,
        "swept_last": iso(max(sweep_times)) if sweep_times else None,
        "sweep_txids": sorted({t for landing in group.landings for t in landing.sweep_txids}),
        "untracked_amount": str(group.untracked),
        "untracked_decimal": asset.to_decimal(group.untracked),
        "transfers": [
            {
                "txid": landing.txid,
                "index": landing.index,
                "address": landing.address,
                "amount": str(landing.amount),
                "amount_decimal": asset.to_decimal(landing.amount),
                "block_height": landing.height,
                "block_time": iso(landing.time),
                "sources": sorted_sources(landing.sources),
                "swept_amount": str(landing.swept),
                "swept_known": landing.tracked,
            }
            for landing in group.landings
        ],
    }


def total_record(total: Total) -> dict[str, Any]:
    """One chain and asset over every owner."""
    asset = total.asset
    return {
        "chain": total.chain,
        "asset": _asset(asset),
        "owners": total.owners,
        "count": total.count,
        "amount": str(total.amount),
        "amount_decimal": asset.to_decimal(total.amount),
        "swept": state_of(total.amount, total.swept, total.untracked),
        "swept_amount": str(total.swept),
        "swept_decimal": asset.to_decimal(total.swept),
        "untracked_amount": str(total.untracked),
        "untracked_decimal": asset.to_decimal(total.untracked),
    }


def _window(window: Window) -> dict[str, Any]:
    return {"since": iso(window.since), "until": iso(window.until), "chain": window.chain}


# -- formats ---------------------------------------------------------------------------------------------


def render_json(report: Report) -> str:
    """One JSON object: the window, `groups` and `totals`."""
    body = {
        "window": _window(report.window),
        "groups": [group_record(g) for g in report.groups],
        "totals": [total_record(t) for t in report.totals],
    }
    return dumps(body, indent=True) + "\n"


def csv_fields(record: dict[str, Any], section: str, asset: Asset) -> dict[str, Any]:
    """The CSV columns a group's and a total's rows share: the record's own, the section and the asset."""
    return {
        **{k: v for k, v in record.items() if k in CSV_COLUMNS},
        "section": section,
        "asset": asset.symbol,
        "asset_contract": asset.contract or "",
        "asset_decimals": asset.decimals,
    }


def render_csv(report: Report) -> str:
    """One table: a `group` row per owner, chain and asset, then a `total` row per chain and asset."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for group in report.groups:
        record = group_record(group)
        writer.writerow(
            {
                **csv_fields(record, "group", group.asset),
                "owners": 1,
                "addresses": " ".join(a["address"] for a in record["addresses"]),
                "txids": " ".join(record["txids"]),
                "sources": " ".join(record["sources"]),
                "sweep_txids": " ".join(record["sweep_txids"]),
            }
        )
    for total in report.totals:
        record = total_record(total)
        writer.writerow(
            {
                **csv_fields(record, "total", total.asset),
            }
        )
    return buffer.getvalue()


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _asset_text(asset: Asset) -> str:
    return asset.symbol if asset.contract is None else f"{_cell(asset.symbol)} `{asset.contract}`"


def _day(text: str | None) -> str:
    return "" if text is None else text.replace("T", " ").replace("Z", "")


def render_markdown(report: Report) -> str:
    """Two tables a person pastes into a ticket: per owner, chain and asset; then per chain and asset."""
    window = report.window
    span = [f"from {_day(iso(window.since))}" if window.since is not None else "",
            f"to {_day(iso(window.until))}" if window.until is not None else ""]  # fmt: skip
    where = " ".join(s for s in span if s) or "all recorded blocks"
    chain = f", chain {window.chain}" if window.chain else ""
    lines = ["# Funds that reached revoked addresses", "", f"Blocks: {where}{chain} (times UTC).", ""]
    if not report.groups:
        lines += ["No funds reached revoked addresses in these blocks.", ""]
        return "\n".join(lines)
    lines += [
        "## Per owner, chain and asset",
        "",
        "| Owner | Chain | Asset | Transfers | Amount | First seen | Last seen | Addresses | Swept out | Swept amount"
        " | Swept when | Sources | Transactions |",
        "|---|---|---|--:|--:|---|---|---|---|--:|---|---|---|",
    ]
    for group in report.groups:
        r = group_record(group)
        when = _day(r["swept_first"])
        if r["swept_last"] != r["swept_first"]:
            when += f" – {_day(r['swept_last'])}"
        addresses = "<br>".join(
            f"`{a['address']}`" + (f" ({_cell(a['label'])})" if a["label"] else "") for a in r["addresses"]
        )
        cells = [
            _cell(group.owner) or "(none)",
            _cell(group.chain),
            _asset_text(group.asset),
            str(r["count"]),
            f"{r['amount_decimal']} {_cell(group.asset.symbol)}",
            _day(r["first_seen"]),
            _day(r["last_seen"]),
            addresses,
            r["swept"],
            f"{r['swept_decimal']} {_cell(group.asset.symbol)}",
            when,
            ", ".join(r["sources"]),
            "<br>".join(f"`{t}`" for t in r["txids"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Totals per chain and asset",
        "",
        "| Chain | Asset | Owners | Transfers | Amount | Swept out | Swept amount | Not known |",
        "|---|---|--:|--:|--:|---|--:|--:|",
    ]
    for total in report.totals:
        t = total_record(total)
        symbol = _cell(total.asset.symbol)
        cells = [
            _cell(total.chain),
            _asset_text(total.asset),
            str(t["owners"]),
            str(t["count"]),
            f"{t['amount_decimal']} {symbol}",
            t["swept"],
            f"{t['swept_decimal']} {symbol}",
            f"{t['untracked_decimal']} {symbol}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# -- the plot ----------------------------------------------------------------------------------------------


def draw_plot(series: list[Series], path: Path) -> None:
    """A PNG of PLOT_SIZE pixels: the cumulative value landed per asset (in whole units, log scale)."""
    import matplotlib as mpl

    mpl.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num

    figure = plt.figure(figsize=(PLOT_SIZE[0] / PLOT_DPI, PLOT_SIZE[1] / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    try:
        axes = figure.add_subplot()
        end = max((line.points[-1][0] for line in series), default=0)
        for line in series:
            # Each line runs on to the last landing of any asset, so every total reads at the right edge.
            points = [*line.points, (end, line.points[-1][1])]
            times = date2num([datetime.fromtimestamp(t, UTC) for t, _ in points])  # type: ignore[no-untyped-call]
            # Floats for drawing only; every figure the report prints is exact.
            values = [amount / 10**line.asset.decimals for _, amount in points]
            axes.step(times, values, where="post", label=line.label)
            axes.plot(times[:-1], values[:-1], "o", color=axes.lines[-1].get_color())
        if series:
            axes.set_yscale("log")
            figure.legend(loc="outside right upper")
            locator = AutoDateLocator()  # type: ignore[no-untyped-call]  # matplotlib leaves it untyped
            axes.xaxis.set_major_locator(locator)
            axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        else:
            axes.text(0.5, 0.5, "nothing reached revoked addresses", ha="center", va="center")
        axes.set_title("Value reaching revoked addresses (cumulative, per asset)")
        axes.set_ylabel("amount in the asset's units (log)")
        axes.set_xlabel("block time (UTC)")
        axes.grid(True, alpha=0.3)
        figure.savefig(path, format="png", dpi=PLOT_DPI)
    finally:
        plt.close(figure)
