"""Configuration: one TOML file, validated, with secrets taken from the environment or from files."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from depositwatch.models import MatchKind, Severity

DEFAULT_CONFIG_PATHS = (Path("/etc/depositwatch/depositwatch.toml"),)
CONFIG_ENV = "DEPOSITWATCH_CONFIG"
REDACTED = "********"
# An address in an email header or envelope: no spaces, angle brackets or line breaks (header injection).
EMAIL_PATTERN = r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}$"


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


class TokenConfig(_Strict):
    """A token contract to follow: ERC-20 on an EVM chain (`0x...`), TRC-20 on TRON (`T...` or `41...` hex)."""

    symbol: Annotated[str, Field(min_length=1, max_length=16)]
    contract: str
    decimals: Annotated[int, Field(ge=0, le=36)]

    @field_validator("contract")
    @classmethod
    def _contract(cls, value: str) -> str:
        from depositwatch.addresses import AddressError, parse_ethereum_address
        from depositwatch.addresses.tron import parse_tron_address

        try:
            if value.startswith(("0x", "0X")):
                return parse_ethereum_address(value).address
            return parse_tron_address(value).address
        except AddressError as exc:
            raise ValueError(exc.reason) from exc


class Trc10Config(_Strict):
    """A TRC-10 token of a TRON chain: its numeric id (`1002000` is BitTorrent's), symbol and decimals."""

    id: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,18}$")]
    symbol: Annotated[str, Field(min_length=1, max_length=16)]
    decimals: Annotated[int, Field(ge=0, le=36)]


TRON_API_KEY_HEADER = "TRON-PRO-API-KEY"
TRON_NETWORKS = ("mainnet", "nile", "shasta")
TRON_USDT = TokenConfig(symbol="USDT", contract="TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", decimals=6)
# TRON: solidified after 19 blocks; ranges of 100 blocks are one getblockbylimitnext request.
_TRON_DEFAULTS = {"confirmations": 19, "batch_blocks": 100}


class ChainConfig(_Strict):
    """One followed chain: a Bitcoin network, an EVM network or a TRON network."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    kind: Literal["bitcoin", "evm", "tron"]
    # Bitcoin: mainnet, testnet, signet, regtest. EVM: free text for humans (e.g. "mainnet").
    # TRON: mainnet, nile or shasta (the node's block 0 is checked), or another name (not checked).
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
    mempool: bool = True  # Bitcoin: the mempool; EVM: pending transactions (txpool_content), where offered
    # EVM, with `mempool`: pending ERC-20 transfer/transferFrom calls too (their alert id is the pending one)
    pending_tokens: bool = True
    # Seconds a mempool (Bitcoin) or pending (EVM) match's transaction must have been gone before it is retracted
    mempool_drop_grace: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    traces: bool = False
    # EVM: a watched set (active and revoked) of at most this many addresses is fetched filtered, where the
    # node serves trace_filter: Transfer logs, transactions and traces of those addresses only, plus every
    # block's header, instead of every block in full (chains/evm_filtered.py); 0 always reads blocks in full
    filter_max_keys: Annotated[int, Field(ge=0, le=100_000)] = 1000
    # EVM and TRON: Transfer logs of every contract (not only `tokens`) to or from a revoked address
    any_tokens: bool = True
    # Poisoning: a transfer to or from a revoked address of zero, or of less than its asset's dust
    # threshold (base units, by asset symbol: the native symbol or a configured token's), is recorded
    # and alerted at `info` ("info") or not alerted at all ("off"); it never pages.
    dust: dict[Annotated[str, Field(min_length=1, max_length=16)], Annotated[int, Field(ge=0, le=2**256 - 1)]] = {}
    poisoning_alerts: Literal["info", "off"] = "info"
    start_height: Annotated[int, Field(ge=0)] | None = None
    # a block explorer's transaction page, `{txid}` standing for the transaction id (alerts link to it)
    explorer_tx_url: str | None = None
    # TRON: a TronGrid-compatible provider's key, sent as the TRON-PRO-API-KEY header to rpc_urls only
    api_key: Secret | None = None
    # TRON: TRC-10 tokens to name (others are still reported, under their id with 0 decimals)
    trc10: list[Trc10Config] = []
    # TRON: internal TRX transfers need a node with vm.saveInternalTx; "auto" looks at recent blocks
    internal: Literal["auto"] | bool = "auto"

    @model_validator(mode="before")
    @classmethod
    def _tron_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "tron":
            data = {**_TRON_DEFAULTS, **data}
            if "tokens" not in data and data.get("network", "mainnet") == "mainnet":
                data["tokens"] = [TRON_USDT]
        return data

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
        tron_only = [key for key in ("api_key", "trc10", "internal") if key in self.model_fields_set]
        if self.kind != "tron" and tron_only:
            raise ValueError(f"{', '.join(tron_only)}: for TRON chains only")
        if self.kind == "bitcoin":
            if self.network not in {"mainnet", "testnet", "signet", "regtest"}:
                raise ValueError(f"network must be mainnet, testnet, signet or regtest, not {self.network!r}")
            if self.tokens:
                raise ValueError("tokens are for EVM and TRON chains")
        elif self.kind == "tron":
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", self.network):
                raise ValueError(f"network must be mainnet, nile, shasta or a lower-case name, not {self.network!r}")
            bad = [t.symbol for t in self.tokens if not t.contract.startswith("T")]
            if bad:
                raise ValueError(f"tokens {', '.join(bad)}: a TRON chain's token contracts are TRON addresses (T...)")
            if self.chain_id is not None or self.ws_url or self.rest_url or self.zmq_url or self.rpc_user:
                raise ValueError("chain_id, ws_url, rest_url, zmq_url and rpc_user are not keys of a TRON chain")
            ids = [t.id for t in self.trc10]
            if len(set(ids)) != len(ids):
                raise ValueError("trc10: a token id is listed twice")
        else:
            if self.chain_id is None:
                raise ValueError("chain_id is required for an EVM chain")
            bad = [t.symbol for t in self.tokens if not t.contract.startswith("0x")]
            if bad:
                raise ValueError(f"tokens {', '.join(bad)}: an EVM chain's token contracts are 0x addresses")
        return self

    @property
    def max_commit_age(self) -> float:
        """Seconds since the chain's last commit after which a standby calls the chain unhealthy."""
        if self.standby_max_commit_age is not None:
            return self.standby_max_commit_age
        return 7200.0 if self.kind == "bitcoin" else 300.0

    @property
    def native_asset_symbol(self) -> str:
        """BTC for Bitcoin, TRX for TRON, ETH unless configured for an EVM chain."""
        return self.native_symbol or {"bitcoin": "BTC", "tron": "TRX"}.get(self.kind, "ETH")

    @property
    def native_asset_decimals(self) -> int:
        """8 for Bitcoin, 6 for TRON, 18 unless configured for an EVM chain."""
        if self.native_decimals is not None:
            return self.native_decimals
        return {"bitcoin": 8, "tron": 6}.get(self.kind, 18)


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


# Redaction: one place decides what may be shown. ---------------------------------------------------

HIDDEN = "…"
MIN_REMEMBERED = 8  # shorter strings are too likely to occur in ordinary text to be cut out of it
MIN_KEY_SEGMENT = 16  # a path segment this long in a node URL is taken for an API key (`/v3/KEY`)
_remembered: set[str] = set()
# Up to whitespace or a quote: brackets belong in (IPv6 hosts, and a malformed one must not end the match
# before the credentials and the path); punctuation that closes the sentence is given back.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s'\"<>]+")
_URL_TAIL = ").,;:]}"


def remember_secret(value: str) -> None:
    """Take `value` (a resolved secret) out of every text `redact_text` sees from now on.

    A secret that is a URL (a Slack webhook) is also remembered without its scheme and by its path and
    path segments, which is where the secret part lives.
    """
    value = value.strip()
    _remember(value)
    if "://" in value:
        _remember(value.split("://", 1)[1])
    try:
        parts = urlsplit(value if "://" in value else f"//{value}")
    except ValueError:
        return
    if parts.hostname and parts.path.strip("/"):
        _remember(parts.path)
        for segment in parts.path.split("/"):
            if len(segment) >= MIN_KEY_SEGMENT:
                _remember(segment)
        _remember(parts.query)


def remember_url(url: str) -> None:
    """Remember the parts of a configured URL that hold credentials: the password, the query, and
    path segments long enough to be API keys (shorter ones like `/rpc` stay readable)."""
    if url.startswith("sqlite:"):
        return
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    _remember(password or "")
    _remember(parts.query)
    for segment in parts.path.split("/"):
        if len(segment) >= MIN_KEY_SEGMENT:
            _remember(segment)


def _remember(text: str) -> None:
    if len(text) >= MIN_REMEMBERED:
        _remembered.add(text)


def redact_url(url: str) -> str:
    """A URL as it may be shown: scheme, host and port only (`https://eth.example:443/…`).

    Credentials, the path and the query are dropped, since providers put API keys in `/v3/KEY` paths and
    query strings. SQLite URLs are shown whole (a local file name, no credentials). Text that does not
    parse as a URL with a host is not shown at all.
    """
    if url.startswith("sqlite:"):
        return url
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not host:
        return f"<URL without host>{HIDDEN}" if parts.scheme else HIDDEN
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443, "postgresql": 5432, "postgres": 5432}
    port = port or default.get(parts.scheme)
    shown_host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown_host}{f':{port}' if port else ''}/{HIDDEN}"


def redact_text(text: str) -> str:
    """`text` fit to print, log or store: every remembered secret cut out, every URL cut to its host."""
    for secret in sorted(_remembered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _URL_IN_TEXT.sub(_shown_url, text)


def _shown_url(found: re.Match[str]) -> str:
    url = found.group(0)
    tail = len(url) - len(url.rstrip(_URL_TAIL))
    return redact_url(url[: len(url) - tail]) + url[len(url) - tail :]


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
