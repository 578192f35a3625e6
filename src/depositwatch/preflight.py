"""Start-up checks that touch nothing: every secret readable (named by its key path), every sink
reachable (a warning only: alerts wait in the outbox until it is)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import structlog

from depositwatch.config import Config, ConfigError, Secret, SinkConfig

log = structlog.get_logger(__name__)

SINK_PROBE_TIMEOUT = 5.0


def secrets(config: Config) -> list[tuple[str, Secret]]:
    """Every secret of the config, with its key path."""
    found: list[tuple[str, Secret | None]] = [("store.password", config.store.password)]
    found += [(f"chains.{c.name}.rpc_password", c.rpc_password) for c in config.chains]
    found += [(f"chains.{c.name}.api_key", c.api_key) for c in config.chains]  # TRON providers
    found += [(f"sinks.{s.name}.{key}", secret) for s in config.sinks for key, secret in s.secret_paths()]
    found += [(f"sinks.{s.name}.password", s.password) for s in config.sinks]  # email
    found += [(f"api.tokens.{t.name}.secret", t.secret) for t in (config.api.tokens if config.api else [])]
    return [(where, secret) for where, secret in found if secret is not None]


def secret_problems(config: Config) -> list[str]:
    """`sinks.soc.secret: environment variable DW_WEBHOOK_SECRET is not set`, one per unreadable secret
    (naming the variable or file, never a value)."""
    problems = []
    for where, secret in secrets(config):
        try:
            secret.resolve()
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def _endpoint(sink: SinkConfig) -> tuple[str, int] | None:
    url = sink.url
    if url is None and sink.type == "slack" and sink.secret is not None:
        with contextlib.suppress(ConfigError):
            url = sink.secret.resolve().get_secret_value()  # the webhook URL is the secret: only its host is logged
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


async def probe_sink(sink: SinkConfig) -> str | None:
    """Open (and close) a TCP connection to the sink's host; the reason when that fails."""
    endpoint = _endpoint(sink)
    if endpoint is None:
        return None
    host, port = endpoint
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), SINK_PROBE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return f"{host}:{port}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def probe_sinks(sinks: list[SinkConfig]) -> dict[str, str]:
    """Try each sink once, all at once; warn naming each unreachable one. Not fatal."""
    reasons = await asyncio.gather(*(probe_sink(sink) for sink in sinks))
    failed = {sink.name: reason for sink, reason in zip(sinks, reasons, strict=True) if reason is not None}
    for name, reason in failed.items():
        log.warning("sink unreachable at start-up; its alerts wait in the outbox", sink=name, error=reason)
    return failed
