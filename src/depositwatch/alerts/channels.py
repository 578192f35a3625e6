"""The builder of the chat, paging, mail and exec sinks (called by `build_sinks`)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import SecretStr

from depositwatch.alerts.sinks import AlertSink
from depositwatch.config import SinkConfig


def build_channel_sink(config: SinkConfig, secret: SecretStr | None, explorers: Mapping[str, str]) -> AlertSink:
    """One opsgenie, teams, discord, telegram, email or exec sink; secrets already resolved."""
    from depositwatch.alerts.discord import DiscordSink
    from depositwatch.alerts.execsink import ExecSink
    from depositwatch.alerts.mail import EmailSink
    from depositwatch.alerts.opsgenie import OpsgenieSink
    from depositwatch.alerts.teams import TeamsSink
    from depositwatch.alerts.telegram import TelegramSink

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
