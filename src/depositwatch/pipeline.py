"""Builds the pieces of one chain's pipeline from its config: source, policy, follower settings, hook.

The daemon and replay both call these, so live following and replay share every part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from depositwatch.chains.base import ChainSource, TokenMetadataCache
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.follower import BlockHook, FollowerSettings
from depositwatch.registry import AddressRegistry
from depositwatch.store import ChainPolicy


def make_source(chain: ChainConfig) -> ChainSource:
    """The ChainSource for a configured chain."""
    if chain.kind == "evm":
        from depositwatch.chains.evm import EvmSource

        return EvmSource(chain)
    if chain.kind == "tron":
        from depositwatch.chains.tron import TronSource

        return TronSource.from_config(chain)
    from depositwatch.chains.bitcoin import BitcoinSource

    return BitcoinSource(chain)


@asynccontextmanager
async def opened_source(chain: ChainConfig) -> AsyncIterator[ChainSource]:
    """The chain's source, open inside the block and closed after it (a source that fails to open closes
    what it opened itself)."""
    source = make_source(chain)
    await source.open()
    try:
        yield source
    finally:
        await source.close()


def make_hook(chain: ChainConfig) -> BlockHook | None:
    """Chain-specific block work: Bitcoin keeps outputs that paid revoked scripts to see their sweeps."""
    if chain.kind == "bitcoin":
        from depositwatch.sweeps import OutputTracker

        return OutputTracker(chain.name, chain.native_asset_symbol, chain.network)
    return None


def attach(
    source: ChainSource, registry: AddressRegistry, hook: BlockHook | None, tokens: TokenMetadataCache | None = None
) -> None:
    """Let a source build only what matching needs, kept in step with the book as it reloads.

    Bitcoin decodes just the outputs paying watched scripts and the spends of watched outputs (20
    times faster on full blocks, same matches). An EVM source whose book is small enough for the
    node to filter (`EvmSource.log_filter_limit`) asks the node only for the logs of its keys, and, up to
    `filter_max_keys` keys on a node with trace_filter, only for its keys' transactions and traces
    (chains/evm_filtered.py); each reload
    sets the new keys before the new book is used, and the follower reads again any range fetched
    while the book changed. A larger book fetches everything: filtering it in the client saves
    little CPU and would hold a second copy of every key. Whatever the book's size, an EVM source is
    told the revoked keys (Transfer logs of any contract touching them, `EvmSource.set_revoked`; a TRON
    source reads them from the book) and keeps what unlisted contracts say about themselves in `tokens`
    (the store).
    """
    from depositwatch.chains.bitcoin import BitcoinSource
    from depositwatch.chains.evm import EvmSource
    from depositwatch.chains.tron import TronSource
    from depositwatch.sweeps import OutputTracker

    if isinstance(source, BitcoinSource) and isinstance(hook, OutputTracker):
        source.watch(registry, hook)
    elif isinstance(source, TronSource):
        source.watch(registry)  # reads the book at each fetch (its revoked keys too): reloads are seen
        source.set_metadata_cache(tokens)  # what unlisted TRC-20 contracts say about themselves
    elif isinstance(source, EvmSource):
        evm = source

        def narrow(incoming: AddressRegistry) -> None:
            book = incoming.book(evm.name)
            evm.set_log_filter(book.active | book.revoked.keys() if len(book) <= evm.log_filter_limit else None)
            evm.set_revoked(book.revoked.keys())

        evm.set_metadata_cache(tokens)
        narrow(registry)
        registry.before_swap(f"log-filter:{evm.name}", narrow)


def make_policy(chain: ChainConfig, alerts: AlertsConfig) -> ChainPolicy:
    """What the store needs to commit this chain's blocks."""
    return ChainPolicy(
        chain=chain.name,
        confirmations=chain.confirmations,
        chain_id=chain.chain_id,
        severities=dict(alerts.severity),
        keep_blocks=max(chain.reorg_depth + 10, 64),
        dust=dict(chain.dust),
        poisoning_alerts=chain.poisoning_alerts,
    )


def make_settings(
    chain: ChainConfig, *, start_height: int | None = None, stop_height: int | None = None
) -> FollowerSettings:
    """How the follower walks this chain."""
    return FollowerSettings(
        batch_blocks=chain.batch_blocks,
        reorg_depth=chain.reorg_depth,
        poll_interval=chain.poll_interval,
        start_height=chain.start_height if start_height is None else start_height,
        stop_height=stop_height,
    )
