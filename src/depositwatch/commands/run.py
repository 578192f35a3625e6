"""`depositwatch run`: the daemon."""

from __future__ import annotations

import argparse
import os
from typing import Any

from depositwatch.commands import CommandError, load
from depositwatch.config import LISTEN_ENV, Config, parse_listen


def register(sub: Any) -> None:
    """Add `run`."""
    run = sub.add_parser("run", help="run the daemon (under systemd: Type=notify)")
    run.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"the metrics and health endpoint (default: ${LISTEN_ENV}, else http.listen); port 0 picks a free one",
    )
    run.set_defaults(handler=_run)


async def _run(args: argparse.Namespace) -> int:
    from depositwatch.leadership import AlreadyRunning
    from depositwatch.service import Service, StartupError

    config = with_listen(load(args), args.listen)
    service = Service(config, config_path=args.config)
    try:
        return await service.run()
    except (StartupError, AlreadyRunning) as exc:
        raise CommandError(str(exc)) from None


def with_listen(config: Config, flag: str | None) -> Config:
    """The config with the HTTP address of `--listen`, else of $DEPOSITWATCH_LISTEN, else its own:
    two instances on one host each need their own port."""
    chosen, where = (flag, "--listen") if flag else (os.environ.get(LISTEN_ENV), LISTEN_ENV)
    if not chosen:
        return config
    try:
        parse_listen(chosen)
    except ValueError as exc:
        raise CommandError(f"{where}: {exc}") from None
    return config.model_copy(update={"http": config.http.model_copy(update={"listen": chosen})})
