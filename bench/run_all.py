"""Run every benchmark in bench/ and put the figures they print into docs/performance.md.

    python bench/run_all.py                       # what `make bench` runs
    python bench/run_all.py --only eth,latency    # some of them (names as below, without _bench.py)
    python bench/run_all.py --dry-run             # say what would run

The scripts, in this order, each only if it exists: registry_bench.py, btc_bench.py, eth_bench.py,
latency_bench.py, latency_btc_bench.py, soak.py, derive_bench.py and tree_bench.py (`eth_bench.py`
generates its anvil chain under bench/out/ on first use, and installs ethereum-etl into its own
virtualenv there). Each runs as its own process with the project's Python, one after the other so they
do not disturb each other's timings.

A script that can write its Markdown section (`--markdown FILE`, or `--append FILE` for one that appends
its section to a file) is asked to write it to a scratch file; that section then replaces the section with
the same `## ` heading in docs/performance.md, or is appended when the page has none. Sections of scripts
that cannot write one are left as they are, and the run says so. A failing script does not stop the
others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DOC = REPO / "docs" / "performance.md"
SCRIPTS = (
    "registry_bench.py",
    "btc_bench.py",
    "eth_bench.py",
    "latency_bench.py",
    "latency_btc_bench.py",
    "soak.py",
    "derive_bench.py",
    "tree_bench.py",
)


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def section_option(script: Path) -> str | None:
    """The option through which a script writes its Markdown section, if it has one."""
    helptext = subprocess.run(
        [python(), str(script), "--help"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout
    for option in ("--markdown", "--append"):
        if option in helptext:
            return option
    return None


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(what comes before the first `## ` heading, [(heading line, whole section text), ...])."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            sections.append((line.strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return "".join(head), [(title, "".join(lines)) for title, lines in sections]


def splice(doc: str, new: str) -> tuple[str, list[str]]:
    """`doc` with each `## ` section of `new` put in place of the one with the same heading (or appended)."""
    head, sections = split_sections(doc)
    _, fresh = split_sections(new)
    changed = []
    for title, given in fresh:
        text = given.rstrip("\n") + "\n\n"
        for i, (existing, _) in enumerate(sections):
            if existing == title:
                sections[i] = (title, text)
                break
        else:
            sections.append((title, text))
        changed.append(title)
    body = head + "".join(text if text.endswith("\n\n") else text.rstrip("\n") + "\n\n" for _, text in sections)
    return body.rstrip("\n") + "\n", changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated: registry, btc, eth, latency")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to update")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    wanted = {f"{name.strip()}_bench.py" for name in args.only.split(",")} if args.only else None
    scripts = [BENCH / name for name in SCRIPTS if (BENCH / name).exists() and (wanted is None or name in wanted)]
    if wanted:
        missing = wanted - {s.name for s in scripts}
        if missing:
            print(f"run_all: no such benchmark: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    failed: list[str] = []
    report: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for script in scripts:
        option = section_option(script)
        with tempfile.TemporaryDirectory(prefix="run-all-") as scratch:
            section_file = Path(scratch) / "section.md"
            command = [python(), str(script.relative_to(REPO))]
            if option is not None:
                command += [option, str(section_file)]
            print(f"\n=== {' '.join(command[1:])}  (load {os.getloadavg()[0]:.2f})", flush=True)
            if args.dry_run:
                continue
            began = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, env=env, check=False)
            minutes = (time.perf_counter() - began) / 60
            if done.returncode != 0:
                failed.append(script.name)
                report.append(f"{script.name}: FAILED (exit {done.returncode}) after {minutes:.1f} min")
                continue
            if option is None or not section_file.exists() or not section_file.read_text().strip():
                report.append(
                    f"{script.name}: ran in {minutes:.1f} min; it writes no section, so the page keeps its own"
                )
                continue
            doc = args.doc.read_text() if args.doc.exists() else ""
            updated, titles = splice(doc, section_file.read_text())
            args.doc.parent.mkdir(parents=True, exist_ok=True)
            args.doc.write_text(updated)
            report.append(f"{script.name}: ran in {minutes:.1f} min; updated {', '.join(titles)} in {args.doc.name}")
    print("\n=== summary")
    for line in report:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
