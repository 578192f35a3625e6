"""Keeping secrets that travel in URLs (webhook URLs, bot tokens) out of errors and logs."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from depositwatch.alerts.sinks import DeliveryError
from depositwatch.config import REDACTED

MIN_SECRET = 4  # shorter strings would blank out ordinary words


def secret_parts(url: str) -> list[str]:
    """The pieces of a secret URL that must not be shown: the whole URL, its path and its query."""
    parts = urlsplit(url)
    found = [url, parts.path, parts.query]
    found += [segment for segment in parts.path.split("/") if len(segment) >= 16]
    return [p for p in found if len(p) >= MIN_SECRET]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by ********, longest first (a URL before its path)."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def scrubbed(failure: DeliveryError, secrets: Iterable[str]) -> DeliveryError:
    """The same failure with the secrets taken out of its reason."""
    return DeliveryError(
        scrub(failure.reason, secrets),
        retry_after=failure.retry_after,
        permanent=failure.permanent,
        status=failure.status,
        timed_out=failure.timed_out,
    )
