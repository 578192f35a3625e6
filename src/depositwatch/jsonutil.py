"""Fast, exact JSON (orjson) for payloads, replay output and RPC bodies."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any, *, sort_keys: bool = False, indent: bool = False) -> str:
    """Compact (or indented) JSON text; bytes are not accepted (hex them first)."""
    option = (orjson.OPT_SORT_KEYS if sort_keys else 0) | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, option=option).decode()


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as bytes, for HTTP bodies."""
    return orjson.dumps(value)


def loads(text: str | bytes) -> Any:
    """Parse JSON; raises orjson.JSONDecodeError (a ValueError) on bad input."""
    return orjson.loads(text)
