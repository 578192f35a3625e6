"""Configuration: one TOML file, validated, with secrets taken from the environment or from files."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from depositwatch.models import MatchKind, Severity

DEFAULT_CONFIG_PATHS = (Path("/etc/depositwatch/depositwatch.toml"),)
CONFIG_ENV = "DEPOSITWATCH_CONFIG"
REDACTED = "********"
# An address in an email header or envelope: no spaces, angle brackets or line breaks (header injection).
EMAIL_PATTERN = r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}$"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key path and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """A secret named by environment variable or file, never written in the config itself.

    `value` is accepted for tests and demos only; `check-config` warns about it.
    """

    env: str | None = None
    file: Path | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        sources = [s for s in (self.env, self.file, self.value) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of env, file or value")
        return self

    def resolve(self) -> str:
        """Read the secret now; raise ConfigError naming the variable or file when it is missing."""
        if self.value is not None:
            return self.value
        if self.env is not None:
            found = os.environ.get(self.env)
            if found is None:
                raise ConfigError(f"environment variable {self.env} is not set")
            return found
        assert self.file is not None
        path = _credential_path(self.file)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


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
    except ValueError as exc:
        raise ValueError(f"not a usable URL: {url!r} ({exc})") from None
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ValueError(f"not a usable URL: {url!r} (expected {' or '.join(sorted(schemes))})")


class TokenConfig(_Strict):
    """An ERC-20 token to follow."""

    symbol: Annotated[str, Field(min_length=1, max_length=16)]
    contract: str
    decimals: Annotated[int, Field(ge=0, le=36)]

    @field_validator("contract")
    @classmethod
    def _contract(cls, value: str) -> str:
        from depositwatch.addresses import AddressError, parse_ethereum_address

        try:
            return parse_ethereum_address(value).address
        except AddressError as exc:
            raise ValueError(exc.reason) from exc


class ChainConfig(_Strict):
    """One followed chain: a Bitcoin network or an EVM network."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    kind: Literal["bitcoin", "evm"]
    # Bitcoin: mainnet, testnet, signet, regtest. EVM: free text for humans (e.g. "mainnet").
    network: str = "mainnet"
    chain_id: Annotated[int, Field(ge=1)] | None = None
    rpc_urls: Annotated[list[str], Field(min_length=1)]
    ws_url: str | None = None
    rpc_user: str | None = None
    rpc_password: Secret | None = None
    cookie_file: Path | None = None
    rest_url: str | None = None
    zmq_url: str | None = None
    native_symbol: str | None = None
    native_decimals: Annotated[int, Field(ge=0, le=36)] | None = None
    tokens: list[TokenConfig] = []
    confirmations: Annotated[int, Field(ge=1, le=10_000)] = 6
    reorg_depth: Annotated[int, Field(ge=1, le=10_000)] = 100
    max_lag_blocks: Annotated[int, Field(ge=1)] = 12
    poll_interval: Annotated[float, Field(gt=0, le=3600)] = 2.0
    getlogs_max_range: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    batch_blocks: Annotated[int, Field(ge=1, le=1000)] = 20
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    # EVM: ranges of `batch_blocks` read ahead while the follower matches and commits (catching up, replay)
    read_ahead: Annotated[int, Field(ge=0, le=16)] = 4
    # Node requests: seconds to connect, to wait for each read on the socket, and for a whole request
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 5.0
    read_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    request_timeout: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # A longer node answer fails that request (every body is held in memory: at most max_in_flight of them)
    max_response_bytes: Annotated[int, Field(ge=1024, le=4 * 1024**3)] = 64 * 1024 * 1024
    mempool: bool = True
    traces: bool = False
    start_height: Annotated[int, Field(ge=0)] | None = None
    # a block explorer's transaction page, `{txid}` standing for the transaction id (alerts link to it)
    explorer_tx_url: str | None = None

    @field_validator("explorer_tx_url")
    @classmethod
    def _explorer(cls, value: str | None) -> str | None:
        if value is not None:
            if value.count("{txid}") != 1:
                raise ValueError("explorer_tx_url must contain {txid} exactly once")
            check_url(value.replace("{txid}", "0"), {"http", "https"})
        return value

    # A standby reports the chain unhealthy when its last commit (by the leader) is older than this;
    # unset: 300 s for EVM, 7200 s for Bitcoin (an hour without a block is rare but happens).
    standby_max_commit_age: Annotated[float, Field(gt=0, le=86_400 * 7)] | None = None

    @field_validator("rpc_urls", "ws_url", "rest_url", "zmq_url", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        for url in value if isinstance(value, list) else [value]:
            if url is None:
                continue
            check_url(str(url), {"http", "https", "ws", "wss", "tcp", "ipc"})
        return value

    @model_validator(mode="after")
    def _per_kind(self) -> ChainConfig:
        if self.kind == "bitcoin":
            if self.network not in {"mainnet", "testnet", "signet", "regtest"}:
                raise ValueError(f"network must be mainnet, testnet, signet or regtest, not {self.network!r}")
            if self.tokens:
                raise ValueError("tokens are for EVM chains")
        elif self.chain_id is None:
            raise ValueError("chain_id is required for an EVM chain")
        return self

    @property
    def max_commit_age(self) -> float:
        """Seconds since the chain's last commit after which a standby calls the chain unhealthy."""
        if self.standby_max_commit_age is not None:
            return self.standby_max_commit_age
        return 7200.0 if self.kind == "bitcoin" else 300.0

    @property
    def native_asset_symbol(self) -> str:
        """BTC for Bitcoin, ETH unless configured for an EVM chain."""
        return self.native_symbol or ("BTC" if self.kind == "bitcoin" else "ETH")

    @property
    def native_asset_decimals(self) -> int:
        """8 for Bitcoin, 18 unless configured for an EVM chain."""
        if self.native_decimals is not None:
            return self.native_decimals
        return 8 if self.kind == "bitcoin" else 18


class StoreConfig(_Strict):
    """Where state lives: `sqlite:///path` (embedded default) or `postgresql://...`."""

    url: str = "sqlite:///var/lib/depositwatch/depositwatch.db"
    password: Secret | None = None
    pool_size: Annotated[int, Field(ge=1, le=100)] = 5

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(f"store URL scheme must be sqlite or postgresql, not {scheme!r}")
        if scheme == "sqlite" and not value.startswith("sqlite:///") and value != "sqlite://:memory:":
            raise ValueError("sqlite URLs look like sqlite:///relative/path.db or sqlite:////absolute/path.db")
        if scheme != "sqlite":
            check_url(value, {"postgresql", "postgres"})
        return value


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
    # webhook HMAC secret, Slack/Teams/Discord webhook URL, PagerDuty routing key, Opsgenie API key,
    # Telegram bot token
    secret: Secret | None = None
    kinds: list[Literal["revoked_incoming", "revoked_outgoing", "deposit", "test"]] = [
        "revoked_incoming",
        "revoked_outgoing",
    ]
    min_severity: Severity = Severity.INFO
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
        if self.type == "webhook" and (self.url is None or self.secret is None):
            raise ValueError("a webhook sink needs url and secret")
        if self.type == "slack" and self.secret is None and self.url is None:
            raise ValueError("a slack sink needs secret (the incoming-webhook URL) or url")
        if self.type == "pagerduty" and self.secret is None:
            raise ValueError("a pagerduty sink needs secret (the routing key)")
        return self


def _a(word: str) -> str:
    """`a webhook`, `an email`."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


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
        """The effective configuration as plain data, with inline secrets masked."""
        data = self.model_dump(mode="json")
        _redact(data)
        return data


def _redact(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"secret", "password", "rpc_password"} and isinstance(value, dict) and value.get("value"):
                value["value"] = REDACTED
            elif key in {"url", "rest_url", "ws_url", "zmq_url"} and isinstance(value, str):
                node[key] = redact_url(value)
            elif key == "rpc_urls" and isinstance(value, list):
                node[key] = [redact_url(v) for v in value]
            else:
                _redact(value)
    elif isinstance(node, list):
        for item in node:
            _redact(item)


def redact_url(url: str) -> str:
    """Hide a password embedded in a URL (http://user:pass@host)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:{REDACTED}@{parts.netloc.rpartition('@')[2]}"
        return parts._replace(netloc=netloc).geturl()
    return url


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
