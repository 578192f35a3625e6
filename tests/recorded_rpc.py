"""A small JSON-RPC server that answers like an Ethereum node from recorded real mainnet data.

The data lives in the shared folder beside the repository (`../shared/realdata/eth/`, see its README):
block 17,173,049 from ethereum-etl's export files (the block and its receipts are rebuilt in the node's
JSON-RPC shape, hex quantities; the logs are the recorded `eth_getLogs` answer) and the pre-Byzantium
block 483,920 from raw recordings (`root` receipts, no `status`).

The server filters logs the way a node does (range, addresses, topic0), can pretend to lack
`eth_getBlockReceipts`, and lets a test tamper with any answer to play a broken or hostile node.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from aiohttp import web

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm import EvmSource
from depositwatch.config import ChainConfig
from tests.util import serve

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
MAINNET_BLOCK = 17_173_049
OLD_BLOCK = 483_920


def realdata(*parts: str) -> Path:
    """A path in the shared real-data folder; fails the test clearly when the folder is missing."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"real chain data not found at {path}: the tests expect the shared/ folder beside the "
            "repository (CI clones it there); see shared/realdata/README.md"
        )
    return path


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _result(path: Path) -> Any:
    return json.loads(path.read_text())["result"]


@dataclass
class RecordedChain:
    """What the fake node knows: full blocks, their receipts, and every log."""

    chain_id: int
    blocks: dict[int, dict[str, Any]]
    receipts: dict[int, list[dict[str, Any]]]
    logs: list[dict[str, Any]]
    tx_receipts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for items in self.receipts.values():
            for receipt in items:
                self.tx_receipts.setdefault(receipt["transactionHash"], receipt)

    @property
    def tip(self) -> int:
        return max(self.blocks)

    def add_empty_blocks(self, count: int) -> None:
        """Empty blocks on top of the tip (their hashes are made up), to have ranges longer than one."""
        for _ in range(count):
            parent = self.blocks[self.tip]
            number = self.tip + 1
            self.blocks[number] = {
                "number": hex(number),
                "hash": "0x" + f"{number:064x}",
                "parentHash": parent["hash"],
                "timestamp": hex(int(parent["timestamp"], 16) + 12),
                "transactions": [],
            }
            self.receipts[number] = []


def etl_block(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """A block rebuilt in the node's JSON-RPC shape from ethereum-etl's export files in `folder`
    (`expected_blocks.json`, `expected_transactions.json` and the recorded `eth_getLogs` answer of the
    block): the block with its full transactions, its receipts (each with its transaction's logs, the
    same objects as in the list of logs) and the logs, every value as recorded. Also the source of
    `bench/eth_realnode.py`'s relinked copies."""
    (block,) = json_lines(folder / "expected_blocks.json")
    txs = sorted(json_lines(folder / "expected_transactions.json"), key=lambda t: t["transaction_index"])
    number = block["number"]
    logs = _result(folder / f"eth_getLogs_fromBlock_{hex(number)}_toBlock_{hex(number)}.json")
    common = {"blockHash": block["hash"], "blockNumber": hex(number)}
    full_txs = []
    receipts = []
    for tx in txs:
        item = {
            **common,
            "hash": tx["hash"],
            "from": tx["from_address"],
            "to": tx["to_address"],
            "value": hex(tx["value"]),
            "input": tx["input"],
            "nonce": hex(tx["nonce"]),
            "gas": hex(tx["gas"]),
            "gasPrice": hex(tx["gas_price"]),
            "transactionIndex": hex(tx["transaction_index"]),
            "type": hex(tx["transaction_type"]),
        }
        if tx["max_fee_per_gas"] is not None:
            item["maxFeePerGas"] = hex(tx["max_fee_per_gas"])
            item["maxPriorityFeePerGas"] = hex(tx["max_priority_fee_per_gas"])
        full_txs.append(item)
        receipt = {
            **common,
            "transactionHash": tx["hash"],
            "transactionIndex": hex(tx["transaction_index"]),
            "from": tx["from_address"],
            "to": tx["to_address"],
            "contractAddress": tx["receipt_contract_address"],
            "cumulativeGasUsed": hex(tx["receipt_cumulative_gas_used"]),
            "gasUsed": hex(tx["receipt_gas_used"]),
            "effectiveGasPrice": hex(tx["receipt_effective_gas_price"]),
            "type": hex(tx["transaction_type"]),
            "logs": [entry for entry in logs if entry["transactionHash"] == tx["hash"]],
        }
        if tx["receipt_status"] is not None:
            receipt["status"] = hex(tx["receipt_status"])
        if tx["receipt_root"] is not None:
            receipt["root"] = tx["receipt_root"]
        receipts.append(receipt)
    raw_block = {
        "number": hex(number),
        "hash": block["hash"],
        "parentHash": block["parent_hash"],
        "nonce": block["nonce"],
        "sha3Uncles": block["sha3_uncles"],
        "logsBloom": block["logs_bloom"],
        "transactionsRoot": block["transactions_root"],
        "stateRoot": block["state_root"],
        "receiptsRoot": block["receipts_root"],
        "miner": block["miner"],
        "difficulty": hex(block["difficulty"]),
        "totalDifficulty": hex(block["total_difficulty"]),
        "size": hex(block["size"]),
        "extraData": block["extra_data"],
        "gasLimit": hex(block["gas_limit"]),
        "gasUsed": hex(block["gas_used"]),
        "timestamp": hex(block["timestamp"]),
        "baseFeePerGas": hex(block["base_fee_per_gas"]),
        "withdrawalsRoot": block["withdrawals_root"],
        "withdrawals": [
            {
                "index": hex(w["index"]),
                "validatorIndex": hex(w["validator_index"]),
                "address": w["address"],
                "amount": hex(w["amount"]),
            }
            for w in block["withdrawals"]
        ],
        "uncles": [],
        "transactions": full_txs,
    }
    return raw_block, receipts, logs


def mainnet_17173049() -> RecordedChain:
    """Block 17,173,049 rebuilt from ethereum-etl's export files, with the recorded eth_getLogs answer."""
    block, receipts, logs = etl_block(realdata("eth", "mainnet_17173049"))
    number = int(block["number"], 16)
    return RecordedChain(chain_id=1, blocks={number: block}, receipts={number: receipts}, logs=logs)


def block_483920() -> RecordedChain:
    """The pre-Byzantium block 483,920 from raw recordings: `root` receipts without `status`."""
    blocks_dir = realdata("eth", "test_export_blocks_job", "block_with_logs")
    block = _result(blocks_dir / "web3_response.eth_getBlockByNumber_0x76250_true.json")
    receipts = _result(
        realdata("eth", "test_export_block_receipts_job", "receipts_with_logs")
        / "web3_response.eth_getBlockReceipts_483920.json"
    )
    tx_receipts = {}
    for path in sorted(
        realdata("eth", "test_export_receipts_job", "receipts_with_logs").glob(
            "web3_response.eth_getTransactionReceipt_*.json"
        )
    ):
        receipt = _result(path)
        tx_receipts[receipt["transactionHash"]] = receipt
    logs = _result(
        realdata("eth", "test_export_token_transfers_job", "block_with_transfers")
        / "web3_response.eth_getFilterLogs_0x0.json"
    )
    return RecordedChain(
        chain_id=1, blocks={OLD_BLOCK: block}, receipts={OLD_BLOCK: receipts}, logs=logs, tx_receipts=tx_receipts
    )


class RpcError(Exception):
    """Raised by a tamper hook (or the server) to answer a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# tamper(method, params, result) -> result: change an answer, or raise RpcError
Tamper = Callable[[str, list[Any], Any], Any]


class RecordedNode:
    """An aiohttp JSON-RPC server on 127.0.0.1 answering from a RecordedChain."""

    def __init__(
        self,
        chain: RecordedChain,
        *,
        block_receipts: bool = True,
        tamper: Tamper | None = None,
        http_status: int | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        self.chain = chain
        self.block_receipts = block_receipts
        self.tamper = tamper
        self.http_status = http_status
        self.raw_body = raw_body
        self.calls: list[tuple[str, list[Any]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> RecordedNode:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    async def _handle(self, request: web.Request) -> web.Response:
        if self.http_status is not None:
            return web.Response(status=self.http_status, text="unavailable")
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, content_type="application/json")
        payload = await request.json()
        if isinstance(payload, list):
            return web.json_response([self._one(item) for item in payload])
        return web.json_response(self._one(payload))

    def _one(self, request: dict[str, Any]) -> dict[str, Any]:
        method, params = request["method"], request.get("params", [])
        self.calls.append((method, params))
        envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        try:
            result = self._answer(method, params)
            if self.tamper is not None:
                result = self.tamper(method, params, result)
        except RpcError as exc:
            envelope["error"] = {"code": exc.code, "message": exc.message}
            return envelope
        envelope["result"] = result
        return envelope

    def _number(self, tag: str) -> int:
        return self.chain.tip if tag in ("latest", "safe", "finalized", "pending") else int(tag, 16)

    def _answer(self, method: str, params: list[Any]) -> Any:
        chain = self.chain
        if method == "eth_chainId":
            return hex(chain.chain_id)
        if method == "eth_blockNumber":
            return hex(chain.tip)
        if method == "eth_getBlockByNumber":
            block = chain.blocks.get(self._number(params[0]))
            if block is None:
                return None
            if params[1]:
                return json.loads(json.dumps(block))
            return {**block, "transactions": [tx["hash"] for tx in block["transactions"]]}
        if method == "eth_getBlockReceipts" and self.block_receipts:
            receipts = chain.receipts.get(self._number(params[0]))
            return None if receipts is None else json.loads(json.dumps(receipts))
        if method == "eth_getTransactionReceipt":
            receipt = chain.tx_receipts.get(params[0])
            return None if receipt is None else json.loads(json.dumps(receipt))
        if method == "eth_getLogs":
            return self._logs(params[0])
        raise RpcError(-32601, f"the method {method} does not exist/is not available")

    def _logs(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        first, last = self._number(query["fromBlock"]), self._number(query["toBlock"])
        addresses = query.get("address")
        if isinstance(addresses, str):
            addresses = [addresses]
        wanted = {a.lower() for a in addresses} if addresses else None
        topics = query.get("topics") or []
        topic0 = topics[0] if topics else None
        found = []
        for entry in self.chain.logs:
            if not first <= int(entry["blockNumber"], 16) <= last:
                continue
            if wanted is not None and entry["address"].lower() not in wanted:
                continue
            if topic0 is not None and (not entry["topics"] or entry["topics"][0] != topic0):
                continue
            found.append(json.loads(json.dumps(entry)))
        return found


async def assert_fetch_refused(
    config_for: Callable[[str], ChainConfig], tamper: Tamper, method: str, detail: str
) -> None:
    """An EVM source on the recorded mainnet block opened, then the node turned bad by `tamper` (after
    the start-up checks): the block's fetch is refused, the message naming `method`, the block and `detail`."""
    async with RecordedNode(mainnet_17173049()) as node:
        source = EvmSource(config_for(node.url))
        await source.open()
        node.tamper = tamper
        try:
            with pytest.raises(BadNodeAnswer) as caught:
                await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
        finally:
            await source.close()
    message = str(caught.value)
    assert method in message
    assert str(MAINNET_BLOCK) in message
    assert detail in message
