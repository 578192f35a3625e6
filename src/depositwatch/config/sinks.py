"""The `[[sinks]]` section: one alert destination, the keys of its channel, its secrets and its retries."""

# The sections are pydantic models (through `_Strict`), which copy mutable defaults; ruff sees that only
# when the base class is in the same module.
# ruff: noqa: RUF012

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from depositwatch.config.base import ConfigError, Secret, _Strict, check_url
from depositwatch.models import Severity

# An address in an email header or envelope: no spaces, angle brackets or line breaks (header injection).
EMAIL_PATTERN = r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}$"


class RetryConfig(_Strict):
    """How a failing delivery is retried before it becomes dead."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 12
    initial_backoff: Annotated[float, Field(gt=0)] = 1.0
    max_backoff: Annotated[float, Field(gt=0)] = 300.0


class SinkConfig(_Strict):
    """An alert destination."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    type: Literal["webhook", "slack", "pagerduty", "opsgenie", "teams", "discord", "telegram", "email", "exec"]
    url: str | None = None
    # webhook signing secret (whsec_...), Slack/Teams/Discord webhook URL, PagerDuty routing key,
    # Opsgenie API key, Telegram bot token
    secret: Secret | None = None
    # Webhooks only: more signing secrets beside `secret`, each signing every request (key rotation).
    secrets: Annotated[list[Secret], Field(max_length=8)] = []
    kinds: list[Literal["revoked_incoming", "revoked_outgoing", "deposit", "test"]] = [
        "revoked_incoming",
        "revoked_outgoing",
    ]
    min_severity: Severity = Severity.INFO
    # false: leave out alerts about tokens outside the chain's configured list (`token_listed` false)
    unlisted_tokens: bool = True
    # false: leave out address-poisoning alerts (zero or dust transfers); pagerduty and opsgenie never get them
    poisoning: bool = True
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    burst_threshold: Annotated[int, Field(ge=1)] = 20
    retry: RetryConfig = RetryConfig()
    # telegram: the chat, group or channel (a numeric id, or @channelusername)
    chat_id: (
        Annotated[int, Field(ge=-(2**53), le=2**53)]
        | Annotated[str, Field(pattern=r"^@[A-Za-z][A-Za-z0-9_]{3,31}$")]
        | None
    ) = None
    # email: the SMTP relay, envelope and header addresses, and how the connection is protected
    host: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]_-]+$")] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    from_: Annotated[str, Field(pattern=EMAIL_PATTERN)] | None = Field(default=None, alias="from")
    to: Annotated[list[Annotated[str, Field(pattern=EMAIL_PATTERN)]], Field(min_length=1, max_length=100)] | None = None
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password: Secret | None = None
    tls: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: Path | None = None  # email: trust this CA bundle instead of the system's (a private relay)
    # exec: program and arguments, run without a shell
    command: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(min_length=1, max_length=256)]
        | None
    ) = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value, {"http", "https"})
        return value

    @model_validator(mode="after")
    def _needs_per_channel(self) -> SinkConfig:
        needs = {
            "opsgenie": "secret (the API key)",
            "teams": "secret (the workflow webhook URL)",
            "discord": "secret (the webhook URL)",
            "telegram": "secret (the bot token)",
        }
        if self.type in needs and self.secret is None:
            raise ValueError(f"{_a(self.type)} sink needs {needs[self.type]}")
        if self.type == "telegram" and self.chat_id is None:
            raise ValueError("a telegram sink needs chat_id")
        if self.type == "email":
            missing = [key for key, value in (("host", self.host), ("from", self.from_), ("to", self.to)) if not value]
            if missing:
                raise ValueError(f"an email sink needs {', '.join(missing)}")
            if (self.username is None) != (self.password is None):
                raise ValueError("an email sink needs both username and password for AUTH, or neither")
            if self.password is not None and self.tls == "none":
                raise ValueError('tls = "none" with a password would send it in clear: use "starttls" or "tls"')
        if self.type == "exec" and self.command is None:
            raise ValueError("an exec sink needs command (a list: program and arguments)")
        # keys of another channel are mistakes (a `to` on a telegram sink reaches nobody)
        own = {
            "url": {"webhook", "slack", "pagerduty", "opsgenie", "telegram"},
            "secret": {"webhook", "slack", "pagerduty", "opsgenie", "teams", "discord", "telegram"},
            "chat_id": {"telegram"},
            "host": {"email"},
            "port": {"email"},
            "from_": {"email"},
            "to": {"email"},
            "username": {"email"},
            "password": {"email"},
            "tls": {"email"},
            "ca_file": {"email"},
            "command": {"exec"},
        }
        given = self.model_fields_set
        stray = sorted(key.rstrip("_") for key, types in own.items() if self.type not in types and key in given)
        if stray:
            raise ValueError(
                f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} not a key of {_a(self.type)} sink"
            )
        return self

    @model_validator(mode="after")
    def _needs(self) -> SinkConfig:
        if self.type == "webhook" and (self.url is None or not self.all_secrets()):
            raise ValueError("a webhook sink needs url and secret (or secrets)")
        if self.type != "webhook" and self.secrets:
            raise ValueError("secrets (several signing secrets) are for webhook sinks; use secret")
        if self.type == "slack" and self.secret is None and self.url is None:
            raise ValueError("a slack sink needs secret (the incoming-webhook URL) or url")
        if self.type == "pagerduty" and self.secret is None:
            raise ValueError("a pagerduty sink needs secret (the routing key)")
        if self.type == "webhook":
            # Inline values are checked now, at load; env and file secrets when they are read.
            for where, secret in self.secret_paths():
                if secret.value is not None:
                    _webhook_key(where, secret.value)
        return self

    def all_secrets(self) -> list[Secret]:
        """`secret` (if any) followed by `secrets`."""
        return ([self.secret] if self.secret is not None else []) + list(self.secrets)

    def secret_paths(self) -> list[tuple[str, Secret]]:
        """Each secret with its key path, as errors name it."""
        found = [("secret", self.secret)] if self.secret is not None else []
        found += [(f"secrets.{i}", s) for i, s in enumerate(self.secrets)]
        return found

    def signing_keys(self) -> list[bytes]:
        """The webhook HMAC keys, read now; ConfigError naming the key path when one is missing or unusable."""
        keys = []
        for where, secret in self.secret_paths():
            try:
                value = secret.resolve()
            except ConfigError as exc:
                raise ConfigError(f"sinks.{self.name}.{where}: {exc}") from None
            try:
                keys.append(_webhook_key(where, value))
            except ValueError as exc:
                raise ConfigError(f"sinks.{self.name}.{exc}") from None
        return keys

    def destination(self) -> SecretStr:
        """Slack: the incoming-webhook URL (`secret`, else `url`), read now and checked without showing it."""
        value = self.secret.resolve() if self.secret is not None else SecretStr(self.url or "")
        where = "secret" if self.secret is not None else "url"
        try:
            check_url(value.get_secret_value(), {"https", "http"})
        except ValueError as exc:
            raise ConfigError(f"sinks.{self.name}.{where}: the Slack webhook URL is {exc}") from None
        if not urlsplit(value.get_secret_value()).hostname:
            raise ConfigError(f"sinks.{self.name}.{where}: the Slack webhook URL has no host")
        return value


def _webhook_key(where: str, value: SecretStr) -> bytes:
    from depositwatch.alerts.signing import SecretFormatError, decode_secret

    try:
        return decode_secret(value.get_secret_value())
    except SecretFormatError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _a(word: str) -> str:
    """`a webhook`, `an email`."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
