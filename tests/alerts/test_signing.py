"""Webhook signatures: Standard Webhooks as the `standardwebhooks` package checks them, the project's own
verifier (used by the demo) against the package, and the receiver examples of the docs run as written."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.signing import (
    SecretFormatError,
    SignatureError,
    decode_secret,
    encode_secret,
    sign,
    signed_headers,
    verify,
)
from depositwatch.config import Secret, SinkConfig
from depositwatch.models import AlertEvent
from tests.alerts.test_sinks import message
from tests.receivers import WEBHOOK_SECRET

KEY = decode_secret(WEBHOOK_SECRET)
BODY = b'{"id":"abc","idempotency_key":"abc:1","amount":"5000000"}'
DOCS = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def test_signature_is_what_the_standardwebhooks_package_computes() -> None:
    """`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`, exactly as the library signs it."""
    when = datetime.fromtimestamp(1_700_000_000, UTC)
    assert sign(KEY, "abc:1", 1_700_000_000, BODY) == Webhook(WEBHOOK_SECRET).sign("abc:1", when, BODY)
    headers = signed_headers([KEY], "abc:1", int(time.time()), BODY)
    assert Webhook(WEBHOOK_SECRET).verify(BODY, headers) == json.loads(BODY)


def test_secret_form_round_trips_and_matches_the_package() -> None:
    """`whsec_<base64>` decodes to the key the library uses; unpadded base64 is accepted like it is."""
    key = bytes(range(100, 130))
    assert decode_secret(encode_secret(key)) == key
    assert decode_secret(encode_secret(key).rstrip("=")) == key
    when = datetime.fromtimestamp(1_700_000_000, UTC)
    assert Webhook(encode_secret(key)).sign("x", when, b"{}") == sign(key, "x", 1_700_000_000, b"{}")


@pytest.mark.parametrize(
    "text", ["", "whsec_", "whsec_" + base64.b64encode(b"k" * 23).decode(), "whsec_@@@@", "raw-secret-" * 4]
)
def test_unusable_secrets_are_refused_without_showing_them(text: str) -> None:
    """Empty, short, not base64, or without the prefix: SecretFormatError whose text never holds the value."""
    with pytest.raises(SecretFormatError) as caught:
        decode_secret(text)
    assert not text.strip() or text.removeprefix("whsec_") not in str(caught.value) or text == "whsec_"


def test_own_verify_accepts_deliveries_and_returns_the_id() -> None:
    """What we send verifies under our verifier too; header names are case-insensitive."""
    now = int(time.time())
    headers = signed_headers([KEY], "abc:1", now, BODY)
    assert verify(KEY, headers, BODY) == "abc:1"
    assert verify([b"x" * 32, KEY], {k.upper(): v for k, v in headers.items()}, BODY) == "abc:1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": BODY.replace(b"5000000", b"9000000")}, "no signature matches"),
        ({"body": BODY + b" "}, "no signature matches"),
        ({"key": b"another-key-of-24-bytes-or-more"}, "no signature matches"),
        ({"id": "abc:2"}, "no signature matches"),
        ({"age": 301}, "outside"),
        ({"age": -301}, "outside"),
    ],
)
def test_own_verify_rejects_what_the_package_rejects(change: dict[str, Any], reason: str) -> None:
    """A changed body, key, id (the replay under a new key) or a stale timestamp: both verifiers refuse."""
    now = int(time.time())
    headers = signed_headers([change.get("key", KEY)], "abc:1", now - change.get("age", 0), BODY)
    headers["webhook-id"] = change.get("id", "abc:1")
    body = change.get("body", BODY)
    with pytest.raises(SignatureError, match=reason):
        verify(KEY, headers, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRET).verify(body, headers)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "Webhook-Signature", "x"]),
        st.text(max_size=5000),
    ),
    st.binary(max_size=64),
)
def test_own_verify_raises_only_signature_error_on_garbage(headers: dict[str, str], body: bytes) -> None:
    """Any header text, however long or odd: SignatureError, never another exception."""
    with pytest.raises(SignatureError):
        verify(KEY, headers, body)


def test_rotation_header_verifies_under_each_secret() -> None:
    """Two keys: two space-separated signatures; each key alone verifies (library and own verifier)."""
    old, new = b"o" * 32, b"n" * 32
    headers = signed_headers([old, new], "abc:1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for key in (old, new):
        assert verify(key, headers, BODY) == "abc:1"
        Webhook(encode_secret(key)).verify(BODY, headers)
    with pytest.raises(SignatureError):
        verify(b"t" * 32, headers, BODY)


# The receiver examples of the docs, run as written ------------------------------------------------


def python_blocks(text: str, marker: str) -> list[str]:
    """The ```python blocks of a document that define a `receive` handler and contain `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return [b for b in blocks if "async def receive" in b and marker in b]


GARBAGE_HEADERS: list[dict[str, str]] = [
    {},
    {"webhook-id": "x"},
    {"webhook-id": "x", "webhook-timestamp": "yesterday", "webhook-signature": "v1,AAAA"},
    {"webhook-id": "x", "webhook-timestamp": "9" * 400, "webhook-signature": "v1,AAAA"},
    {"webhook-id": "x", "webhook-timestamp": "-1", "webhook-signature": "v1,AAAA"},
    {"webhook-id": "x", "webhook-timestamp": "١٢٣", "webhook-signature": "v1,AAAA"},
    {"webhook-id": "ü" * 300, "webhook-timestamp": "1", "webhook-signature": "v1,ü"},
    {"webhook-id": "x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,ü ä" * 500},
    {"webhook-id": "x", "webhook-timestamp": str(int(time.time())), "webhook-signature": ""},
    {"webhook-id": "x", "webhook-timestamp": "1e400", "webhook-signature": "v1,=="},
]


async def check_documented_receiver(code: str, source: str) -> None:
    """Serve the example's `receive` on loopback: it stores each real delivery (signed by a real sink)
    once, and answers 400, never 500, to garbage headers, a wrong key, a stale timestamp and a replay
    under another id."""
    stored: list[tuple[str, Any]] = []
    namespace: dict[str, Any] = {"SECRET": WEBHOOK_SECRET, "store_once": lambda key, doc: stored.append((key, doc))}
    exec(compile(code, source, "exec"), namespace)
    app = web.Application()
    app.router.add_post("/hook", namespace["receive"])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        sink = build_sinks([SinkConfig(name="hook", type="webhook", url=url, secret=Secret(value=WEBHOOK_SECRET))])[0]
        sent = [message(rev=1), message(AlertEvent.CONFIRMED, rev=2)]
        for one in sent:
            await sink.send(one)  # raises unless answered 2xx
        await sink.close()
        assert [key for key, _ in stored] == [m.idempotency_key for m in sent]
        assert [doc for _, doc in stored] == [json.loads(m.payload) for m in sent]
        now = int(time.time())
        forged: list[dict[str, str]] = [
            signed_headers([b"w" * 32], "abc:1", now, BODY),
            signed_headers([KEY], "abc:1", now - 3600, BODY),
            {**signed_headers([KEY], "abc:1", now, BODY), "webhook-id": "abc:2"},
            *GARBAGE_HEADERS,
        ]
        async with aiohttp.ClientSession() as session:
            for headers in forged:
                async with session.post(url, data=BODY, headers=headers) as resp:
                    assert resp.status == 400, (headers, resp.status)
        assert len(stored) == len(sent)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("marker", ["standardwebhooks", "def verify_request"])
async def test_the_receiver_examples_in_the_docs(marker: str) -> None:
    """docs/alerts.md: the library example and the hand-written fallback, as written."""
    [code] = python_blocks(DOCS.read_text(), marker)
    await check_documented_receiver(code, str(DOCS))


def test_verify_request_refuses_garbage_without_raising() -> None:
    """The fallback's `verify_request` itself: False for garbage, True for a real signature."""
    [code] = python_blocks(DOCS.read_text(), "def verify_request")
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    verify_request: Callable[..., bool] = namespace["verify_request"]
    for headers in GARBAGE_HEADERS:
        assert verify_request(WEBHOOK_SECRET, headers, BODY) is False
    assert verify_request(WEBHOOK_SECRET, signed_headers([KEY], "abc:1", int(time.time()), BODY), BODY) is True


def test_the_documented_secret_commands_make_usable_secrets() -> None:
    """docs/alerts.md and the README: `echo "whsec_$(openssl rand -base64 32)"` makes a 32-byte key, and
    `whsec_$(printf %s "$OLD" | base64 -w0)` keeps an old raw secret's key bytes."""
    docs = DOCS.read_text() + (DOCS.parent.parent / "README.md").read_text()
    make = 'echo "whsec_$(openssl rand -base64 32)"'
    convert = 'whsec_$(printf %s "$OLD" | base64 -w0)'
    assert make in docs and convert in docs
    made = subprocess.run(["bash", "-c", make], capture_output=True, text=True, check=True).stdout.strip()
    assert len(decode_secret(made)) == 32
    old = "an-old-raw-secret-of-more-than-24-bytes"
    converted = subprocess.run(
        ["bash", "-c", f'echo "{convert}"'], capture_output=True, text=True, check=True, env={"OLD": old}
    ).stdout.strip()
    assert decode_secret(converted) == old.encode()
    with pytest.raises(SecretFormatError, match=r"whsec_\$\(printf %s \"\$OLD\" \| base64 -w0\)"):
        decode_secret(old)  # the refusal gives the same conversion
