"""Followers wired as the daemon wires them, for the pipeline tests of every chain."""

from __future__ import annotations

from depositwatch.chains.base import ChainSource
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.follower import BlockHook, Follower
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
) -> Follower:
    """The chain's live follower (cursor `live:<name>`), the policy and settings from its config."""
    return Follower(
        source=source,
        store=store,
        registry=registry,
        policy=make_policy(config, AlertsConfig()),
        scope=Scope.live(),
        cursor_name=f"live:{config.name}",
        settings=make_settings(config, start_height=start),
        hook=hook,
    )


async def follow_to_tip(store: SqlStore, config: ChainConfig, start: int) -> Follower:
    """A live follower wired as the daemon wires it (`attach` with the store), drained to the tip."""
    registry = await AddressRegistry.load(store)
    source = make_source(config)
    hook = make_hook(config)
    attach(source, registry, hook, store)
    f = live_follower(source, store, config, registry, start, hook)
    await source.open()
    try:
        await f.start()
        while await f.step():
            pass
    finally:
        await source.close()
    return f
