"""Loading: a TOML file (from a path, $DEPOSITWATCH_CONFIG or the default location) validated into
`Config`, every problem named by file and key path, never by the value refused."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from depositwatch.config.base import ConfigError
from depositwatch.config.schema import Config

DEFAULT_CONFIG_PATHS = (Path("/etc/depositwatch/depositwatch.toml"),)
CONFIG_ENV = "DEPOSITWATCH_CONFIG"


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: `file: key.path: message`."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {path}: {message}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate already-parsed TOML data."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_config(path: str | Path | None = None) -> Config:
    """Load the config from `path`, $DEPOSITWATCH_CONFIG, or the default location; validate it."""
    chosen = Path(path) if path else Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None
    if chosen is None:
        chosen = next((p for p in DEFAULT_CONFIG_PATHS if p.exists()), None)
        if chosen is None:
            raise ConfigError(f"no config file: pass --config or set {CONFIG_ENV}")
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{chosen}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    return parse_config(data, str(chosen))
