"""Which messages a sink that is not an HTTP sink wants: its kinds and minimum severity."""

from __future__ import annotations

from depositwatch.alerts.sinks import passes_payload_filters, severity_rank
from depositwatch.config import SinkConfig
from depositwatch.messages import OutboxMessage
from depositwatch.models import SEVERITY_ORDER


class Routed:
    """The name, config and filter every sink has (HttpSink has its own, with its session)."""

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
