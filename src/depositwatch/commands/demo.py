"""`depositwatch demo`: the self-contained demonstration (the README's first command)."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import CommandError


def register(sub: Any) -> None:
    """Add `demo`."""
    demo = sub.add_parser("demo", help="run the whole product on a local anvil chain and show the alerts")
    demo.set_defaults(handler=_demo)


async def _demo(_args: argparse.Namespace) -> int:
    from depositwatch.demo import DemoError, run_demo
    from depositwatch.devnet import AnvilError

    try:
        return await run_demo()
    except (DemoError, AnvilError) as exc:
        raise CommandError(f"demo: {exc}") from None
