"""structlog, set up once: JSON lines when not on a terminal, readable text otherwise."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from pydantic import SecretBytes, SecretStr

from depositwatch.config import REDACTED, redact_text

_SECRET_KEYS = re.compile(r"^(.*_)?(password|secret|token|routing_key|authorization|cookie)$", re.IGNORECASE)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never log a secret: mask secret-named fields; every other value goes through `redact_text`.

    It runs after the exception is rendered, so tracebacks are redacted too.
    """
    for key, value in list(event.items()):
        event[key] = REDACTED if _SECRET_KEYS.search(key) and key != "event" else _scrub(value)
    return event


def _scrub(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if depth < 8 and isinstance(value, list | tuple):
        return [_scrub(item, depth + 1) for item in value]
    if depth < 8 and isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEYS.search(str(k)) else _scrub(v, depth + 1) for k, v in value.items()}
    return redact_text(str(value))  # anything else would be rendered by its repr, unredacted


class _RedactingFormatter(logging.Formatter):
    """The standard library's records (aiohttp, asyncio) pass the same redaction as structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class _Stderr:
    """Whatever `sys.stderr` is at the time of writing (it may be replaced after set-up, as tests do)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the standard library's root logger to write to stderr."""
    stream = stream or _Stderr()
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    numeric = getattr(logging, level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=stream, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_RedactingFormatter(logging.BASIC_FORMAT))
