"""Email over SMTP (STARTTLS, implicit TLS or none, optional AUTH): one message per alert, plain text
plus HTML, and one digest per burst."""

from __future__ import annotations

import html
import re
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

import aiosmtplib

from depositwatch.alerts.redact import scrub
from depositwatch.alerts.routing import Routed
from depositwatch.alerts.sinks import Burst, DeliveryError
from depositwatch.alerts.text import AlertText, BurstText, alert_text, burst_text, clip
from depositwatch.config import SinkConfig
from depositwatch.messages import OutboxMessage

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
SUBJECT_LIMIT = 200
MESSAGE_ID_DOMAIN = "depositwatch"
_MSGID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# CRLF line ends; headers folded only past the RFC 5322 hard limit, so a subject stays on its line
MAIL_POLICY = SMTP.clone(max_line_length=998)


def _subject(text: str) -> str:
    """One line (a label with a line break must not start a header of its own)."""
    return clip(" ".join(text.split()), SUBJECT_LIMIT)


def _html_page(title: str, rows: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html><html><body>"
        f"<h2>{html.escape(title)}</h2>"
        + "".join(rows)
        + '<p style="color:#666">sent by depositwatch</p></body></html>'
    )


def alert_html(text: AlertText) -> str:
    """The HTML part of one alert: the title, a table of facts, the transaction linked."""
    cells = []
    for fact in text.facts:
        value = html.escape(fact.value)
        if fact.label == "Explorer" and text.explorer:
            value = f'<a href="{html.escape(text.explorer, quote=True)}">{value}</a>'
        cells.append(f'<tr><th align="left">{html.escape(fact.label)}</th><td>{value}</td></tr>')
    rows = []
    if text.test:
        rows.append("<p><b>This is a test alert; no funds moved.</b></p>")
    rows.append("<table>" + "".join(cells) + "</table>")
    return _html_page(text.title, rows)


def burst_html(text: BurstText) -> str:
    """The HTML part of a burst digest."""
    listing = "".join(f"<li>{html.escape(a)}</li>" for a in text.addresses)
    if text.more > 0:
        listing += f"<li>…and {text.more} more</li>"
    rows = [f"<p>{html.escape(line)}</p>" for line in text.lines]
    rows.append(f"<p><b>First addresses:</b></p><ul>{listing}</ul>")
    return _html_page(text.title, rows)


def build_email(config: SinkConfig, subject: str, plain: str, rich: str, key: str) -> EmailMessage:
    """A multipart/alternative message; its Message-ID comes from the idempotency key, so a resent
    alert carries the same one and mail clients can fold the copies."""
    assert config.from_ is not None and config.to
    message = EmailMessage(policy=MAIL_POLICY)
    message["Subject"] = _subject(subject)
    message["From"] = config.from_
    message["To"] = ", ".join(config.to)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = f"<{_MSGID_UNSAFE.sub('.', key)}@{MESSAGE_ID_DOMAIN}>"
    message["X-Depositwatch-Key"] = key
    message.set_content(plain)
    message.add_alternative(rich, subtype="html")
    return message


class EmailSink(Routed):
    """An SMTP relay; one connection per message (alerts are rare; a burst is one digest)."""

    summarizes_bursts = True

    def __init__(self, config: SinkConfig, password: str | None, explorers: Mapping[str, str] | None = None) -> None:
        assert config.host is not None and config.to and config.from_ is not None
        super().__init__(config)
        self.host = config.host
        self.port = config.port or DEFAULT_PORTS[config.tls]
        self._password = password
        self._explorers = explorers

    def tls_context(self) -> ssl.SSLContext:
        """The system's trust store, or the configured CA bundle; certificates and names are checked."""
        context = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def send(self, message: OutboxMessage) -> None:
        """Mail one alert."""
        text = alert_text(message, self._explorers)
        await self._deliver(build_email(self.config, text.title, text.plain(), alert_html(text), text.idempotency_key))

    async def send_burst(self, burst: Burst) -> None:
        """Mail one digest for the burst."""
        text = burst_text(burst)
        key = f"{burst.dedup_key}:{burst.event}"
        await self._deliver(build_email(self.config, text.title, text.plain(), burst_html(text), key))

    async def _deliver(self, email: EmailMessage) -> None:
        tls = self.config.tls
        try:
            # flattened here, with our policy: aiosmtplib's own would fold a long subject onto a line
            # of its own, which some readers show with a leading space
            assert self.config.from_ is not None and self.config.to
            await aiosmtplib.send(
                email.as_bytes(policy=MAIL_POLICY),
                sender=self.config.from_,
                recipients=list(self.config.to),
                hostname=self.host,
                port=self.port,
                username=self.config.username,
                password=self._password,
                use_tls=tls == "tls",
                start_tls=tls == "starttls",
                tls_context=self.tls_context() if tls != "none" else None,
                timeout=self.config.timeout,
            )
        except aiosmtplib.SMTPTimeoutError:
            raise DeliveryError(f"no answer within {self.config.timeout:g} s", timed_out=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx: the relay refuses (bad AUTH, unknown recipient); 4xx: try later.
            reason = self._clean(f"SMTP {exc.code}: {exc.message}")
            raise DeliveryError(reason, permanent=500 <= exc.code < 600, status=exc.code) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            reason = self._clean(
                "SMTP recipients refused: " + "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            )
            raise DeliveryError(reason, permanent=True) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise DeliveryError(self._clean(f"SMTP failed: {type(exc).__name__}: {exc}")) from None

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())[:300]
        return scrub(text, [self._password] if self._password else [])

    async def close(self) -> None:
        """Nothing stays open between messages."""
