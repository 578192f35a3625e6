"""The node client's REST path (java-tron's HTTP API) against hostile answers: the same limits, typed
errors, failover and no-redirect rule as the JSON-RPC path, and the API key only to the configured URLs."""

from __future__ import annotations

import pytest

from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable
from depositwatch.chains.rpc import AnswerTooLarge, NodeRedirect
from depositwatch.config import Secret
from depositwatch.pipeline import make_source
from tests.chains.test_node_client import Recorder
from tests.pipeline.test_tron_pipeline import tron_config
from tests.proof.faultproxy import Fault, FaultProxy
from tests.tronnode.server import TronNodeServer

KEY = "tron-client-key-canary-90ab3c"


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault("status", status=503), NodeUnavailable, "HTTP 503"),
        (Fault("deep"), BadNodeAnswer, "not JSON"),
        (Fault("invalid_json"), BadNodeAnswer, "not JSON"),
        (Fault("endless"), AnswerTooLarge, "max_response_bytes"),
        (Fault("reset"), NodeUnavailable, "getnowblock"),
    ],
)
async def test_hostile_answers_are_typed_errors(fault: Fault, error: type[Exception], message: str) -> None:
    async with TronNodeServer() as node, FaultProxy(node.url) as proxy:
        source = make_source(tron_config(proxy.url, max_response_bytes=1_048_576))
        await source.open()
        try:
            proxy.set(fault)
            with pytest.raises(error, match=message):
                await source.tip()
            proxy.clear()
            assert (await source.tip()).height == node.chain.tip  # and it recovers
        finally:
            await source.close()


async def test_no_redirect_is_followed_and_the_key_goes_nowhere_else() -> None:
    async with TronNodeServer() as node, FaultProxy(node.url) as proxy, Recorder() as other:
        source = make_source(tron_config(proxy.url, api_key=Secret(value=KEY)))
        await source.open()
        try:
            proxy.set(Fault("redirect", status=307, location=other.url))
            with pytest.raises(NodeRedirect, match="HTTP 307") as refused:
                await source.tip()
            assert KEY not in str(refused.value)
        finally:
            await source.close()
    assert other.requests == []


async def test_the_key_is_sent_to_every_configured_url_and_failover_works() -> None:
    """Both configured providers get the key; the first failing, the second answers."""
    async with TronNodeServer(api_key=KEY) as first, TronNodeServer(first.chain, api_key=KEY) as second:
        source = make_source(tron_config(first.url, second.url, api_key=Secret(value=KEY)))
        await source.open()
        try:
            await first.stop()
            assert (await source.tip()).height == first.chain.tip
        finally:
            await source.close()
        assert second.calls["/wallet/getnowblock"] >= 1
