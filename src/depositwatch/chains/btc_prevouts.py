"""Outputs paid to watched scripts before a replay's range and spent inside it (`replay --prevouts`),
from Bitcoin Core's `getblock HASH 3`: a replay that starts after the payment would miss the sweep; and
which outputs are still unspent at the node's tip (`gettxout`), so a parallel replay need not look for
their spends in later shards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Any

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.bitcoin import _HASH, MAX_HEIGHT
from depositwatch.chains.btc_rpc import btc_to_sats
from depositwatch.chains.rpc import Call, RpcError
from depositwatch.models import WatchedOutput

if TYPE_CHECKING:
    from depositwatch.chains.bitcoin import BitcoinSource


def _spent_outputs(block: Any, before: int, scripts: Container[bytes]) -> list[WatchedOutput]:
    """From a `getblock HASH 3` answer: the spent outputs paying `scripts` that were made before `before`."""
    found = []
    for tx in block["tx"]:
        for txin in tx["vin"]:
            if "coinbase" in txin:
                continue
            prevout = txin["prevout"]
            script = bytes.fromhex(prevout["scriptPubKey"]["hex"])
            height = prevout["height"]
            if not isinstance(height, int) or isinstance(height, bool) or not 0 <= height <= MAX_HEIGHT:
                raise ValueError(f"prevout height {height!r:.100}")
            if script not in scripts or height >= before:
                continue
            txid, vout = txin["txid"], txin["vout"]
            if not isinstance(txid, str) or not _HASH.match(txid) or not isinstance(vout, int) or not 0 <= vout < 2**32:
                raise ValueError(f"outpoint {txid!r}:{vout!r}")
            found.append(WatchedOutput(txid, vout, script, btc_to_sats(prevout["value"]), height))
    return found


async def prevouts_paying(
    source: BitcoinSource, start: int, stop: int, scripts: Container[bytes]
) -> list[WatchedOutput]:
    """Outputs paid to `scripts` before block `start` and spent in blocks `start` to `stop - 1`.

    A replay that starts after an output was paid to a revoked script never sees the payment, so
    the sweep would pass unnoticed; `getblock HASH 3` gives every input's spent output (`prevout`,
    from the node's undo data), and this returns those paying a watched script, for
    `store.add_watched_outputs(chain, outputs, scope)` before the replay's follower starts.
    Verbosity 3 is JSON and about 20 times slower than the raw block: worth it only on demand.
    """
    found: dict[tuple[str, int], WatchedOutput] = {}
    hashes = await source.hashes(start, stop)
    for low in range(0, len(hashes), source.config.batch_blocks):
        chunk = hashes[low : low + source.config.batch_blocks]
        blocks = await asyncio.gather(*(source.rpc.call("getblock", h, 3) for h in chunk))
        for hash_, block in zip(chunk, blocks, strict=True):
            try:
                for out in _spent_outputs(block, start, scripts):
                    found.setdefault((out.txid, out.vout), out)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BadNodeAnswer(
                    f"chain {source.name}: getblock {hash_} 3: malformed prevout data ({exc!r:.200})"
                ) from None
    return list(found.values())


GETTXOUT_BATCH = 200  # outputs asked about in one request


async def unspent_at_tip(source: BitcoinSource, outputs: Sequence[WatchedOutput]) -> list[WatchedOutput]:
    """Those of `outputs` that the node's UTXO set still holds (`gettxout TXID N false`: the confirmed
    set, not the mempool's view): an output unspent at the tip was spent in no block of a replay's range.

    Core answers null for an output that is spent (or was never made); anything else must be that very
    output: its value and script, else the answer is refused as the node's fault.
    """
    unspent: list[WatchedOutput] = []
    for low in range(0, len(outputs), GETTXOUT_BATCH):
        chunk = outputs[low : low + GETTXOUT_BATCH]
        calls = [Call("gettxout", (o.txid, o.vout, False), f"{o.txid}:{o.vout}") for o in chunk]
        for out, call, result in zip(chunk, calls, await source.rpc.batch_results(calls), strict=True):
            if isinstance(result, RpcError):
                raise result
            if result is None:
                continue
            try:
                script = bytes.fromhex(result["scriptPubKey"]["hex"])
                value = btc_to_sats(result["value"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadNodeAnswer(f"chain {source.name}: {call.label}: malformed answer ({exc!r:.200})") from None
            if script != out.script or value != out.amount:
                raise BadNodeAnswer(
                    f"chain {source.name}: {call.label}: the node describes another output"
                    f" ({value} sats to {script.hex():.80}, not {out.amount} to {out.script.hex():.80})"
                )
            unspent.append(out)
    return unspent
