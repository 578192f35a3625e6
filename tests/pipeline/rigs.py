"""Followers wired as the daemon wires them, for the pipeline tests of every chain."""

from __future__ import annotations

from depositwatch.alerts.routing import Routed
from depositwatch.chains.base import ChainSource
from depositwatch.config import AlertsConfig, ChainConfig, SinkConfig
from depositwatch.follower import BlockHook, Follower
from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage
from depositwatch.pipeline import attach, make_hook, make_policy, make_settings, make_source
from depositwatch.registry import AddressRegistry
from depositwatch.store import Scope, SqlStore


def live_follower(
    source: ChainSource,
    store: SqlStore,
    config: ChainConfig,
    registry: AddressRegistry,
    start: int | None,
    hook: BlockHook | None = None,
    *,
    stop_height: int | None = None,
) -> Follower:
    """The chain's live follower (cursor `live:<name>`), the policy and settings from its config."""
    return Follower(
        source=source,
        store=store,
        registry=registry,
        policy=make_policy(config, AlertsConfig()),
        scope=Scope.live(),
        cursor_name=f"live:{config.name}",
        settings=make_settings(config, start_height=start, stop_height=stop_height),
        hook=hook,
    )


async def follow_to_tip(store: SqlStore, config: ChainConfig, start: int) -> Follower:
    """A live follower wired as the daemon wires it (`attach` with the store), drained to the tip."""
    registry = await AddressRegistry.load(store)
    source = make_source(config)
    hook = make_hook(config)
    attach(source, registry, hook, store.tokens)
    f = live_follower(source, store, config, registry, start, hook)
    await source.open()
    try:
        await f.start()
        while await f.step():
            pass
    finally:
        await source.close()
    return f


async def assert_poisoning_flagged(
    store: SqlStore, poisoned: list[str], outgoing: str, real: str
) -> dict[str, OutboxMessage]:
    """The live matches are the `poisoned` transactions and the `real` one, only the first flagged
    `poisoning`; their alerts at severity info (`outgoing`'s a revoked_outgoing), the real one critical,
    and a paging sink takes the real one only. The outbox messages by txid."""
    rows = {r["txid"]: r for r in await store.matches(Scope.live())}
    assert set(rows) == {*poisoned, real}
    assert {t for t, r in rows.items() if r["poisoning"]} == set(poisoned)
    by_tx = {loads(m.payload)["txid"]: m for m in await store.outbox.messages()}
    assert {t: m.severity for t, m in by_tx.items()} == {**dict.fromkeys(poisoned, "info"), real: "critical"}
    assert loads(by_tx[outgoing].payload)["kind"] == "revoked_outgoing"
    pager = Routed(SinkConfig(name="pd", type="pagerduty", secret={"value": "k"}))  # type: ignore[arg-type]
    assert {t for t, m in by_tx.items() if pager.accepts(m)} == {real}
    return by_tx
