"""EVM receipts and call traces checked against a parsed block: each transaction's success, and the value
its internal calls moved. No I/O: the fetch paths ask the node, this module reads the answers.

A receipt's `status` 1 is success, 0 failure; a pre-Byzantium receipt carries `root` and no `status` and
counts as success. Receipts are matched to transactions by hash, and must name this block. A trace is
the call tracer's frame tree of one transaction: value moved by a CALL, CREATE, CREATE2 or SELFDESTRUCT
frame counts, outside any reverted frame. A malformed field raises `_Invalid`.
"""

from __future__ import annotations

from typing import Any

from depositwatch.chains.evm_decode import (
    MAX_VALUE,
    _address,
    _dict,
    _hash,
    _Invalid,
    _list,
    _Log,
    _optional_address,
    _quantity,
    _RawBlock,
    _same_block,
    _Watch,
)

_VALUE_FRAMES = frozenset({"CALL", "CREATE", "CREATE2", "SELFDESTRUCT"})


def _receipt_status(receipt: dict[str, Any]) -> bool:
    status = receipt.get("status")
    if status is None:
        if isinstance(receipt.get("root"), str):  # pre-Byzantium: no status, the state root instead
            return True
        raise _Invalid("the receipt has neither status nor root")
    if status == "0x1":
        return True
    if status == "0x0":
        return False
    raise _Invalid(f"receipt status is {status!r}")


def _internal_transfers(frame: dict[str, Any]) -> list[tuple[str, str, int]]:
    """Value-moving sub-calls of a successful call-tracer frame, depth first, reverted subtrees left out."""
    found: list[tuple[str, str, int]] = []
    if frame.get("error"):
        return found
    stack = list(reversed(_list(frame.get("calls") or [], "calls")))
    while stack:
        child = _dict(stack.pop(), "a call frame")
        if child.get("error"):
            continue
        kind = child.get("type")
        if not isinstance(kind, str):
            raise _Invalid(f"call frame type is {kind!r}")
        value = _quantity(child, "value", MAX_VALUE) if child.get("value") is not None else 0
        if value > 0 and kind.upper() in _VALUE_FRAMES:
            recipient = _optional_address(child, "to")
            if recipient is not None:
                found.append((_address(child, "from"), recipient, value))
        stack.extend(reversed(_list(child.get("calls") or [], "calls")))
    return found


def _needs_receipts(block: _RawBlock, logs: dict[int, list[_Log]], watch: _Watch | None) -> bool:
    return block.height in logs or any(
        tx.value > 0 and tx.to is not None and (watch is None or watch.tx(tx)) for tx in block.txs
    )


def _block_statuses(block: _RawBlock, result: Any) -> None:
    receipts = _list(result, "the receipts")
    if len(receipts) != len(block.txs):
        raise _Invalid(f"{len(receipts)} receipts for {len(block.txs)} transactions")
    known = {tx.hash for tx in block.txs}
    number_hex = hex(block.height)
    # Matched by hash, not position: some nodes have returned block receipts out of order.
    for item in receipts:
        receipt = _dict(item, "a receipt")
        tx_hash = receipt.get("transactionHash")
        if type(tx_hash) is not str or tx_hash not in known:  # a known hash is a valid one: checked once
            tx_hash = _hash(receipt, "transactionHash")
        if tx_hash not in known or tx_hash in block.statuses:
            raise _Invalid(f"receipt of {tx_hash}, which is not (or no longer) expected in the block")
        named_hash, named_number = receipt.get("blockHash", block.hash), receipt.get("blockNumber", number_hex)
        if named_hash != block.hash or named_number != number_hex:
            _same_block(receipt, f"the receipt of {tx_hash}", block.height, block.hash)
        block.statuses[tx_hash] = _receipt_status(receipt)


def _tx_status(block: _RawBlock, tx_hash: str, result: Any) -> None:
    if result is None:
        raise _Invalid(f"no receipt for {tx_hash} (the chain moved during the fetch?)")
    receipt = _dict(result, "the receipt")
    if _hash(receipt, "transactionHash") != tx_hash:
        raise _Invalid(f"receipt of {receipt.get('transactionHash')} where {tx_hash} was asked")
    if _hash(receipt, "blockHash") != block.hash:
        raise _Invalid(f"receipt of block {receipt.get('blockHash')}, but the block is {block.hash}")
    _same_block(receipt, f"the receipt of {tx_hash}", block.height, block.hash)
    block.statuses[tx_hash] = _receipt_status(receipt)


def _traces(block: _RawBlock, result: Any) -> None:
    traces = _list(result, "the traces")
    if len(traces) != len(block.txs):
        raise _Invalid(f"{len(traces)} traces for {len(block.txs)} transactions")
    for tx, item in zip(block.txs, traces, strict=True):
        entry = _dict(item, "a trace")
        if entry.get("txHash") is not None and _hash(entry, "txHash") != tx.hash:
            raise _Invalid(f"trace of {entry.get('txHash')} where {tx.hash} was expected")
        if entry.get("error") is not None:
            raise _Invalid(f"tracing {tx.hash} failed: {entry.get('error')!r:.200}")
        moved = _internal_transfers(_dict(entry.get("result"), "a trace result"))
        if moved:
            block.internal[tx.hash] = moved
