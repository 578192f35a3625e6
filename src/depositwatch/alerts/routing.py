"""Which messages a sink wants: its kinds, minimum severity and payload filters (every sink is a `Routed`)."""

from __future__ import annotations

from depositwatch.config import SinkConfig
from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage
from depositwatch.models import SEVERITY_ORDER, Severity


def severity_rank(severity: str) -> int:
    """Order of a severity string; unknown ones rank as info."""
    try:
        return SEVERITY_ORDER[Severity(severity)]
    except ValueError:
        return 0


# Sinks that page someone: they never carry address-poisoning alerts, whatever their config says.
PAGING_SINKS = frozenset({"pagerduty", "opsgenie"})


def passes_payload_filters(config: SinkConfig, message: OutboxMessage) -> bool:
    """The sink's filters on the payload: `unlisted_tokens` (messages with `token_listed` false) and
    `poisoning` (messages with `poisoning` true; never for a paging sink)."""
    want_unlisted = config.unlisted_tokens
    want_poisoning = config.poisoning and config.type not in PAGING_SINKS
    if want_unlisted and want_poisoning:
        return True
    text = message.payload
    # Payloads are written compact by this program: a cheap look first, the parse only when it may matter.
    if '"token_listed":false' not in text and '"poisoning":true' not in text:
        return True
    payload = loads(text)
    if not isinstance(payload, dict):
        return True
    if not want_unlisted and payload.get("token_listed") is False:
        return False
    return want_poisoning or payload.get("poisoning") is not True


class Routed:
    """The name, config and filter every sink has (HttpSink adds its session)."""

    def __init__(self, config: SinkConfig) -> None:
        self.name = config.name
        self.config = config
        self._kinds = frozenset(config.kinds)
        self._min_rank = SEVERITY_ORDER[config.min_severity]

    def accepts(self, message: OutboxMessage) -> bool:
        """Kind in the sink's list (a retraction counts as its original kind), severity high enough, and
        the payload filters (`passes_payload_filters`)."""
        return (
            message.kind in self._kinds
            and severity_rank(message.severity) >= self._min_rank
            and passes_payload_filters(self.config, message)
        )
