"""A local EVM development node (foundry's anvil) and the test contracts, for tests, the demo and benchmarks.

Four modules of one job each: `process` (finding, starting and stopping the node), `keys` (its dev
accounts), `control` (JSON-RPC, mining, snapshots, reorgs, impersonation, sending transactions) and
`contracts` (deploying and driving the test contracts).

Install the node with `bash scripts/install-anvil.sh`; `Anvil` finds it in the project's `.tools/`
folder, through $DEPOSITWATCH_ANVIL, or on PATH.
"""

from depositwatch.devnet.contracts import (
    call_data,
    deploy_nft,
    deploy_token,
    failing_transfer,
    forward_eth,
    load_artefact,
    mint_nft,
    mint_token,
    odd_transfer_log,
    send_token,
    send_token_many,
    transfer_nft,
)
from depositwatch.devnet.control import (
    AnvilError,
    impersonate,
    mine,
    reorg,
    revert,
    rpc,
    send_eth,
    send_transaction,
    set_automine,
    set_balance,
    snapshot,
    stop_impersonating,
    wait_receipt,
)
from depositwatch.devnet.keys import DEFAULT_MNEMONIC, DevAccount
from depositwatch.devnet.process import ANVIL_ENV, Anvil, AnvilNotFound, find_anvil

__all__ = [
    "ANVIL_ENV",
    "DEFAULT_MNEMONIC",
    "Anvil",
    "AnvilError",
    "AnvilNotFound",
    "DevAccount",
    "call_data",
    "deploy_nft",
    "deploy_token",
    "failing_transfer",
    "find_anvil",
    "forward_eth",
    "impersonate",
    "load_artefact",
    "mine",
    "mint_nft",
    "mint_token",
    "odd_transfer_log",
    "reorg",
    "revert",
    "rpc",
    "send_eth",
    "send_token",
    "send_token_many",
    "send_transaction",
    "set_automine",
    "set_balance",
    "snapshot",
    "stop_impersonating",
    "transfer_nft",
    "wait_receipt",
]
