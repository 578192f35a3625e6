"""Webhook signatures: HMAC-SHA256 over the timestamp and the raw body.

The sender puts the unix time in `X-Depositwatch-Timestamp` and
`v1=<hex HMAC-SHA256(secret, b"<timestamp>." + raw body)>` in `X-Depositwatch-Signature`. A receiver
recomputes the HMAC over the bytes it received (never a re-serialised JSON), compares in constant
time, and refuses timestamps too far from its own clock so a captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Depositwatch-Timestamp"
SIGNATURE_HEADER = "X-Depositwatch-Signature"
ID_HEADER = "X-Depositwatch-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300


class SignatureError(ValueError):
    """A request whose signature or timestamp does not check out; the message says which."""


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp`: `v1=<hex>`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify(
    secret: str | bytes,
    headers: Mapping[str, str] | tuple[str, str],
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a received request; return its timestamp or raise SignatureError.

    `headers` is the request's headers (looked up case-insensitively) or a (timestamp, signature) pair.
    The signature header may carry several comma-separated `v1=` values (during a secret rotation);
    one match is enough.
    """
    if isinstance(headers, tuple):
        stamp_text, signature = headers
    else:
        lowered = {k.lower(): v for k, v in headers.items()}
        stamp_text = lowered.get(TIMESTAMP_HEADER.lower(), "")
        signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not stamp_text.strip().isdigit():
        raise SignatureError("missing or malformed timestamp")
    stamp = int(stamp_text)
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        raise SignatureError(f"timestamp {stamp} is outside the {tolerance:g} s tolerance")
    expected = sign(secret, stamp, body)
    offered = [part.strip() for part in signature.split(",") if part.strip().startswith(f"{SCHEME}=")]
    if not offered:
        raise SignatureError("missing signature")
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise SignatureError("signature does not match the body")
    return stamp
