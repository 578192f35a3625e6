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
    """Parse JSON; raises orjson.JSONDecodeError (a ValueError) on bad input.

    orjson refuses nesting deeper than 1,024 levels with that error: every node answer is parsed
    here, never by the standard library's `json`, whose recursion a deeply nested answer turns into a
    C stack overflow once the recursion limit has been raised (py_ecc, imported by web3, sets 100,000).
    """
    return orjson.loads(text)
