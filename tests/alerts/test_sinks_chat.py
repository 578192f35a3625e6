"""Opsgenie, Teams, Discord and Telegram against real receivers on loopback, alone and through the real
dispatcher and store: exact formats, retraction, burst summaries, retries, no secret in errors or logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
from structlog.testing import capture_logs

from depositwatch.alerts.discord import DiscordSink, rate_limit_wait
from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.opsgenie import API_URL, OpsgenieSink, priority
from depositwatch.alerts.sinks import DeliveryError
from depositwatch.alerts.teams import TeamsSink
from depositwatch.alerts.telegram import TelegramSink
from depositwatch.config import AlertsConfig, ChainConfig, RetryConfig, Secret, SinkConfig
from depositwatch.jsonutil import dumps
from depositwatch.metrics import Metrics
from depositwatch.models import AlertEvent
from depositwatch.store import SqlStore
from tests.alerts.test_sinks import ETH_ADDRESS, TXID, USDT_CONTRACT, message
from tests.receivers import AlertMaker, Receiver, Reply, ok

FAST = RetryConfig(max_attempts=20, initial_backoff=0.01, max_backoff=0.1)
ALERTS = AlertsConfig(poll_interval=0.05, shutdown_grace=5)
ANY_PATH = "/{tail:.*}"
GENIE_KEY = "genie-key-0123456789abcdef"
BOT_TOKEN = "123456789:AAH-very-secret-bot-token-xyz"
WEBHOOK_SECRET_PATH = "/webhooks/123/very-secret-webhook-token-abcdef"


def base(rx: Receiver) -> str:
    return f"http://127.0.0.1:{rx.port}"


def sink_config(name: str, type_: str, **extra: Any) -> SinkConfig:
    fields: dict[str, Any] = {"name": name, "type": type_, "timeout": 5.0, "retry": FAST}
    fields.update(extra)
    return SinkConfig.model_validate(fields)


def opsgenie(rx: Receiver, **extra: Any) -> SinkConfig:
    return sink_config("og", "opsgenie", url=base(rx), secret=Secret(value=GENIE_KEY), **extra)


def teams(rx: Receiver, **extra: Any) -> SinkConfig:
    return sink_config("teams", "teams", secret=Secret(value=base(rx) + WEBHOOK_SECRET_PATH + "?sig=abc123"), **extra)


def discord(rx: Receiver, **extra: Any) -> SinkConfig:
    return sink_config("discord", "discord", secret=Secret(value=base(rx) + WEBHOOK_SECRET_PATH), **extra)


def telegram(rx: Receiver, **extra: Any) -> SinkConfig:
    return sink_config("tg", "telegram", url=base(rx), secret=Secret(value=BOT_TOKEN), chat_id=-1001234567890, **extra)


def telegram_ok(_req: Any, _rx: Any) -> Reply:
    return Reply(200, '{"ok":true,"result":{"message_id":1}}')


def assert_person_can_act(text: str) -> None:
    """Amount and asset, address with label and owner, the explorer link, confirmations and kind."""
    for needed in ("5.25 USDT", ETH_ADDRESS, "hot-7", "cust-42", f"https://etherscan.io/tx/{TXID}", "revoked_incoming"):
        assert needed in text, needed
    assert "Confirmations" in text and "2" in text


async def test_opsgenie_creates_with_alias_priority_and_closes_on_retraction() -> None:
    """POST /v2/alerts with GenieKey auth, alias = alert id, P1 for critical, the facts as details; a
    retraction closes the same alias with identifierType=alias."""
    async with Receiver(ok(202), path=ANY_PATH) as rx:
        [sink] = build_sinks([opsgenie(rx)])
        assert isinstance(sink, OpsgenieSink)
        await sink.send(message())
        await sink.send(message(AlertEvent.RETRACTED, rev=2))
        await sink.close()
    create, close = rx.requests
    assert create.path == "/v2/alerts" and create.headers["Authorization"] == f"GenieKey {GENIE_KEY}"
    alert = create.json()
    assert alert["alias"] == "a1b2c3" and alert["priority"] == "P1" and alert["source"] == "depositwatch"
    assert (
        alert["message"].startswith("[CRITICAL] revoked_incoming detected: 5.25 USDT") and len(alert["message"]) <= 130
    )
    assert alert["entity"] == ETH_ADDRESS
    assert alert["details"]["Amount"] == "5.25 USDT" and alert["details"]["Confirmations"] == "2"
    assert alert["details"]["Token contract"] == USDT_CONTRACT
    assert_person_can_act(alert["description"])
    assert set(alert["tags"]) == {"revoked_incoming", "detected", "eth", "critical"}
    assert close.path == "/v2/alerts/a1b2c3/close" and parse_qs(close.query) == {"identifierType": ["alias"]}
    assert close.headers["Authorization"] == f"GenieKey {GENIE_KEY}"
    assert close.json()["note"].startswith("RETRACTED")
    assert [priority(s) for s in ("critical", "warning", "info")] == ["P1", "P3", "P5"]
    assert OpsgenieSink(sink_config("og", "opsgenie", secret=Secret(value="k")), "k").url == API_URL


async def test_teams_adaptive_card() -> None:
    """A workflow webhook message with one Adaptive Card: a title, a FactSet, a button to the explorer;
    a retraction says so."""
    async with Receiver(ok(202), path=ANY_PATH) as rx:
        [sink] = build_sinks([teams(rx)])
        assert isinstance(sink, TeamsSink)
        await sink.send(message())
        await sink.send(message(AlertEvent.RETRACTED, rev=2))
        await sink.close()
    first, retracted = (r.json() for r in rx.requests)
    assert rx.requests[0].path == WEBHOOK_SECRET_PATH and rx.requests[0].query == "sig=abc123"
    assert first["type"] == "message"
    [attachment] = first["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    heading, facts = card["body"]
    assert heading["type"] == "TextBlock" and heading["text"].startswith("\\[CRITICAL\\] revoked\\_incoming detected")
    assert heading["color"] == "Attention"
    found = {f["title"]: f["value"] for f in facts["facts"]}
    assert found["Amount"] == "5.25 USDT" and found["Confirmations"] == "2" and found["Owner"] == "cust-42"
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "View transaction", "url": f"https://etherscan.io/tx/{TXID}"}
    ]
    assert "RETRACTED" in retracted["attachments"][0]["content"]["body"][0]["text"]


async def test_discord_embed_and_429_retry_after() -> None:
    """An embed with the facts and the explorer URL, mentions disabled; a 429's JSON retry_after (seconds)
    becomes the DeliveryError's retry_after."""
    sneaky = message(label="@everyone hot-7", owner="cust-42")
    async with Receiver(ok(204), path=ANY_PATH) as rx:
        [sink] = build_sinks([discord(rx)])
        assert isinstance(sink, DiscordSink)
        await sink.send(sneaky)
        await sink.send(message(AlertEvent.RETRACTED, rev=2))
        rx.responder = lambda _req, _rx: Reply(
            429, '{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}'
        )
        with pytest.raises(DeliveryError) as failure:
            await sink.send(message())
        await sink.close()
    document = rx.requests[0].json()
    assert document["allowed_mentions"] == {"parse": []} and "@everyone" not in dumps(document)
    [embed] = document["embeds"]
    assert embed["title"].startswith("[CRITICAL] revoked_incoming detected: 5.25 USDT")
    assert embed["url"] == f"https://etherscan.io/tx/{TXID}" and embed["color"] == 0xD92D20
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Amount"] == "5.25 USDT" and fields["Confirmations"] == "2" and fields["Owner"] == "cust-42"
    assert ETH_ADDRESS in fields["Address"] and "revoked\\_incoming" in fields["Kind"]
    assert embed["timestamp"] == "2023-09-12T06:28:20Z"
    assert "RETRACTED" in rx.requests[1].json()["embeds"][0]["title"]
    assert failure.value.status == 429 and failure.value.retry_after == 1.5 and not failure.value.permanent
    assert WEBHOOK_SECRET_PATH not in failure.value.reason
    assert rate_limit_wait('{"retry_after": 1e12}', None) == 3600.0
    assert rate_limit_wait("not json", "2") == 2.0
    assert rate_limit_wait('{"retry_after": "soon"}', None) is None


async def test_telegram_send_message_html() -> None:
    """sendMessage under /bot<token>/, the chat id, HTML parse mode with data escaped, the txid linked;
    a 2xx without `"ok": true` is not a success; 429's parameters.retry_after is honoured."""
    sneaky = message(label="<b>hot-7</b> & co")
    async with Receiver(telegram_ok, path=ANY_PATH) as rx:
        [sink] = build_sinks([telegram(rx)])
        assert isinstance(sink, TelegramSink)
        await sink.send(sneaky)
        rx.responder = lambda _req, _rx: Reply(200, '{"ok":false,"description":"Bad Request: chat not found"}')
        with pytest.raises(DeliveryError, match="chat not found"):
            await sink.send(message())
        rx.responder = lambda _req, _rx: Reply(
            429,
            '{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7",'
            '"parameters":{"retry_after":7}}',
        )
        with pytest.raises(DeliveryError) as limited:
            await sink.send(message())
        await sink.close()
    request = rx.requests[0]
    assert request.path == f"/bot{BOT_TOKEN}/sendMessage"
    document = request.json()
    assert document["chat_id"] == -1001234567890 and document["parse_mode"] == "HTML"
    text = document["text"]
    assert text.startswith("<b>[CRITICAL] revoked_incoming detected: 5.25 USDT")
    assert "&lt;b&gt;hot-7&lt;/b&gt; &amp; co" in text and "<b>hot-7</b>" not in text
    assert f'<a href="https://etherscan.io/tx/{TXID}">{TXID} (index 3)</a>' in text
    assert "<b>Confirmations:</b> 2" in text and "cust-42" in text
    assert limited.value.retry_after == 7.0 and BOT_TOKEN not in limited.value.reason


@pytest.mark.parametrize("make", [opsgenie, teams, discord, telegram])
async def test_each_message_then_a_burst_summary_and_retries_through_the_dispatcher(store: SqlStore, make: Any) -> None:
    """Through the real dispatcher and store: two quiet alerts one by one, then a 30-alert block as one
    summary, all after the receiver failed the first four requests (500, 429, 503, then no answer in time)."""
    maker = AlertMaker(store)
    quiet = await maker.block([(1, 10**18), (2, 2 * 10**18)])
    burst = await maker.block([(100 + i, 10**15) for i in range(30)])
    slow = Reply(202, '{"ok":true}', delay=5)  # past the sink's timeout: a timed-out attempt
    answers = iter([Reply(500, "down"), Reply(429, "{}", {"Retry-After": "0"}), Reply(503, "busy"), slow])

    def respond(_req: Any, _rx: Any) -> Reply:
        return next(answers, Reply(202, '{"ok":true}'))

    async with Receiver(respond, path=ANY_PATH) as rx:
        dispatcher = Dispatcher(
            store.outbox, build_sinks([make(rx, burst_threshold=10, timeout=1.0)]), ALERTS, Metrics()
        )
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    accepted = [r.body.decode() for r in rx.accepted]
    assert len(accepted) == 3, accepted  # two alerts and one summary
    summaries = [body for body in accepted if "Burst: 30" in body]
    assert len(summaries) == 1
    assert "0.03 ETH" in summaries[0] and "and 25 more" in summaries[0]
    assert "depositwatch alerts list --kind revoked" in summaries[0]  # Teams escapes the _
    for message_ in quiet + burst:
        [delivery] = await store.outbox.deliveries(message_.seq)
        assert delivery.status == "delivered"
    assert dispatcher.metrics is not None
    assert dispatcher.metrics.deliveries.labels(dispatcher.sinks[0].name, "timeout")._value.get() >= 1


async def test_opsgenie_burst_retraction_closes_the_burst_alias() -> None:
    """A reorged burst block: the summary's alias (burst:chain:height:kind) is closed."""
    from depositwatch.alerts.sinks import Burst

    messages = tuple(message(seq=100 + i, address=f"0x{i:040x}") for i in range(12))
    async with Receiver(ok(202), path=ANY_PATH) as rx:
        [sink] = build_sinks([opsgenie(rx)])
        await sink.send_burst(Burst("eth", 18_000_000, "revoked_incoming", "detected", messages))
        await sink.send_burst(Burst("eth", 18_000_000, "revoked_incoming", "retracted", messages))
        await sink.close()
    create, close = rx.requests
    assert create.json()["alias"] == "burst:eth:18000000:revoked_incoming"
    assert unquote(close.path) == "/v2/alerts/burst:eth:18000000:revoked_incoming/close"
    assert close.query == "identifierType=alias"


@pytest.mark.parametrize("make", [opsgenie, teams, discord, telegram])
async def test_secrets_never_in_logs_or_last_error(sqlite_store: SqlStore, make: Any) -> None:
    """A receiver echoing the request URL and auth header in a 500, then one that is gone: the bot token,
    webhook path and API key appear neither in the logs nor in deliveries.last_error."""

    def echo(req: Any, _rx: Any) -> Reply:
        return Reply(500, f"failed {req.path}?{req.query} auth={req.headers.get('Authorization')}")

    maker = AlertMaker(sqlite_store)
    few = RetryConfig(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
    errors = []
    with capture_logs() as logs:
        [echoed] = await maker.block([(1, 10**18)])
        async with Receiver(echo, path=ANY_PATH) as rx:
            dispatcher = Dispatcher(sqlite_store.outbox, build_sinks([make(rx, retry=few)]), ALERTS)
            assert await dispatcher.drain(timeout=60)
            await dispatcher.stop()
        # now nobody listens there: a connection error names the host, never the secret path
        [unanswered] = await maker.block([(2, 10**18)])
        dispatcher = Dispatcher(sqlite_store.outbox, build_sinks([make(rx, retry=few)]), ALERTS)
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
        for sent in (echoed, unanswered):
            [delivery] = await sqlite_store.outbox.deliveries(sent.seq)
            assert delivery.status == "dead"
            errors.append(delivery.last_error or "")
    assert errors[0].startswith("HTTP 500") and errors[1].startswith("connection failed"), errors
    everything = dumps([errors, [dict(entry) for entry in logs]])
    for secret in (GENIE_KEY, BOT_TOKEN, "very-secret-webhook-token", "sig=abc123"):
        assert secret not in everything


def test_configured_explorer_template_wins() -> None:
    """`explorer_tx_url` on a chain: the link every channel shows."""
    from depositwatch.alerts.format import explorers_for
    from depositwatch.alerts.text import alert_text

    chains = [
        ChainConfig(
            name="eth",
            kind="evm",
            chain_id=1,
            rpc_urls=["http://127.0.0.1:1"],
            explorer_tx_url="https://explorer.example/tx/{txid}?net=main",
        )
    ]
    text = alert_text(message(), explorers_for(chains))
    assert text.explorer == f"https://explorer.example/tx/{TXID}?net=main"
    assert text.fact("Explorer") == f"https://explorer.example/tx/{TXID}?net=main (explorer.example)"
    with pytest.raises(ValueError, match="txid"):
        ChainConfig(name="x", kind="evm", chain_id=1, rpc_urls=["http://h"], explorer_tx_url="https://e/tx/")


def test_validation_names_the_key() -> None:
    """telegram without chat_id, email without host or to, exec command not a list of strings, another
    channel's key: ConfigError naming the sink and key."""
    from depositwatch.config import ConfigError, parse_config

    cases = [
        ({"type": "telegram", "secret": {"value": "t"}}, "sinks.0: a telegram sink needs chat_id"),
        ({"type": "email", "from": "a@b.example", "to": ["c@d.example"]}, "sinks.0: an email sink needs host"),
        ({"type": "email", "host": "smtp.example", "from": "a@b.example"}, "sinks.0: an email sink needs to"),
        (
            {"type": "telegram", "secret": {"value": "t"}, "chat_id": 10**30},
            "sinks.0.chat_id.constrained-int: Input should be less than or equal to 9007199254740992",
        ),
        ({"type": "exec", "command": "notify.sh --now"}, "sinks.0.command: Input should be a valid list"),
        ({"type": "exec", "command": ["notify.sh", 5]}, "sinks.0.command.1: Input should be a valid string"),
        ({"type": "exec", "command": []}, "sinks.0.command: List should have at least 1 item"),
        ({"type": "discord"}, "sinks.0: a discord sink needs secret"),
        ({"type": "opsgenie"}, "sinks.0: an opsgenie sink needs secret"),
        ({"type": "teams", "secret": {"value": "u"}, "chat_id": 5}, "sinks.0: chat_id is not a key of a teams sink"),
        ({"type": "exec", "command": ["x"], "url": "http://h/"}, "sinks.0: url is not a key of an exec sink"),
        (
            {"type": "discord", "secret": {"value": "u"}, "url": "http://h/"},
            "sinks.0: url is not a key of a discord sink",
        ),
        (
            {"type": "email", "host": "h", "from": "a@b.example", "to": ["x@y.example\r\nBcc: evil@z.example"]},
            "sinks.0.to.0: String should match pattern",
        ),
        (
            {
                "type": "email",
                "host": "h",
                "from": "a@b.example",
                "to": ["c@d.example"],
                "username": "u",
                "password": {"value": "p"},
                "tls": "none",
            },
            'sinks.0: tls = "none" with a password would send it in clear',
        ),
    ]
    for sink, expected in cases:
        with pytest.raises(ConfigError) as failure:
            parse_config({"sinks": [{"name": "s", **sink}]}, "dw.toml")
        assert f"dw.toml: {expected}" in str(failure.value), (sink, str(failure.value))


def test_every_new_channel_filters_by_kind_and_severity() -> None:
    """kinds and min_severity route messages to each of the six channels as to Slack and PagerDuty."""
    common: dict[str, Any] = {"kinds": ["revoked_outgoing"], "min_severity": "critical"}
    configs = [
        sink_config("og", "opsgenie", secret=Secret(value="k"), **common),
        sink_config("teams", "teams", secret=Secret(value="https://t.example/w"), **common),
        sink_config("discord", "discord", secret=Secret(value="https://d.example/w"), **common),
        sink_config("tg", "telegram", secret=Secret(value="1:t"), chat_id="@security_room", **common),
        SinkConfig.model_validate(
            {"name": "mail", "type": "email", "host": "h", "from": "a@b.example", "to": ["c@d.example"], **common}
        ),
        sink_config("exec", "exec", command=["/bin/true"], **common),
    ]
    for sink in build_sinks(configs):
        assert sink.summarizes_bursts, sink.name
        assert sink.accepts(message(kind="revoked_outgoing")), sink.name
        assert not sink.accepts(message(kind="revoked_incoming")), sink.name
        assert not sink.accepts(message(kind="revoked_outgoing", severity="warning")), sink.name


async def test_alerts_test_command_reaches_a_new_channel(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_url: str
) -> None:
    """`depositwatch alerts test --sink` on a telegram sink: a message marked as a test, no funds moved."""
    import logging

    import structlog

    from tests.commands.test_alerts_cli import cli

    async with Receiver(telegram_ok, path=ANY_PATH) as rx:
        path = tmp_path / "depositwatch.toml"
        path.write_text(
            f'[[sinks]]\nname = "tg"\ntype = "telegram"\nurl = "{base(rx)}"\nchat_id = "@security_room"\n'
            f'secret = {{ value = "{BOT_TOKEN}" }}\nkinds = ["revoked_incoming", "test"]\n'
        )
        try:  # `alerts test` uses an existing store only: make it first
            assert (await cli(capsys, "--config", str(path), "db", "migrate", "--store", sqlite_url))[0] == 0
            code, stdout, _ = await cli(
                capsys, "--config", str(path), "alerts", "test", "--sink", "tg", "--store", sqlite_url
            )
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()
    assert code == 0 and "delivered to tg" in stdout
    [request] = rx.accepted
    document = request.json()
    assert document["chat_id"] == "@security_room"
    assert document["text"].startswith("<b>[TEST] test detected: depositwatch test alert, no funds moved</b>")
    assert "This is a test alert; no funds moved." in document["text"]
