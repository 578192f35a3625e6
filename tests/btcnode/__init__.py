"""A Bitcoin Core stand-in for tests: a regtest chain of real blocks behind Core-shaped JSON-RPC and REST.

    async with BitcoinRegtestServer() as node:
        node.chain.mine(101)
        tx = node.chain.send([(p2wpkh(bytes(20)), 150_000)])
        node.chain.mine()
        ...  # talk to node.url with node.user / node.password

No Bitcoin Core binary is needed; `tests/devnet/test_btcnode.py` checks the stand-in against Core's rules.
"""

from .chain import (
    COIN,
    REGTEST_GENESIS_HASH,
    BlockRecord,
    ChainRuleError,
    Coin,
    RegtestChain,
    address_to_script,
    op_return,
    p2pk,
    p2pkh,
    p2sh,
    p2tr,
    p2wpkh,
    p2wsh,
    script_to_address,
    witness_program,
)
from .server import BitcoinRegtestServer, infer_descriptor, script_asm, solver

__all__ = [
    "COIN",
    "REGTEST_GENESIS_HASH",
    "BitcoinRegtestServer",
    "BlockRecord",
    "ChainRuleError",
    "Coin",
    "RegtestChain",
    "address_to_script",
    "infer_descriptor",
    "op_return",
    "p2pk",
    "p2pkh",
    "p2sh",
    "p2tr",
    "p2wpkh",
    "p2wsh",
    "script_asm",
    "script_to_address",
    "solver",
    "witness_program",
]
