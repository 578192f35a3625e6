"""Helpers shared by the benchmarks: the machine line, process memory, scratch stores, tables."""

from __future__ import annotations

import os
import platform
import re
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("DEPOSITWATCH_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MB = 1024 * 1024


def proc_status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS: resident now, VmHWM: the resident peak), in kB."""
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    return proc_status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """The highest resident memory this process has had, in MiB."""
    return proc_status_kb("VmHWM") / 1024


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or what the platform module knows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def memory_total_gb() -> float:
    """Physical memory, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


async def postgres_version(url: str = PG_URL) -> str:
    """The server's version string, e.g. `15.20`; `unavailable` if it cannot be reached."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError):
        return "unavailable"
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


def machine_line(pg_version: str | None = None) -> str:
    """One line describing where the figures were taken."""
    parts = [
        cpu_model(),
        f"{os.cpu_count()} cores",
        f"{memory_total_gb():.0f} GB RAM",
        f"Linux {platform.release()}" if sys.platform == "linux" else platform.platform(),
        f"Python {platform.python_version()}",
    ]
    if pg_version is not None:
        parts.append(f"PostgreSQL {pg_version}")
    parts.append(f"SQLite {sqlite3.sqlite_version}")
    return ", ".join(parts)


def scratch_schema(prefix: str) -> str:
    """A fresh, valid PostgreSQL schema name."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def with_search_path(url: str, schema: str) -> str:
    """`url` with its search_path set to `schema` (asyncpg passes unknown URL parameters as settings)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}search_path={schema}"


def markdown_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; `align` holds one `l` or `r` per column (default: l, then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        out = []
        for cell, width, how in zip(cells, widths, align, strict=True):
            out.append(str(cell).rjust(width) if how == "r" else str(cell).ljust(width))
        return "| " + " | ".join(out) + " |"

    rule = "|".join(
        ("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align, strict=True)
    )
    rule = f"|{rule}|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def save_figure(fig: Any, path: str, dpi: float | None = 110) -> None:
    """A bench's plot, laid out and written to `path` (its folder made if missing)."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
