"""The README's promises that code can check: its commands and its receiver snippet."""

from __future__ import annotations

import re
import time
from pathlib import Path

from depositwatch.alerts.signing import sign

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_first_lines_give_the_two_commands() -> None:
    """The README opens with the demo command and the test command; CI runs the latter."""
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    assert README.index("make demo") < 200
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci


def test_receiver_snippet_verifies_and_rejects() -> None:
    """The README's signature check accepts a signed body and rejects a tampered or old one."""
    code = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "def verify_request" in b)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    verify_request = namespace["verify_request"]
    body = b'{"id":"x","kind":"revoked_incoming"}'
    now = int(time.time())
    headers = {"X-Depositwatch-Timestamp": str(now), "X-Depositwatch-Signature": sign("s3cret", now, body)}
    assert verify_request(b"s3cret", headers, body)  # type: ignore[operator]
    assert not verify_request(b"s3cret", headers, body.replace(b"x", b"y"))  # type: ignore[operator]
    old = now - 3600
    stale = {"X-Depositwatch-Timestamp": str(old), "X-Depositwatch-Signature": sign("s3cret", old, body)}
    assert not verify_request(b"s3cret", stale, body)  # type: ignore[operator]
