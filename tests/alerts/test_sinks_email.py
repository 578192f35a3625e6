"""The email sink against a real SMTP server on loopback (aiosmtpd): STARTTLS with a certificate made
here, implicit TLS, none; AUTH; plain text plus HTML; one message per alert and a digest per burst."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.mail import EmailSink
from depositwatch.alerts.sinks import DeliveryError
from depositwatch.config import AlertsConfig, RetryConfig, Secret, SinkConfig
from depositwatch.jsonutil import dumps
from depositwatch.models import AlertEvent
from depositwatch.store import SqlStore
from tests.alerts.test_sinks import ETH_ADDRESS, TXID, message
from tests.receivers import AlertMaker

FAST = RetryConfig(max_attempts=20, initial_backoff=0.01, max_backoff=0.1)
ALERTS = AlertsConfig(poll_interval=0.05, shutdown_grace=5)
USER = "alerts@relay.example"
PASSWORD = "smtp-pass-0123456789-secret"


@dataclass
class Mailbox:
    """What the SMTP server accepted, and who logged in."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append((envelope, message_from_bytes(content, policy=policy.default)))  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # a failure answered with 535


@dataclass(frozen=True)
class Cert:
    """A self-signed certificate for 127.0.0.1 and its key, as files."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """Made now: the client trusts it only through the sink's ca_file."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "depositwatch test relay")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "relay.pem", folder / "relay.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Cert(cert_path, key_path)


def relay(mailbox: Mailbox, port: int, **server: Any) -> Iterator[Controller]:
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **server)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def starttls_relay(cert: Cert, unused_tcp_port: int) -> Iterator[tuple[Mailbox, int]]:
    """STARTTLS required, AUTH required and only after TLS."""
    mailbox = Mailbox()
    yield from (
        (mailbox, unused_tcp_port)
        for _ in relay(
            mailbox,
            unused_tcp_port,
            tls_context=cert.server_context(),
            require_starttls=True,
            authenticator=mailbox.authenticate,
            auth_required=True,
            auth_require_tls=True,
        )
    )


def email_config(port: int, **extra: Any) -> SinkConfig:
    fields: dict[str, Any] = {
        "name": "mail",
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "from": "depositwatch@exchange.example",
        "to": ["security@exchange.example", "oncall@exchange.example"],
        "timeout": 5.0,
        "retry": FAST,
    }
    fields.update(extra)
    return SinkConfig.model_validate(fields)


def parts(mail: EmailMessage) -> tuple[str, str]:
    """The plain text and HTML bodies."""
    plain = mail.get_body(preferencelist=("plain",))
    rich = mail.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()  # type: ignore[attr-defined]


async def test_starttls_auth_one_mail_per_alert_and_a_digest(
    starttls_relay: tuple[Mailbox, int], cert: Cert, sqlite_store: SqlStore
) -> None:
    """Through the dispatcher: STARTTLS against a certificate trusted via ca_file, AUTH, two alerts as two
    mails (text and HTML) and a 30-alert block as one digest."""
    mailbox, port = starttls_relay
    maker = AlertMaker(sqlite_store)
    quiet = await maker.block([(1, 10**18), (2, 2 * 10**18)])
    burst = await maker.block([(100 + i, 10**15) for i in range(30)])
    config = email_config(
        port, username=USER, password=Secret(value=PASSWORD), ca_file=cert.cert, tls="starttls", burst_threshold=10
    )
    dispatcher = Dispatcher(sqlite_store.outbox, build_sinks([config]), ALERTS)
    assert await dispatcher.drain(timeout=60)
    await dispatcher.stop()
    assert mailbox.logins == [USER] * 3
    assert len(mailbox.messages) == 3
    for envelope, _ in mailbox.messages:
        assert envelope.mail_from == "depositwatch@exchange.example"
        assert envelope.rcpt_tos == ["security@exchange.example", "oncall@exchange.example"]
    singles = [m for _, m in mailbox.messages if "Burst" not in str(m["Subject"])]
    [digest] = [m for _, m in mailbox.messages if "Burst" in str(m["Subject"])]
    assert {str(m["X-Depositwatch-Key"]) for m in singles} == {m.idempotency_key for m in quiet}
    one = next(m for m in singles if str(m["X-Depositwatch-Key"]) == quiet[0].idempotency_key)
    assert one["Subject"] == "[CRITICAL] revoked_incoming detected: 1 ETH, funds sent to a revoked address"
    assert one["To"] == "security@exchange.example, oncall@exchange.example"
    assert one.get_content_type() == "multipart/alternative"
    plain, rich = parts(one)
    assert ("Amount: " in plain and "hot-1" in plain) or "hot-2" in plain
    assert "Confirmations: " in plain and "Kind: revoked_incoming" in plain
    assert "<table>" in rich and "Owner" in rich
    assert str(digest["Subject"]).startswith("[CRITICAL] Burst: 30 × revoked_incoming detected on eth block 2")
    plain, rich = parts(digest)
    assert "Total: 0.03 ETH" in plain and "...and 25 more" in plain and "depositwatch alerts list" in plain
    assert "<ul>" in rich and "…and 25 more" in rich
    for sent in quiet + burst:
        [delivery] = await sqlite_store.outbox.deliveries(sent.seq)
        assert delivery.status == "delivered"


async def test_implicit_tls_and_what_a_person_reads(cert: Cert, unused_tcp_port: int) -> None:
    """Implicit TLS (SMTPS); the mail shows amount, asset, address with label and owner, the explorer
    link, confirmations and kind; HTML escapes data; a retraction says so."""
    mailbox = Mailbox()
    sneaky = message(label="<script>x</script>")
    for _ in relay(mailbox, unused_tcp_port, ssl_context=cert.server_context()):
        sink = EmailSink(email_config(unused_tcp_port, tls="tls", ca_file=cert.cert), None)
        await sink.send(sneaky)
        await sink.send(message(AlertEvent.RETRACTED, rev=2))
        await sink.close()
    (_, first), (_, retracted) = mailbox.messages
    plain, rich = parts(first)
    for needed in ("Amount: 5.25 USDT", ETH_ADDRESS, "Owner: cust-42", f"https://etherscan.io/tx/{TXID}"):
        assert needed in plain
    assert "Confirmations: 2" in plain and "Kind: revoked_incoming: funds sent to a revoked address" in plain
    assert "&lt;script&gt;" in rich and "<script>" not in rich
    assert f'<a href="https://etherscan.io/tx/{TXID}">' in rich
    assert first["Message-ID"] == "<a1b2c3.1@depositwatch>"  # the same on every resend
    assert "RETRACTED" in str(retracted["Subject"])
    assert "was in block 18000000, now orphaned" in parts(retracted)[0]


async def test_plain_relay_without_tls(unused_tcp_port: int) -> None:
    """tls = "none": a relay on the same host, no encryption and no AUTH."""
    mailbox = Mailbox()
    for _ in relay(mailbox, unused_tcp_port):
        sink = EmailSink(email_config(unused_tcp_port, tls="none"), None)
        await sink.send(message())
    [(envelope, mail)] = mailbox.messages
    assert envelope.rcpt_tos == ["security@exchange.example", "oncall@exchange.example"]
    assert "5.25 USDT" in str(mail["Subject"])


async def test_certificate_is_checked(cert: Cert, unused_tcp_port: int) -> None:
    """Without ca_file the self-signed relay is not trusted: a failure, not a mail sent in the open."""
    mailbox = Mailbox()
    for _ in relay(mailbox, unused_tcp_port, tls_context=cert.server_context(), require_starttls=True):
        sink = EmailSink(email_config(unused_tcp_port, tls="starttls"), None)
        with pytest.raises(DeliveryError, match=r"(?i)certificate"):
            await sink.send(message())
    assert mailbox.messages == []


async def test_wrong_password_is_a_rejection_and_never_shown(
    starttls_relay: tuple[Mailbox, int], cert: Cert, sqlite_store: SqlStore
) -> None:
    """A 535 from the relay: a permanent failure, retried, finally dead; the password appears neither in
    the logs nor in deliveries.last_error."""
    mailbox, port = starttls_relay
    wrong = PASSWORD + "-wrong"
    maker = AlertMaker(sqlite_store)
    [sent] = await maker.block([(1, 10**18)])
    few = RetryConfig(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
    config = email_config(port, username=USER, password=Secret(value=wrong), ca_file=cert.cert, retry=few)
    with capture_logs() as logs:
        dispatcher = Dispatcher(sqlite_store.outbox, build_sinks([config]), ALERTS)
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    [delivery] = await sqlite_store.outbox.deliveries(sent.seq)
    assert delivery.status == "dead" and delivery.attempts == 2
    assert (delivery.last_error or "").startswith("SMTP 535")
    assert any(entry.get("status") == 535 for entry in logs)
    assert wrong not in dumps([delivery.last_error, [dict(e) for e in logs]])
    assert mailbox.messages == []


async def test_relay_down_is_retryable(unused_tcp_port: int) -> None:
    """Nobody listening: a retryable failure naming SMTP."""
    sink = EmailSink(email_config(unused_tcp_port, tls="none"), None)
    with pytest.raises(DeliveryError, match="SMTP failed") as failure:
        await sink.send(message())
    assert not failure.value.permanent


def test_check_config_covers_the_smtp_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check-config` warns about an inline SMTP password, never prints it, and with --resolve-secrets
    names a missing one."""
    from depositwatch.cli import main

    monkeypatch.delenv("SMTP_PASSWORD_UNSET", raising=False)
    sink = (
        '[[sinks]]\nname = "mail"\ntype = "email"\nhost = "127.0.0.1"\nfrom = "a@b.example"\n'
        'to = ["c@d.example"]\nusername = "u"\n'
    )
    path = tmp_path / "c.toml"
    path.write_text(sink + 'password = { value = "hunter5-smtp" }\n')
    assert main(["--config", str(path), "check-config"]) == 0
    captured = capsys.readouterr()
    assert "hunter5-smtp" not in captured.out + captured.err
    assert "sinks.mail.password is written inline" in captured.err
    path.write_text(sink + 'password = { env = "SMTP_PASSWORD_UNSET" }\n')
    assert main(["--config", str(path), "check-config", "--resolve-secrets"]) == 2
    assert "sinks.mail.password: environment variable SMTP_PASSWORD_UNSET is not set" in capsys.readouterr().err


async def test_a_relay_that_never_answers_times_out() -> None:
    """A server that accepts and says nothing: a timed-out, retryable failure within the sink's timeout."""
    import asyncio

    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = EmailSink(email_config(port, tls="none", timeout=0.5), None)
        with pytest.raises(DeliveryError, match=r"no answer within 0\.5 s") as failure:
            await sink.send(message())
        assert failure.value.timed_out and not failure.value.permanent
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
