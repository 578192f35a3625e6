"""The EVM source's JSON-RPC plumbing: its view of the shared node client (`chains/rpc.py`), what a node's
errors mean (method unsupported, answer too large), the client built from a chain's config, and running
requests side by side.

Every call goes through the shared node client (aiohttp + orjson, batched, failover across every URL of
`rpc_urls`, size cap, no redirects), not web3 (see `chains/evm.py` for why). A JSON-RPC error, or a
whole batch refused, becomes `BadNodeAnswer` naming the call; a connection failure stays `NodeUnavailable`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable
from depositwatch.chains.rpc import Call, NodeClient, RpcAuthError, RpcError, chain_client
from depositwatch.config import ChainConfig

CALL_TRACER = {"tracer": "callTracer"}
_GETLOGS_TOO_LARGE = re.compile(
    r"more than|too many|limit|exceed|range|too large|response size|timeout|timed out", re.IGNORECASE
)
_NOT_SUPPORTED = re.compile(
    r"method\b.*\b(not (found|supported|available|allowed|enabled)|does not exist|unsupported|disabled)"
    r"|(unsupported|unknown) method|not (supported|implemented)",
    re.IGNORECASE,
)

T = TypeVar("T")


# --- JSON-RPC through the shared node client --------------------------------------------------------


class _EvmRpc:
    """The EVM source's view of the shared `NodeClient`: per-call (result, error) pairs, errors as BadNodeAnswer."""

    def __init__(self, chain: str, client: NodeClient) -> None:
        self.chain = chain
        self.client = client

    async def replies(self, calls: Sequence[Call]) -> list[tuple[Any, RpcError | None]]:
        """(result, error) per call, in order; raise on transport or envelope problems only."""
        if not calls:
            return []
        try:
            if len(calls) == 1:  # a single call goes as a single request, not a batch of one
                call = calls[0]
                try:
                    return [(await self.client.call(call.method, *call.params, what=call.what), None)]
                except RpcError as exc:
                    if isinstance(exc, NodeUnavailable):
                        raise
                    return [(None, exc)]
            results = await self.client.batch_results(calls)
        except RpcError as exc:  # the node refused the whole batch
            if isinstance(exc, NodeUnavailable):
                raise
            raise BadNodeAnswer(f"chain {self.chain}: the node refused {exc}") from None
        except RpcAuthError as exc:
            raise BadNodeAnswer(str(exc)) from None
        return [(None, r) if isinstance(r, RpcError) else (r, None) for r in results]

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Results in order; any JSON-RPC error inside the batch raises BadNodeAnswer naming its call."""
        results = []
        for call, (result, error) in zip(calls, await self.replies(calls), strict=True):
            if error is not None:
                raise BadNodeAnswer(f"chain {self.chain}: {call.label}: {_rpc_error(error)}")
            results.append(result)
        return results

    async def call(self, method: str, params: Sequence[Any], what: str) -> Any:
        """One call; a JSON-RPC error raises BadNodeAnswer."""
        return (await self.batch([Call(method, tuple(params), what)]))[0]


def _rpc_error(error: RpcError) -> str:
    return f"error {error.code}: {error.message[:300]}"


def _unsupported(error: RpcError) -> bool:
    """Whether a JSON-RPC error says the method does not exist or is switched off."""
    return error.code in (-32601, -32004) or bool(_NOT_SUPPORTED.search(error.message))


async def _run_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _chunks(start: int, stop: int, size: int) -> list[range]:
    return [range(low, min(low + size, stop)) for low in range(start, stop, size)]


def _client(config: ChainConfig) -> NodeClient:
    """The shared node client for a configured EVM chain, with its user and password if any."""
    password = config.rpc_password.resolve().get_secret_value() if config.rpc_password is not None else None
    return chain_client(config, "evm", user=config.rpc_user if password is not None else None, password=password)
