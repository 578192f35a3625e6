"""Prometheus metrics, on a registry of their own (one per Service, so tests can run several).

Names follow the Prometheus conventions: seconds for durations, `_total` on counters (added by the
client library), and every label set the daemon knows at start present from the start at 0, so an
alert rule such as `increase(depositwatch_reorgs_total[1h]) > 0` works before the first event.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from depositwatch import __version__
from depositwatch.models import MatchKind

CHAIN_STATES = ("starting", "standby", "following", "node-down", "failed")
OUTBOX_STATUSES = ("new", "pending", "delivered", "dead", "unrouted")
DELIVERY_OUTCOMES = ("delivered", "summarized", "retry", "rejected", "timeout", "dead", "error")
COMPONENTS = ("dispatcher", "address_book", "heartbeat", "reload")
# Detection to 2xx, from the outbox row's creation time, which the store keeps in whole seconds: a
# delivery within the same second lands in the first bucket. The upper buckets cover receiver outages.
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)


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
        self.chain_state = Gauge(
            "depositwatch_chain_state",
            "1 for the chain's current state, 0 for the others",
            ["chain", "state"],
            registry=r,
        )
        self.chain_restarts = Counter(
            "depositwatch_chain_restarts", "Times a chain failed and was restarted", ["chain"], registry=r
        )
        self.component_restarts = Counter(
            "depositwatch_component_restarts",
            "Times a component (dispatcher, mempool watcher, ...) failed and was restarted",
            ["component"],
            registry=r,
        )
        self.block_age = Gauge(
            "depositwatch_block_age_seconds",
            "Seconds since the timestamp of the newest block this instance processed",
            ["chain"],
            registry=r,
        )
        self.last_commit = Gauge(
            "depositwatch_last_commit_timestamp_seconds",
            "Unix time of the chain's last commit by any instance (the cursor's update time in the store)",
            ["chain"],
            registry=r,
        )
        self.since_last_commit = Gauge(
            "depositwatch_seconds_since_last_commit",
            "Seconds since the chain's last commit by any instance",
            ["chain"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "depositwatch_delivery_latency_seconds",
            "From detection (the message entering the outbox) to the receiver's 2xx",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.test_alerts = Counter(
            "depositwatch_test_alerts",
            "Test alerts (`alerts test`) by sink and outcome",
            ["sink", "outcome"],
            registry=r,
        )
        self.max_commit_age = Gauge(
            "depositwatch_max_commit_age_seconds",
            "The chain's configured bound on the time since its last commit (standby_max_commit_age)",
            ["chain"],
            registry=r,
        )
        self.build_info = Gauge("depositwatch_build_info", "Always 1; the version as a label", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        for status in OUTBOX_STATUSES:
            self.outbox.labels(status).set(0)
        for component in COMPONENTS:
            self.component_restarts.labels(component)

    def prepare(self, chains: Iterable[str], sinks: Iterable[str], components: Iterable[str] = ()) -> None:
        """Create every label set known at start, at 0."""
        for chain in chains:
            for counter in (self.blocks, self.transfers, self.reorgs, self.rpc_errors, self.chain_restarts):
                counter.labels(chain)
            for kind in MatchKind:
                self.matches.labels(chain, str(kind))
            self.set_chain_state(chain, "starting")
            self.leader.labels(chain).set(0)  # until the lease is taken: a rule sees "no leader" from the start
        for sink in sinks:
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(sink, outcome)
            for outcome in ("delivered", "dead"):
                self.test_alerts.labels(sink, outcome)
            self.delivery_latency.labels(sink)
        for component in components:
            self.component_restarts.labels(component)

    def set_bounds(self, chain: str, max_commit_age: float) -> None:
        """The chain's configured bounds, so alerting rules compare with the daemon's own settings."""
        self.max_commit_age.labels(chain).set(max_commit_age)

    def set_chain_state(self, chain: str, current: str) -> None:
        """One of CHAIN_STATES at 1, the others at 0."""
        for state in CHAIN_STATES:
            self.chain_state.labels(chain, state).set(1 if state == current else 0)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
