"""What every section of the configuration is built from: the strict model, `ConfigError`, secrets named
by environment variable or file, and the URL check that remembers a URL's credentials for redaction."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from depositwatch.config.redaction import remember_secret, remember_url


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key path and the problem."""


class _Strict(BaseModel):
    # hide_input_in_errors: a validation error must never carry the value it refused (a URL with a key,
    # a password) into a message, a log line or a traceback.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class Secret(_Strict):
    """A secret named by environment variable or file, never written in the config itself.

    `value` is accepted for tests and demos only; `check-config` warns about it. Resolved secrets are
    `SecretStr` (shown as stars by repr, str and dumps) and are remembered so that `redact_text` can
    take them out of any text that is about to be printed, logged or stored.
    """

    env: str | None = None
    file: Path | None = None
    value: SecretStr | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        sources = [s for s in (self.env, self.file, self.value) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of env, file or value")
        if self.value is not None:
            remember_secret(self.value.get_secret_value())
        return self

    def resolve(self) -> SecretStr:
        """Read the secret now; raise ConfigError naming the variable or file when it is missing."""
        if self.value is not None:
            return self.value
        if self.env is not None:
            found = os.environ.get(self.env)
            if found is None:
                raise ConfigError(f"environment variable {self.env} is not set")
            remember_secret(found)
            return SecretStr(found)
        assert self.file is not None
        path = _credential_path(self.file)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"secret file {path} is not UTF-8 text") from None
        remember_secret(text)
        return SecretStr(text)


def _credential_path(path: Path) -> Path:
    """Relative secret files are looked up in systemd's $CREDENTIALS_DIRECTORY when it is set."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        return Path(creds) / path
    return path


def check_url(url: str, schemes: set[str]) -> None:
    """ValueError unless `url` parses, with one of `schemes`, a place to go and a numeric port if any."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number in 0-65535
        _ = parts.hostname  # an unclosed IPv6 bracket
    except ValueError:
        raise ValueError("not a usable URL (it does not parse)") from None
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ValueError(f"not a usable URL (expected {' or '.join(sorted(schemes))})")
    remember_url(url)
