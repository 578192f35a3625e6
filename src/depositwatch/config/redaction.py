"""Redaction: the one place that decides what of a secret or a URL may be shown.

Resolved secrets and the credential-bearing parts of configured URLs are remembered; `redact_text` cuts
them, and every URL's path and query, out of any text about to be printed, logged or stored.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

REDACTED = "********"
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
