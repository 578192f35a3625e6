"""One way to build the alert side, used by the daemon, replay and the CLI alike: the sinks of a config
(secrets resolved, explorer links for its chains) and the dispatcher over an outbox."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import SecretStr

from depositwatch.alerts.discord import DiscordSink
from depositwatch.alerts.dispatcher import Dispatcher, OutboxStore
from depositwatch.alerts.execsink import ExecSink
from depositwatch.alerts.format import explorers_for
from depositwatch.alerts.mail import EmailSink
from depositwatch.alerts.opsgenie import OpsgenieSink
from depositwatch.alerts.pagerduty import PagerDutySink
from depositwatch.alerts.sinks import AlertSink, WebhookSink
from depositwatch.alerts.slack import SlackSink
from depositwatch.alerts.teams import TeamsSink
from depositwatch.alerts.telegram import TelegramSink
from depositwatch.config import ChainConfig, Config, SinkConfig, load_config
from depositwatch.metrics import Metrics


def build_sinks(configs: Sequence[SinkConfig], chains: Sequence[ChainConfig] = ()) -> list[AlertSink]:
    """One sink per config, secrets resolved and checked now (ConfigError names the key path).

    `chains` gives every sink that shows a transaction its block-explorer link (per-chain templates,
    defaults for the well-known mainnets).
    """
    explorers = explorers_for(chains)
    sinks: list[AlertSink] = []
    for config in configs:
        if config.type == "webhook":
            sinks.append(WebhookSink(config, config.signing_keys()))
        elif config.type == "slack":
            sinks.append(SlackSink(config, config.destination(), explorers))
        elif config.type == "pagerduty":
            assert config.secret is not None
            sinks.append(PagerDutySink(config, config.secret.resolve(), explorers))
        else:
            secret = config.secret.resolve() if config.secret is not None else None
            sinks.append(_channel_sink(config, secret, explorers))
    return sinks


def _channel_sink(config: SinkConfig, secret: SecretStr | None, explorers: Mapping[str, str]) -> AlertSink:
    """One opsgenie, teams, discord, telegram, email or exec sink; secrets already resolved."""
    if config.type == "email":
        password = config.password.resolve().get_secret_value() if config.password is not None else None
        return EmailSink(config, password, explorers)
    if config.type == "exec":
        return ExecSink(config)
    if secret is None:  # the config's validation requires it; a built config cannot lack it
        raise ValueError(f"sink {config.name}: no secret")
    value = secret.get_secret_value()
    if config.type == "opsgenie":
        return OpsgenieSink(config, value, explorers)
    if config.type == "teams":
        return TeamsSink(config, value, explorers)
    if config.type == "discord":
        return DiscordSink(config, value, explorers)
    if config.type == "telegram":
        return TelegramSink(config, value, explorers)
    raise ValueError(f"sink {config.name}: unknown type {config.type}")


def sinks_for(config: Config, names: Sequence[str] | None = None) -> list[AlertSink]:
    """The sinks of a config (or only those named), with its chains' explorer links."""
    chosen = [s for s in config.sinks if names is None or s.name in names]
    return build_sinks(chosen, config.chains)


def dispatcher_for(
    config: Config,
    outbox: OutboxStore,
    *,
    metrics: Metrics | None = None,
    sinks: Sequence[AlertSink] | None = None,
) -> Dispatcher:
    """The dispatcher of a config over `outbox` (all its sinks unless `sinks` are given)."""
    return Dispatcher(outbox, sinks_for(config) if sinks is None else sinks, config.alerts, metrics=metrics)


def reload_sinks(dispatcher: Dispatcher, path: Path | str) -> Config:
    """SIGHUP: read the config again and swap the dispatcher's sinks; the fresh config is returned.

    A bad edit raises (ConfigError or the sink's own error) and leaves the running sinks in place.
    """
    fresh = load_config(path)
    dispatcher.reconfigure(sinks_for(fresh))
    return fresh
