"""Each sink against a real receiver: the webhook's exact request, Slack and PagerDuty formats, failures."""

from __future__ import annotations

import contextlib
import time
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from depositwatch.alerts.factory import build_sinks, dispatcher_for, sinks_for
from depositwatch.alerts.format import explorer_url, explorers_for
from depositwatch.alerts.pagerduty import EVENTS_URL, PagerDutySink, pagerduty_burst, pagerduty_event
from depositwatch.alerts.signing import decode_secret, encode_secret
from depositwatch.alerts.sinks import Burst, DeliveryError, WebhookSink, parse_retry_after
from depositwatch.alerts.slack import SlackSink, slack_burst, slack_message
from depositwatch.config import ChainConfig, ConfigError, Secret, SinkConfig, parse_config
from depositwatch.jsonutil import dumps, loads
from depositwatch.messages import OutboxMessage, build_payload
from depositwatch.models import AlertEvent, Severity
from depositwatch.store import open_store
from tests.receivers import WEBHOOK_SECRET, Receiver, Reply, always, ok
from tests.util import serve

ETH_ADDRESS = "0x2222222222222222222222222222222222222222"
USDT_CONTRACT = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
TXID = "0x" + "ab" * 32
KEY = decode_secret(WEBHOOK_SECRET)


def row(**changes: Any) -> dict[str, Any]:
    """A `matches` row as the store holds it."""
    base = {
        "kind": "revoked_incoming",
        "chain": "eth",
        "asset_symbol": "USDT",
        "asset_decimals": 6,
        "asset_contract": USDT_CONTRACT,
        "amount": "5250000",
        "from_address": "0x9999999999999999999999999999999999999999",
        "to_address": ETH_ADDRESS,
        "address": ETH_ADDRESS,
        "label": "hot-7",
        "owner": "cust-42",
        "revoked_at": 1694487600,
        "txid": TXID,
        "idx": 3,
        "block_height": 18_000_000,
        "block_hash": "0x" + "cd" * 32,
        "block_time": 1694500000,
    }
    base.update(changes)
    return base


def message(
    event: AlertEvent = AlertEvent.DETECTED,
    *,
    seq: int = 7,
    rev: int = 1,
    severity: str = "critical",
    chain_id: int | None = 1,
    confirmations: int = 2,
    **changes: Any,
) -> OutboxMessage:
    """An outbox message whose body comes from the real `build_payload`."""
    data = row(**changes)
    body = build_payload(
        data,
        alert_id="a1b2c3",
        rev=rev,
        event=event,
        severity=severity,
        chain_id=chain_id,
        confirmations=confirmations,
        mode="live",
        detected_at=1694500100,
    )
    return OutboxMessage(
        seq=seq,
        alert_id="a1b2c3",
        rev=rev,
        event=str(event),
        kind=data["kind"],
        severity=severity,
        chain=data["chain"],
        order_key=f"{data['chain']}:{data['address']}",
        block_height=data["block_height"],
        status="pending",
        payload=dumps(body),
        created_at=1694500100,
    )


def config(type_: str, url: str | None, **extra: Any) -> SinkConfig:
    secret = {"webhook": WEBHOOK_SECRET, "slack": None, "pagerduty": "R0UTING"}[type_]
    fields: dict[str, Any] = {"name": type_, "type": type_, "url": url, "timeout": 5}
    if secret:
        fields["secret"] = Secret(value=secret)
    fields.update(extra)
    return SinkConfig(**fields)


async def test_webhook_posts_the_stored_bytes_signed_the_standard_webhooks_way() -> None:
    """The stored payload byte for byte; `webhook-id` is the idempotency key and is signed with the
    timestamp and body, as the `standardwebhooks` package checks it."""
    sent = message(rev=3)
    async with Receiver() as rx:
        sink = WebhookSink(config("webhook", rx.url), [KEY])
        before = int(time.time())
        await sink.send(sent)
        await sink.close()
    [request] = rx.requests
    assert request.verified and request.status == 200 and not rx.forged
    assert request.body == sent.payload.encode()
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Depositwatch-Id"] == "a1b2c3"
    assert request.headers["webhook-id"] == "a1b2c3:3" == request.json()["idempotency_key"]
    assert request.headers["Idempotency-Key"] == "a1b2c3:3"
    stamp = int(request.headers["webhook-timestamp"])
    assert stamp >= before
    [signature] = request.headers["webhook-signature"].split(" ")
    assert signature.startswith("v1,")
    assert Webhook(WEBHOOK_SECRET).verify(request.body, request.headers) == request.json()
    # the id is covered: the same request under another key does not verify
    for changed in ({"webhook-id": "a1b2c3:4"}, {"webhook-timestamp": str(stamp + 1)}):
        with pytest.raises(WebhookVerificationError):
            Webhook(WEBHOOK_SECRET).verify(request.body, {**request.headers, **changed})


async def test_rotation_sends_one_signature_per_secret() -> None:
    """A sink with `secret` and `secrets` signs with each; a receiver holding only the old or only the
    new secret verifies every request, one holding neither refuses it."""
    old, new, third = (encode_secret(bytes([n]) * 32) for n in (1, 2, 3))
    rotating = config("webhook", "http://127.0.0.1:1/", secret=Secret(value=old), secrets=[Secret(value=new)])
    async with Receiver(secrets=[old]) as old_rx, Receiver(secrets=[new]) as new_rx, Receiver(secrets=[third]) as rx3:
        for rx in (old_rx, new_rx, rx3):
            sink = build_sinks([rotating.model_copy(update={"url": rx.url})])[0]
            try:
                if rx is rx3:
                    with pytest.raises(DeliveryError, match="HTTP 401"):
                        await sink.send(message())
                else:
                    await sink.send(message())
            finally:
                await sink.close()
    for rx in (old_rx, new_rx):
        [request] = rx.requests
        assert request.verified and request.status == 200
        assert [part[:3] for part in request.headers["webhook-signature"].split(" ")] == ["v1,", "v1,"]
    assert len(rx3.forged) == 1 and rx3.requests[0].status == 401


@pytest.mark.parametrize(
    ("status", "headers", "permanent", "retry_after"),
    [
        (500, {}, False, None),
        (502, {}, False, None),
        (503, {"Retry-After": "7"}, False, 7.0),
        (429, {"Retry-After": "30"}, False, 30.0),
        (429, {}, False, None),
        (408, {}, False, None),
        (409, {}, False, None),
        (425, {}, False, None),
        (400, {}, True, None),
        (401, {}, True, None),
        (404, {}, True, None),
        (410, {"Retry-After": "5"}, True, None),
        (301, {"Location": "http://elsewhere.invalid/"}, False, None),
    ],
)
async def test_failures_are_classified(
    status: int, headers: dict[str, str], permanent: bool, retry_after: float | None
) -> None:
    """5xx retry; 429/503 carry Retry-After; 4xx (but 408/409/425/429) are rejections; redirects are not followed."""
    async with Receiver(lambda _req, _rx: Reply(status, "no", headers)) as rx:
        sink = WebhookSink(config("webhook", rx.url), [KEY])
        with pytest.raises(DeliveryError) as failure:
            await sink.send(message())
        await sink.close()
    assert failure.value.status == status
    assert failure.value.permanent is permanent
    assert failure.value.retry_after == retry_after
    assert failure.value.reason.startswith(f"HTTP {status}")


async def test_unreachable_receiver_is_a_connection_failure() -> None:
    """Nobody listening: a retryable DeliveryError, not an exception of the HTTP library."""
    rx = await Receiver().start()
    url = rx.url
    await rx.stop()
    sink = WebhookSink(config("webhook", url), [KEY])
    with pytest.raises(DeliveryError, match="connection failed") as failure:
        await sink.send(message())
    await sink.close()
    assert not failure.value.permanent and failure.value.status is None


async def test_an_endless_answer_is_read_only_so_far() -> None:
    """A receiver that answers 200 and then never ends its body (or sends gigabytes) holds no sink: every
    sink reads at most 64 KiB of an answer, so the delivery succeeds instead of waiting out its timeout
    (or filling memory) reading the rest."""
    written = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(status=200)
        await answer.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await answer.write(b"x" * 65536)
                written[0] += 65536
        return answer

    app = web.Application()
    app.router.add_post("/", endless)
    runner, port = await serve(app)
    try:
        for sink in (
            WebhookSink(config("webhook", f"http://127.0.0.1:{port}/", timeout=3), [KEY]),
            SlackSink(
                config("slack", None, timeout=3, secret=Secret(value=f"http://127.0.0.1:{port}/")),
                SecretStr(f"http://127.0.0.1:{port}/"),
            ),
        ):
            await sink.send(message())
            await sink.close()
    finally:
        await runner.cleanup()
    assert written[0] >= 65536


def test_retry_after_seconds_or_http_date() -> None:
    """Retry-After as delta-seconds or as an HTTP date; garbage is ignored."""
    now = 1_800_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90, abs=1)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def _fields(document: dict[str, Any]) -> dict[str, str]:
    [section] = [b for b in document["blocks"] if b["type"] == "section" and "fields" in b]
    found = {}
    for field in section["fields"]:
        label, _, value = field["text"].partition("\n")
        found[label.strip("*")] = value
    return found


async def test_slack_message_has_what_a_person_needs() -> None:
    """Title with kind and event; amount and asset, chain, address with label and owner, revoked_at, the
    txid linked to etherscan, block and confirmations, the alert id: posted as JSON to the webhook URL."""
    sent = message()
    async with Receiver() as rx:
        sink = SlackSink(config("slack", None, secret=Secret(value=rx.url)), SecretStr(rx.url))
        await sink.send(sent)
        await sink.close()
    document = rx.requests[0].json()
    header = document["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"].startswith("[CRITICAL] revoked_incoming detected: 5.25 USDT")
    assert len(header["text"]["text"]) <= 150
    assert "revoked_incoming detected" in document["text"] and ETH_ADDRESS in document["text"]
    fields = _fields(document)
    assert fields["Amount"].startswith("5.25 USDT") and USDT_CONTRACT in fields["Amount"]
    assert fields["Chain"] == "eth (chain id 1)"
    assert ETH_ADDRESS in fields["Address"] and "hot-7" in fields["Address"] and "cust-42" in fields["Address"]
    assert fields["Revoked at"] == "2023-09-12T03:00:00Z"
    assert fields["Transaction"] == f"<https://etherscan.io/tx/{TXID}|{TXID}> (index 3) on etherscan.io"
    assert fields["Block"] == "block 18000000, 2 confirmations"
    context = str(document["blocks"][-1])
    assert "a1b2c3" in context and "a1b2c3:1" in context


def test_slack_explorer_links_only_for_known_mainnets_and_escapes_data() -> None:
    """mempool.space for Bitcoin mainnet, a plain txid elsewhere; labels cannot inject Slack markup."""
    btc = message(
        chain="btc",
        chain_id=None,
        address="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        txid="ff" * 32,
        asset_symbol="BTC",
        asset_decimals=8,
        asset_contract=None,
        idx=0,
    )
    assert _fields(slack_message(btc, loads(btc.payload)))["Transaction"].startswith(
        f"<https://mempool.space/tx/{'ff' * 32}|"
    )
    regtest = message(
        chain="btc",
        chain_id=None,
        address="bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        txid="ee" * 32,
        asset_contract=None,
    )
    assert _fields(slack_message(regtest, loads(regtest.payload)))["Transaction"] == f"`{'ee' * 32}` (index 3)"
    sepolia = message(chain_id=11155111)
    assert _fields(slack_message(sepolia, loads(sepolia.payload)))["Transaction"].startswith(f"`{TXID}`")
    # the configured chains decide when given: a chain named like mainnet but configured as regtest
    chains = [ChainConfig(name="btc", kind="bitcoin", network="regtest", rpc_urls=["http://127.0.0.1:1"])]
    assert explorer_url(loads(btc.payload), explorers_for(chains)) is None
    sneaky = message(label="<!channel> & <http://evil|click>", owner="o>")
    text = _fields(slack_message(sneaky, loads(sneaky.payload)))["Address"]
    assert "&lt;!channel&gt; &amp; &lt;http://evil|click&gt;" in text and "<!channel>" not in text


def test_slack_retraction_and_mempool_wording() -> None:
    """A retraction says so in the title and where the transaction was; a mempool sighting says unconfirmed."""
    gone = message(AlertEvent.RETRACTED, rev=2)
    document = slack_message(gone, loads(gone.payload))
    assert "revoked_incoming retracted: 5.25 USDT, RETRACTED" in document["blocks"][0]["text"]["text"]
    assert _fields(document)["Block"] == "was in block 18000000, now orphaned"
    pending = message(block_height=None, block_hash=None, block_time=None, confirmations=0)
    assert _fields(slack_message(pending, loads(pending.payload)))["Block"] == "mempool (unconfirmed)"


async def test_pagerduty_trigger_and_resolve() -> None:
    """Events v2: trigger with dedup key = alert id, summary within 1024 chars, severity mapped, the body as
    custom details; a retraction resolves the same dedup key; 202 is success."""
    detected = message(label="x" * 3000)
    async with Receiver(ok(202)) as rx:
        sink = PagerDutySink(config("pagerduty", rx.url), SecretStr("R0UTING"))
        await sink.send(detected)
        await sink.send(message(AlertEvent.RETRACTED, rev=2))
        await sink.close()
    trigger, resolve = (r.json() for r in rx.requests)
    assert trigger["routing_key"] == "R0UTING" and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "a1b2c3"
    payload = trigger["payload"]
    assert len(payload["summary"]) <= 1024 and payload["summary"].startswith("[CRITICAL] revoked_incoming detected")
    assert payload["source"] == "depositwatch" and payload["severity"] == "critical"
    assert payload["timestamp"] == "2023-09-12T06:28:20Z"
    assert payload["component"] == "eth" and payload["group"] == "revoked_incoming" and payload["class"] == "detected"
    assert payload["custom_details"] == loads(detected.payload)
    assert trigger["links"] == [{"href": f"https://etherscan.io/tx/{TXID}", "text": "Transaction on etherscan.io"}]
    assert resolve == {"routing_key": "R0UTING", "event_action": "resolve", "dedup_key": "a1b2c3"}


def test_pagerduty_severity_mapping_and_default_url() -> None:
    """critical/warning/info map to the same PagerDuty severities; the default endpoint is Events v2."""
    for ours in ("critical", "warning", "info"):
        sent = message(severity=ours)
        assert pagerduty_event("k", sent, loads(sent.payload))["payload"]["severity"] == ours
    assert (
        PagerDutySink(config("pagerduty", None), SecretStr("k")).url
        == EVENTS_URL
        == "https://events.pagerduty.com/v2/enqueue"
    )


async def test_pagerduty_rejection_is_permanent() -> None:
    """PagerDuty's 400 (invalid event) is reported as a rejection."""
    async with Receiver(always(400, body='{"status":"invalid event"}')) as rx:
        sink = PagerDutySink(config("pagerduty", rx.url), SecretStr("R0UTING"))
        with pytest.raises(DeliveryError, match="invalid event") as failure:
            await sink.send(message())
        await sink.close()
    assert failure.value.permanent


def test_burst_summaries() -> None:
    """A burst: count, totals per asset, the first addresses, how to list them; PagerDuty's stable key."""
    messages = tuple(message(seq=100 + i, address=f"0x{i:040x}", amount=str(1_000_000 * (i + 1))) for i in range(30))
    burst = Burst("eth", 18_000_000, "revoked_incoming", "detected", messages)
    assert burst.totals() == ["465 USDT"]
    document = slack_burst(burst)
    flat = dumps(document)
    assert document["blocks"][0]["text"]["text"].startswith("[CRITICAL] Burst: 30 × revoked_incoming detected")
    assert "0x" + f"{0:040x}" in flat and "0x" + f"{4:040x}" in flat and "0x" + f"{5:040x}" not in flat
    assert "and 25 more" in flat and "depositwatch alerts list --kind revoked_incoming" in flat
    assert "outbox seq 100–129" in flat
    event = pagerduty_burst("k", burst)
    assert event["dedup_key"] == "burst:eth:18000000:revoked_incoming"
    assert event["payload"]["custom_details"]["count"] == 30
    assert len(event["payload"]["custom_details"]["first_addresses"]) == 5
    retracted = Burst("eth", 18_000_000, "revoked_incoming", "retracted", messages)
    assert pagerduty_burst("k", retracted) == {
        "routing_key": "k",
        "event_action": "resolve",
        "dedup_key": "burst:eth:18000000:revoked_incoming",
    }


def test_build_sinks_resolves_secrets_and_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets come from the environment at build time; a missing one is named; kinds and min_severity filter."""
    monkeypatch.setenv("HOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.invalid/services/T/B/X")
    configs = [
        SinkConfig(name="hook", type="webhook", url="http://127.0.0.1:1/", secret=Secret(env="HOOK_SECRET")),
        SinkConfig(
            name="slack",
            type="slack",
            secret=Secret(env="SLACK_URL"),
            min_severity=Severity.CRITICAL,
            kinds=["revoked_outgoing"],
        ),
    ]
    hook, slack = build_sinks(configs)
    assert isinstance(hook, WebhookSink) and hook._keys == (KEY,)
    assert isinstance(slack, SlackSink) and slack._url.get_secret_value().endswith("/T/B/X")
    assert slack.summarizes_bursts
    assert not hook.summarizes_bursts
    incoming, sweep = message(), message(kind="revoked_outgoing")
    assert hook.accepts(incoming) and not hook.accepts(message(kind="deposit"))
    assert slack.accepts(sweep) and not slack.accepts(incoming)
    assert not slack.accepts(message(kind="revoked_outgoing", severity="warning"))
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(ConfigError, match="HOOK_SECRET"):
        build_sinks(configs[:1])


RAW_SECRET = "an-old-raw-secret-of-more-than-24-bytes"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "the webhook secret is empty"),
        ("   ", "the webhook secret is empty"),
        (RAW_SECRET, "the webhook secret must be whsec_<base64"),
        (encode_secret(b"k" * 23), "the webhook secret's key is 23 bytes; at least 24"),
        ("whsec_", "the webhook secret's key is 0 bytes"),
        ("whsec_no*t-base64!", "the webhook secret after whsec_ is not base64"),
    ],
)
def test_empty_short_and_raw_webhook_secrets_are_refused_at_load(value: str, problem: str) -> None:
    """At config load, naming the key path, never showing the value; `secrets` entries likewise."""
    for where, sink in (
        ("sinks.0: secret: ", {"secret": {"value": value}}),
        (
            "sinks.0: secrets.1: ",
            {"secret": {"value": WEBHOOK_SECRET}, "secrets": [{"value": WEBHOOK_SECRET}, {"value": value}]},
        ),
    ):
        data = {"sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:1/", **sink}]}
        with pytest.raises(ConfigError) as caught:
            parse_config(data, "d.toml")
        text = str(caught.value)
        assert f"d.toml: {where}{problem}" in text
        assert value.strip() == "" or value not in text


def test_secrets_from_env_or_file_are_checked_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env or file secret is read at start-up (build_sinks, check-config --resolve-secrets): a raw or
    short one is refused there, naming the sink and key, without its value."""
    configs = [SinkConfig(name="hook", type="webhook", url="http://127.0.0.1:1/", secret=Secret(env="HOOK_SECRET"))]
    monkeypatch.setenv("HOOK_SECRET", RAW_SECRET)
    with pytest.raises(ConfigError, match=r"^sinks\.hook\.secret: the webhook secret must be whsec_") as caught:
        build_sinks(configs)
    assert RAW_SECRET not in str(caught.value)
    monkeypatch.setenv("HOOK_SECRET", encode_secret(b"k" * 16))
    with pytest.raises(ConfigError, match=r"^sinks\.hook\.secret: the webhook secret's key is 16 bytes"):
        build_sinks(configs)
    # the documented conversion keeps an old raw secret's key
    converted = encode_secret(RAW_SECRET.encode())
    monkeypatch.setenv("HOOK_SECRET", converted)
    [hook] = build_sinks(configs)
    assert isinstance(hook, WebhookSink) and hook._keys == (RAW_SECRET.encode(),)


def test_a_slack_url_without_a_scheme_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Slack webhook URL missing `https://` is a config error naming the key, not a delivery error
    whose text (the URL, i.e. the secret) would be logged and stored."""
    monkeypatch.setenv("SLACK_URL", "hooks.slack.invalid/services/T000/B000/XXXXSECRETXXXX")
    configs = [SinkConfig(name="chat", type="slack", secret=Secret(env="SLACK_URL"))]
    with pytest.raises(ConfigError, match=r"^sinks\.chat\.secret: the Slack webhook URL is not a usable URL") as caught:
        build_sinks(configs)
    assert "XXXXSECRETXXXX" not in str(caught.value)


async def test_the_one_builder_gives_every_dispatcher_its_chains_explorers(sqlite_url: str) -> None:
    """The daemon (at start, after retaking the dispatcher lease, on SIGHUP), replay and the CLI build their
    sinks through `dispatcher_for`/`sinks_for`: each sink links to the explorer of the config's chains.
    (The daemon's re-built dispatcher once got sinks without the chains, so no links.)"""
    config = parse_config(
        {
            "chains": [{"name": "main", "kind": "evm", "chain_id": 1, "rpc_urls": ["http://127.0.0.1:1"]}],
            "sinks": [
                {"name": "slack", "type": "slack", "secret": {"value": "https://hooks.slack.invalid/services/T/B/X"}},
                {"name": "discord", "type": "discord", "secret": {"value": "https://discord.invalid/api/webhooks/1/x"}},
            ],
        }
    )
    expected = explorers_for(config.chains)
    assert expected["main"]
    store = await open_store(sqlite_url, migrate=True)
    dispatcher = dispatcher_for(config, store.outbox)
    built = list(dispatcher._sinks.values()) + sinks_for(config) + sinks_for(config, ["discord"])
    assert [s.name for s in built] == ["slack", "discord", "slack", "discord", "discord"]
    for sink in built:
        assert sink._explorers == expected, sink.name  # type: ignore[attr-defined]
    await dispatcher.stop(0)
    await store.close()
