"""Checked readers of a TRON node's JSON fields: objects, lists, integers, hex and accounts.

A field that is not what it must be is a `BadNodeAnswer` naming the block and the field; the readers
without a name (`_hex_of`) return None instead, for the fast paths that fall back to a named reader.
"""

from __future__ import annotations

from typing import Any

from depositwatch.addresses.common import AddressError
from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains.base import BadNodeAnswer

_INT64_MAX = 2**63 - 1
_BASE58_LENGTH = 34


def _fail(height: int, what: str) -> BadNodeAnswer:
    return BadNodeAnswer(f"TRON block {height}: {what}")


def _dict(value: Any, height: int, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(height, f"{what} is not an object")
    return value


def _list(value: Any, height: int, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(height, f"{what} is not a list")
    return value


def _int(value: Any, height: int, what: str, maximum: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise _fail(height, f"{what} is not an integer in 0..{maximum}")
    return value


def _hex(value: Any, height: int, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise _fail(height, f"{what} is not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _fail(height, f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise _fail(height, f"{what} is {len(raw)} bytes, expected {size}")
    return raw


def _hex_of(value: Any, size: int) -> bytes | None:
    """`_hex` with its size, without a name: None where `_hex` would raise."""
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        return None
    return raw if len(raw) == size else None


def _account(value: Any, height: int, what: str) -> bytes:
    """A 21-byte node account (`41` + 20 bytes) to its 20 bytes."""
    raw = _hex(value, height, what, 21)
    if raw[0] != 0x41:
        raise _fail(height, f"{what} has version byte 0x{raw[0]:02x}, expected 0x41")
    return raw[1:]


def _node_account(value: Any, height: int, what: str) -> bytes:
    """An account as either API form gives it: `41`-hex (visible=false) or base58 (visible=true), as 21 bytes."""
    if isinstance(value, str) and len(value) == _BASE58_LENGTH and value.startswith("T"):
        try:
            return b"\x41" + parse_tron_address(value).key
        except AddressError:
            raise _fail(height, f"{what} is not a TRON address") from None
    return _hex(value, height, what)
