"""`depositwatch check-config`: validate the config and print it with secrets redacted."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import err, load, out
from depositwatch.config import ConfigError
from depositwatch.jsonutil import dumps
from depositwatch.preflight import secrets


def register(sub: Any) -> None:
    """Add `check-config`."""
    check = sub.add_parser("check-config", help="validate the config; print it with secrets redacted")
    check.add_argument("--resolve-secrets", action="store_true", help="also check every secret can be read")
    check.set_defaults(handler=_check)


async def _check(args: argparse.Namespace) -> int:
    config = load(args)
    problems = []
    for where, secret in secrets(config):
        if secret.value is not None:
            err(f"warning: {where} is written inline; use env or file outside tests and demos")
        if args.resolve_secrets:
            try:
                secret.resolve()
            except ConfigError as exc:
                problems.append(f"{where}: {exc}")
    if args.resolve_secrets and not problems:
        for sink in config.sinks:  # what the daemon checks when it reads them: webhook keys, Slack URLs
            try:
                if sink.type == "webhook":
                    sink.signing_keys()
                elif sink.type == "slack":
                    sink.destination()
            except ConfigError as exc:
                problems.append(str(exc))
    out(dumps(config.redacted(), sort_keys=True, indent=True))
    for problem in problems:
        err(problem)
    return 2 if problems else 0
