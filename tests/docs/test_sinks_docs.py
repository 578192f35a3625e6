"""The sink examples of docs/alerts.md and config/depositwatch.example.toml are real configurations:
they parse, and the sinks they describe are built with their secrets resolved."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from depositwatch.alerts.discord import DiscordSink
from depositwatch.alerts.execsink import ExecSink
from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.format import explorers_for
from depositwatch.alerts.mail import EmailSink
from depositwatch.alerts.opsgenie import OpsgenieSink
from depositwatch.alerts.teams import TeamsSink
from depositwatch.alerts.telegram import TelegramSink
from depositwatch.config import Config, parse_config
from tests.receivers import WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "alerts.md").read_text()
EXAMPLE = (ROOT / "config" / "depositwatch.example.toml").read_text()
MARKER = "# ---- more channels"
CHANNELS = {
    "opsgenie": OpsgenieSink,
    "teams": TeamsSink,
    "discord": DiscordSink,
    "telegram": TelegramSink,
    "email": EmailSink,
    "exec": ExecSink,
}


def with_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every secret the examples name, in the environment or as a credential file."""
    names = ("OPSGENIE_API_KEY", "DISCORD_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN", "SMTP_PASSWORD")
    for name in (*names, "DEPOSITWATCH_WEBHOOK_SECRET", "PAGERDUTY_ROUTING_KEY"):
        monkeypatch.setenv(name, WEBHOOK_SECRET if "WEBHOOK_SECRET" in name else f"value-of-{name.lower()}")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    files = {
        "teams-workflow-url": "https://teams.example/workflows/x?sig=y",
        "slack-webhook-url": "https://hooks.slack.example/x",
        "discord-webhook-url": "https://discord.example/api/webhooks/1/x",
        "webhook-secret": WEBHOOK_SECRET,
        "pagerduty-routing-key": "value-of-pagerduty-routing-key",
        "btc-rpc-password": "value-of-btc-rpc-password",
        "opsgenie-api-key": "value-of-opsgenie-api-key",
        "telegram-bot-token": "123456:value-of-telegram-bot-token",
        "smtp-password": "value-of-smtp-password",
    }
    for name, value in files.items():  # the example config's credential names (docs/operations.md)
        (tmp_path / name).write_text(value + "\n")


def built(config: Config) -> dict[str, object]:
    return {sink.name: sink for sink in build_sinks(config.sinks, config.chains)}


def test_docs_examples_parse_and_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every TOML block of docs/alerts.md; each new channel appears; the chain's explorer template is used."""
    with_secrets(monkeypatch, tmp_path)
    sinks, chains = [], []
    for block in re.findall(r"```toml\n(.*?)```", DOCS, re.DOTALL):
        data = tomllib.loads(block)
        sinks += data.get("sinks", [])
        chains += data.get("chains", [])
    config = parse_config({"sinks": sinks, "chains": chains}, "docs/alerts.md")
    found = {s.type: s for s in config.sinks}
    assert set(CHANNELS) <= set(found)
    sinks_built = built(config)
    for type_, cls in CHANNELS.items():
        assert isinstance(sinks_built[found[type_].name], cls)
    assert explorers_for(config.chains)["avax"] == "https://snowtrace.io/tx/{txid}"


def test_example_config_channels_parse_when_uncommented(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The commented channel examples of the shipped config, uncommented, join the rest and build."""
    with_secrets(monkeypatch, tmp_path)
    head, _, tail = EXAMPLE.partition(MARKER)
    assert tail, "the example config lost its channel section"
    uncommented = "\n".join(line.removeprefix("# ").removeprefix("#") for line in tail.splitlines()[1:])
    data = tomllib.loads(head + uncommented)
    config = parse_config(data, "config/depositwatch.example.toml")
    assert {s.type for s in config.sinks} >= set(CHANNELS)
    assert len(built(config)) == len(config.sinks)
