"""`depositwatch run`: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import CommandError, load


def register(sub: Any) -> None:
    """Add `run`."""
    run = sub.add_parser("run", help="run the daemon (under systemd: Type=notify)")
    run.set_defaults(handler=_run)


async def _run(args: argparse.Namespace) -> int:
    from depositwatch.leadership import AlreadyRunning
    from depositwatch.service import Service, StartupError

    config = load(args)
    service = Service(config, config_path=args.config)
    try:
        return await service.run()
    except (StartupError, AlreadyRunning) as exc:
        raise CommandError(str(exc)) from None
