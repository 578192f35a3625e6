"""Webhook signatures: what the sender computes and what a receiver checks, including the docs' snippet."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path
from typing import Any

import pytest

from depositwatch.alerts.signing import SignatureError, sign, verify

SECRET = "whsec-7f3a"
BODY = b'{"id":"abc","idempotency_key":"abc:1","amount":"5000000"}'
DOCS = Path(__file__).resolve().parent.parent / "docs" / "alerts.md"


def headers(timestamp: int, body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    return {"X-Depositwatch-Timestamp": str(timestamp), "X-Depositwatch-Signature": sign(secret, timestamp, body)}


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    """`v1=` + hex HMAC-SHA256(secret, b"<timestamp>." + raw body), independently computed."""
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == f"v1={expected}"
    assert sign(SECRET.encode(), 1700000000, BODY) == f"v1={expected}"


def test_verify_accepts_a_fresh_request_and_returns_its_timestamp() -> None:
    """A request signed now verifies; header names are case-insensitive; a (timestamp, signature) pair works."""
    now = int(time.time())
    assert verify(SECRET, headers(now), BODY) == now
    lowered = {k.lower(): v for k, v in headers(now).items()}
    assert verify(SECRET, lowered, BODY) == now
    pair = (str(now), sign(SECRET, now, BODY))
    assert verify(SECRET, pair, BODY, now=now + 10) == now


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": BODY.replace(b"5000000", b"9000000")}, "does not match"),
        ({"body": BODY + b" "}, "does not match"),
        ({"secret": "another-secret"}, "does not match"),
        ({"age": 301}, "outside"),
        ({"age": -301}, "outside"),
    ],
)
def test_verify_rejects_tampering_other_secrets_and_stale_timestamps(change: dict[str, Any], reason: str) -> None:
    """A changed body (even whitespace), the wrong secret, or a timestamp over 5 minutes away is refused."""
    now = 1_800_000_000
    sent = headers(now - change.get("age", 0), secret=change.get("secret", SECRET))
    with pytest.raises(SignatureError, match=reason):
        verify(SECRET, sent, change.get("body", BODY), now=now)


def test_verify_rejects_missing_or_malformed_headers_and_honours_tolerance() -> None:
    """No timestamp, a non-numeric one, or no signature: refused. The tolerance is the caller's."""
    now = 1_800_000_000
    with pytest.raises(SignatureError, match="timestamp"):
        verify(SECRET, {}, BODY, now=now)
    with pytest.raises(SignatureError, match="timestamp"):
        verify(SECRET, {"X-Depositwatch-Timestamp": "yesterday", "X-Depositwatch-Signature": "v1=00"}, BODY, now=now)
    with pytest.raises(SignatureError, match="missing signature"):
        verify(SECRET, {"X-Depositwatch-Timestamp": str(now)}, BODY, now=now)
    old = headers(now - 3000)
    with pytest.raises(SignatureError):
        verify(SECRET, old, BODY, now=now)
    assert verify(SECRET, old, BODY, now=now, tolerance=3600) == now - 3000


def test_several_signatures_during_a_secret_rotation() -> None:
    """A header carrying signatures under the old and the new secret verifies under either."""
    now = 1_800_000_000
    both = f"{sign('old', now, BODY)}, {sign('new', now, BODY)}"
    for secret in ("old", "new"):
        assert verify(secret, (str(now), both), BODY, now=now) == now
    with pytest.raises(SignatureError):
        verify("third", (str(now), both), BODY, now=now)


def _docs_receiver() -> Any:
    """The receiver example of docs/alerts.md, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    [code] = [b for b in blocks if "def verify_request" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["verify_request"]


def test_the_receiver_example_in_the_docs_agrees_with_the_sender() -> None:
    """The few lines of Python the docs give to receivers accept what we send and refuse tampering and
    timestamps older than five minutes."""
    verify_request = _docs_receiver()
    now = int(time.time())
    assert verify_request(SECRET.encode(), headers(now), BODY) is True
    assert verify_request(SECRET.encode(), headers(now), BODY + b"x") is False
    assert verify_request(b"wrong", headers(now), BODY) is False
    assert verify_request(SECRET.encode(), headers(now - 301), BODY) is False
    assert verify_request(SECRET.encode(), {"X-Depositwatch-Signature": "v1=00"}, BODY) is False
