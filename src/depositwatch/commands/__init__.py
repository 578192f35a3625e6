"""Command groups of the CLI. Each module has `register(subparsers)`; handlers are async and return an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from depositwatch.addressbook import BadRows
from depositwatch.config import Config, ConfigError, StoreConfig, load_config
from depositwatch.logging import setup_logging
from depositwatch.store import SqlStore, open_store


class CommandError(Exception):
    """Bad input on the command line: printed as it is, exit code 2."""


@contextmanager
def reading_rows(outcome: str, what: str = "row(s)") -> Iterator[None]:
    """Around reading a file of rows: a rejected file is a CommandError that lists every bad row by its line
    and says `outcome` ("nothing was imported"); any other ValueError of the reading is one too."""
    try:
        yield
    except BadRows as exc:
        raise CommandError(f"{len(exc.problems)} bad {what}{outcome}:\n{exc}") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None


class CommandModule(Protocol):
    """What a command module offers the CLI."""

    def register(self, sub: Any) -> None:
        """Add its subcommands."""


def load(args: argparse.Namespace, *, required: bool = True) -> Config:
    """The config named by --config or $DEPOSITWATCH_CONFIG; with `required=False` defaults when none."""
    try:
        config = load_config(args.config)
    except ConfigError:
        if required or args.config:
            raise
        config = Config()
    if args.log_level or args.log_format or config.log.level != "info" or config.log.format != "auto":
        setup_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    return config


async def store_from(args: argparse.Namespace, config: Config | None = None, *, migrate: bool = False) -> SqlStore:
    """Open the store of `--store URL` or of the config.

    Only the commands that change the store pass `migrate=True` (create a missing store, apply pending
    migrations); every other command refuses a missing, empty or older store instead of reading an
    empty one as "nothing there".
    """
    url = getattr(args, "store", None)
    if url:
        return await open_store(StoreConfig(url=url), migrate=migrate)
    config = config or load(args, required=False)
    return await open_store(config.store, migrate=migrate)


def add_store_option(parser: argparse.ArgumentParser) -> None:
    """`--store URL`, overriding the config's store."""
    parser.add_argument("--store", help="store URL (sqlite:///path.db or postgresql://...), overrides the config")


def out(line: str) -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    """Write one line to stderr."""
    sys.stderr.write(line + "\n")


def command_modules() -> list[CommandModule]:
    """Every command group, in help order."""
    found: list[CommandModule] = []
    for name in (
        "addresses",
        "db",
        "settings",
        "replay",
        "run",
        "alerts",
        "matches",
        "report",
        "btc",
        "systemd",
        "demo",
    ):
        try:
            found.append(importlib.import_module(f"depositwatch.commands.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"depositwatch.commands.{name}":  # a group not built yet is left out
                raise
    return found
