"""The whole file's schema: `Config`, the sections beside chains and sinks (store, alerts, http, api,
retention, log, ha), and its redacted view for `check-config`."""

# The sections are pydantic models (through `_Strict`), which copy mutable defaults; ruff sees that only
# when the base class is in the same module.
# ruff: noqa: RUF012

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from depositwatch.config.base import ConfigError, Secret, _Strict, check_url
from depositwatch.config.chains import ChainConfig
from depositwatch.config.redaction import redact_url
from depositwatch.config.sinks import SinkConfig
from depositwatch.models import MatchKind, Severity


class StoreConfig(_Strict):
    """Where state lives: `sqlite:///path` (embedded default) or `postgresql://...`."""

    url: str = "sqlite:///var/lib/depositwatch/depositwatch.db"
    password: Secret | None = None
    pool_size: Annotated[int, Field(ge=1, le=100)] = 5

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("store URL scheme must be sqlite or postgresql")  # the value may be a password
        if scheme == "sqlite" and not value.startswith("sqlite:///") and value != "sqlite://:memory:":
            raise ValueError("sqlite URLs look like sqlite:///relative/path.db or sqlite:////absolute/path.db")
        if scheme != "sqlite":
            check_url(value, {"postgresql", "postgres"})
        return value


class AlertsConfig(_Strict):
    """Alert policy shared by every sink."""

    severity: dict[MatchKind, Severity] = {
        MatchKind.REVOKED_INCOMING: Severity.CRITICAL,
        MatchKind.REVOKED_OUTGOING: Severity.CRITICAL,
        MatchKind.DEPOSIT: Severity.INFO,
    }
    poll_interval: Annotated[float, Field(gt=0, le=60)] = 0.2
    shutdown_grace: Annotated[float, Field(ge=0, le=600)] = 10.0


class HttpConfig(_Strict):
    """The metrics and health endpoint."""

    enabled: bool = True
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


LISTEN_ENV = "DEPOSITWATCH_LISTEN"  # overrides http.listen; `run --listen` overrides both


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9108` for IPv6) as (host, port); ValueError naming what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or len(port) > 5 or int(port) > 65535 or len(text) > 300:
        raise ValueError(f"listen address {text[:300]!r} is not HOST:PORT (port 0-65535), e.g. 127.0.0.1:9108")
    return host, int(port)


class ApiToken(_Strict):
    """A bearer token of the HTTP API: its name (the audit log's `token:<name>`), scopes and secret."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    scopes: Annotated[list[Literal["read", "write"]], Field(min_length=1)]
    secret: Secret


class ApiConfig(_Strict):
    """The address book's HTTP API (docs/api.md): off unless an [api] section is present."""

    listen: str = "127.0.0.1:8788"
    tokens: Annotated[list[ApiToken], Field(min_length=1, max_length=100)]
    max_body_bytes: Annotated[int, Field(ge=1024, le=256 * 1024**2)] = 4 * 1024**2
    max_batch: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _unique(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"api token names must be unique: {', '.join(dupes)}")
        return self


class RetentionConfig(_Strict):
    """How long settled history is kept. Delivered and dead outbox messages go after `outbox_days`
    (0 keeps them); matches and deposits are kept unless `matches_days` is set."""

    outbox_days: Annotated[float, Field(ge=0, le=36_500)] = 30.0
    matches_days: Annotated[float, Field(ge=0, le=36_500)] = 0.0
    interval: Annotated[float, Field(ge=1, le=86_400)] = 3600.0  # seconds between the daemon's passes
    batch: Annotated[int, Field(ge=1, le=100_000)] = 1000  # rows per transaction: short locks


class LogConfig(_Strict):
    """Logging: JSON lines when not on a terminal, readable text otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class HaConfig(_Strict):
    """Several instances on one PostgreSQL store: leadership by lease (see docs/operations.md).

    A leader renews its leases every quarter of `lease_ttl` while its loops make progress; a standby
    takes over once `lease_ttl` seconds passed without a renewal (plus at most one second), at once
    when the leader's database session is gone.
    """

    lease_ttl: Annotated[float, Field(ge=1, le=600)] = 10.0


class Config(_Strict):
    """The whole configuration file."""

    store: StoreConfig = StoreConfig()
    chains: list[ChainConfig] = []
    sinks: list[SinkConfig] = []
    alerts: AlertsConfig = AlertsConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    ha: HaConfig = HaConfig()
    retention: RetentionConfig = RetentionConfig()
    api: ApiConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> Config:
        for what, names in (("chain", [c.name for c in self.chains]), ("sink", [s.name for s in self.sinks])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique: {', '.join(dupes)}")
        return self

    def chain(self, name: str) -> ChainConfig:
        """The chain called `name`, or ConfigError listing the configured ones."""
        for chain in self.chains:
            if chain.name == name:
                return chain
        known = ", ".join(c.name for c in self.chains) or "none"
        raise ConfigError(f"no chain named {name!r} in the config (configured: {known})")

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data: secrets as stars, every URL cut to scheme://host:port."""
        data = self.model_dump(mode="json")
        _redact(data)
        return data


_URL_KEYS = frozenset({"url", "rest_url", "ws_url", "zmq_url", "rpc_urls"})


def _redact(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _URL_KEYS and isinstance(value, str):
                node[key] = redact_url(value)
            elif key in _URL_KEYS and isinstance(value, list):
                node[key] = [redact_url(v) if isinstance(v, str) else v for v in value]
            else:
                _redact(value)
    elif isinstance(node, list):
        for item in node:
            _redact(item)
