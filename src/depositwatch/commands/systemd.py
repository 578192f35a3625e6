"""`depositwatch systemd credentials`: the units' credential drop-in, written from the config.

Each secret the config names as a file (`secret = { file = "soc-webhook" }`) becomes one
`LoadCredential=soc-webhook:/etc/depositwatch/credentials/soc-webhook` line, so the units pass exactly
the credentials this site uses: an EVM-only site has no Bitcoin password to load, and a secret added
to the config is one re-run away from being loaded. systemd before 254 has no `ImportCredential=`
(Debian 12 ships 252), hence one line per credential.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depositwatch.commands import err, load, out
from depositwatch.config import Config
from depositwatch.preflight import secrets

DEFAULT_DIRECTORY = Path("/etc/depositwatch/credentials")
# systemd takes any file name as a credential id; a conservative set keeps the id, the file name and
# the drop-in line the same string with nothing to quote.
_CREDENTIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Credential:
    """One secret file the units must load."""

    where: str  # the config's key path, e.g. sinks.soc.secret
    name: str  # the credential id, also its file name in the credentials directory


def register(sub: Any) -> None:
    """Add `systemd credentials`."""
    group = sub.add_parser("systemd", help="systemd integration").add_subparsers(dest="systemd_command", required=True)
    creds = group.add_parser(
        "credentials",
        help="print the units' drop-in: one LoadCredential= per secret file the config names",
    )
    creds.add_argument(
        "--directory",
        type=Path,
        default=DEFAULT_DIRECTORY,
        help=f"where the secret files live, read by systemd as root (default: {DEFAULT_DIRECTORY})",
    )
    creds.set_defaults(handler=_credentials)


def credentials(config: Config, directory: Path) -> tuple[list[Credential], list[str], list[str]]:
    """The credentials to load, the problems that make a drop-in useless, and warnings."""
    wanted: list[Credential] = []
    problems: list[str] = []
    warnings: list[str] = []
    for where, secret in secrets(config):
        if secret.env is not None:
            name = f"{where.split('.')[1]}-secret" if where.count(".") == 2 else "db-password"
            if where.startswith("api.tokens."):
                name = f"api-token-{where.split('.')[2]}"
            problems.append(
                f"{where}: environment variable {secret.env} is not passed by the units; name a credential "
                f'instead, e.g. {{ file = "{name}" }}, and write the secret to {directory / name}'
            )
        elif secret.value is not None:
            warnings.append(f"warning: {where} is written inline; it needs no credential (use file outside tests)")
        elif secret.file is not None:
            name = str(secret.file)
            if secret.file.is_absolute() or not _CREDENTIAL_ID.match(name):
                problems.append(
                    f"{where}: file {name!r} is not a credential name (a plain file name in {directory}, "
                    "letters, digits, '.', '_' and '-'); the units read secrets only as credentials"
                )
            elif name not in {c.name for c in wanted}:
                wanted.append(Credential(where, name))
    return wanted, problems, warnings


def drop_in(wanted: list[Credential], directory: Path) -> str:
    """The drop-in text for depositwatch.service.d/ and depositwatch-replay@.service.d/."""
    lines = [
        "# Written by `depositwatch systemd credentials`: one credential per secret file the config",
        "# names. Re-run it after adding or renaming a secret in the config.",
        "[Service]",
    ]
    for credential in wanted:
        lines.append(f"# {credential.where}")
        lines.append(f"LoadCredential={credential.name}:{directory / credential.name}")
    return "\n".join(lines)


async def _credentials(args: argparse.Namespace) -> int:
    config = load(args)
    directory: Path = args.directory
    if not directory.is_absolute():
        err(f"--directory must be absolute (systemd reads it as root, from /): {directory}")
        return 2
    wanted, problems, warnings = credentials(config, directory)
    for warning in warnings:
        err(warning)
    if problems:
        for problem in problems:
            err(problem)
        return 2
    out(drop_in(wanted, directory))
    return 0
