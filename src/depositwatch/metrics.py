"""Prometheus metrics, on a registry of their own (one per Service, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    """Every metric the daemon exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.node_height = Gauge(
            "depositwatch_node_height", "Best block height the node reports", ["chain"], registry=r
        )
        self.processed_height = Gauge(
            "depositwatch_processed_height", "Height of the last committed block", ["chain"], registry=r
        )
        self.lag = Gauge("depositwatch_lag_blocks", "Node height minus processed height", ["chain"], registry=r)
        self.blocks = Counter("depositwatch_blocks_processed", "Blocks committed", ["chain"], registry=r)
        self.transfers = Counter("depositwatch_transfers_processed", "Transfers examined", ["chain"], registry=r)
        self.matches = Counter("depositwatch_matches", "Matches found", ["chain", "kind"], registry=r)
        self.reorgs = Counter("depositwatch_reorgs", "Reorgs handled", ["chain"], registry=r)
        self.rpc_errors = Counter("depositwatch_rpc_errors", "Failed node calls", ["chain"], registry=r)
        self.outbox = Gauge("depositwatch_outbox_messages", "Outbox messages by status", ["status"], registry=r)
        self.deliveries = Counter(
            "depositwatch_deliveries", "Delivery attempts by sink and outcome", ["sink", "outcome"], registry=r
        )
        self.registry_size = Gauge(
            "depositwatch_registry_addresses", "Watched addresses in memory", ["chain", "status"], registry=r
        )
        self.pruned = Counter("depositwatch_pruned_rows", "Rows removed by retention", ["table"], registry=r)
        for table in ("outbox", "matches"):
            self.pruned.labels(table)  # at 0 from the start, so alert rules see the series
        self.leader = Gauge("depositwatch_leader", "1 while this instance follows the chain", ["chain"], registry=r)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
