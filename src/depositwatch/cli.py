"""The `depositwatch` command: parse options, set up logging, hand off to a command module."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from depositwatch import __version__
from depositwatch.chains.base import ChainError, WrongChain
from depositwatch.commands import CommandError, command_modules
from depositwatch.config import ConfigError, redact_text
from depositwatch.logging import setup_logging
from depositwatch.store import StoreError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="depositwatch",
        description="Watch Bitcoin and EVM chains for funds sent to, or swept from, revoked deposit addresses.",
    )
    parser.add_argument("--version", action="version", version=f"depositwatch {__version__}")
    parser.add_argument("--config", "-c", help="config file (default: $DEPOSITWATCH_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="override log.format")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 1 for a failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "info", args.log_format or "auto")
    try:
        return int(asyncio.run(args.handler(args)))
    except (CommandError, ConfigError) as exc:
        print(f"depositwatch: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"depositwatch: store: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except (ChainError, WrongChain) as exc:
        print(f"depositwatch: node: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
