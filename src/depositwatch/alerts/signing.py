"""Webhook signatures the Standard Webhooks way (https://www.standardwebhooks.com).

Every request carries `webhook-id` (the message's idempotency key), `webhook-timestamp` (unix seconds)
and `webhook-signature`: one `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>." + raw body)>` per
configured secret, separated by spaces, so a receiver can move to a new secret without a gap. Because the
id is signed, nobody who saw one request can replay it under another key or pre-empt the next one.

Secrets are written `whsec_<base64 of the key>`; the key must be at least 24 bytes. Receivers verify with
the `standardwebhooks` package or Svix's libraries; `verify` below is the same check for the demo and for
receivers without the library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 1024
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the same value as webhook-id, for receivers that key on it
ALERT_ID_HEADER = "X-Depositwatch-Id"  # the alert id, also in the (signed) body
SCHEME = "v1"
DEFAULT_TOLERANCE = 300
# Bounds on what a receiver accepts before computing anything: headers come from whoever can reach it.
MAX_ID_LENGTH = 256
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURE_HEADER = 4096


class SecretFormatError(ValueError):
    """A webhook secret that is not `whsec_<base64>` of at least 24 bytes; the message never shows it."""


class SignatureError(ValueError):
    """A request whose signature or timestamp does not check out; the message says which."""


def decode_secret(text: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; SecretFormatError (without the value) otherwise."""
    text = text.strip()
    if not text:
        raise SecretFormatError("the webhook secret is empty")
    if not text.startswith(SECRET_PREFIX):
        raise SecretFormatError(
            f"the webhook secret must be {SECRET_PREFIX}<base64 of at least {MIN_KEY_BYTES} random bytes>"
            f" (Standard Webhooks); an older raw secret of {MIN_KEY_BYTES}+ bytes keeps its key as"
            f' {SECRET_PREFIX}$(printf %s "$OLD" | base64 -w0)'
        )
    encoded = text.removeprefix(SECRET_PREFIX)
    if len(encoded) > MAX_KEY_BYTES * 2:
        raise SecretFormatError(f"the webhook secret is longer than {MAX_KEY_BYTES} bytes")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretFormatError(f"the webhook secret after {SECRET_PREFIX} is not base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise SecretFormatError(f"the webhook secret's key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required")
    return key


def encode_secret(key: bytes) -> str:
    """The `whsec_` form of a key (what operators put in the secret file)."""
    return SECRET_PREFIX + base64.b64encode(key).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature: `v1,<base64 HMAC-SHA256(key, b"<id>.<timestamp>." + body)>`."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{SCHEME},{base64.b64encode(digest).decode()}"


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per key, space-separated (rotation)."""
    return " ".join(sign(key, msg_id, timestamp, body) for key in keys)


def signed_headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one request."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(keys, msg_id, timestamp, body),
    }


def verify(
    keys: bytes | Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a received request against one key or several (rotation); return its `webhook-id`.

    Header names are looked up case-insensitively. SignatureError says what is wrong; it never echoes
    header values.
    """
    accepted = [keys] if isinstance(keys, bytes) else list(keys)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get(ID_HEADER, "")
    stamp_text = lowered.get(TIMESTAMP_HEADER, "").strip()
    signature = lowered.get(SIGNATURE_HEADER, "")
    if not msg_id or len(msg_id) > MAX_ID_LENGTH:
        raise SignatureError("missing or oversized webhook-id")
    if not stamp_text.isascii() or not stamp_text.isdigit() or len(stamp_text) > MAX_TIMESTAMP_DIGITS:
        raise SignatureError("missing or malformed webhook-timestamp")
    stamp = int(stamp_text)
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        raise SignatureError(f"webhook-timestamp is outside the {tolerance:g} s tolerance")
    if not signature or len(signature) > MAX_SIGNATURE_HEADER:
        raise SignatureError("missing or oversized webhook-signature")
    offered = [part.encode() for part in signature.split(" ") if part.startswith(f"{SCHEME},")]
    if not offered:
        raise SignatureError("no v1 signature in webhook-signature")
    for key in accepted:
        expected = sign(key, msg_id, stamp, body).encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return msg_id
    raise SignatureError("no signature matches the body")
