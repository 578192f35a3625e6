"""A regtest chain made of real serialized blocks, for a Bitcoin Core stand-in.

Every block is built with `depositwatch.chains.btc_serialize` the way Bitcoin Core's miner builds it:
coinbase with the BIP34 height (`<height> OP_0`), subsidy plus fees, the BIP141 witness commitment
and its 32-byte reserved value; valid merkle root; a nonce ground until the hash meets the regtest
target (bits 0x207fffff, about one try in two). The genesis block is regtest's own, rebuilt from
its fields. Transactions are well formed and spend real outpoints, with placeholder signatures
(nothing checks them). The UTXO set, undo data, mempool and txindex follow Core's rules where a
watcher can see them: coinbase maturity, outputs starting with OP_RETURN never enter the UTXO set,
`invalidate` returns the disconnected transactions to the mempool, the txindex keeps entries of
blocks that left the chain, and stale blocks stay readable.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bip_utils import Base58Decoder, Base58Encoder, SegwitBech32Decoder, SegwitBech32Encoder

from depositwatch.chains.btc_serialize import make_tx, serialize_tx, write_varint
from depositwatch.chains.btc_wire import (
    COINBASE_VOUT,
    NULL_TXID,
    WITNESS_COMMITMENT_HEADER,
    BlockHeader,
    Tx,
    TxIn,
    TxOut,
    decode_header,
    merkle_root,
    sha256d,
    witness_commitment,
)

COIN = 100_000_000
COINBASE_MATURITY = 100
HALVING_INTERVAL = 150  # regtest
REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000  # versionbits top bits, what Core's regtest miner writes


def block_version(height: int) -> int:
    """What Core 25's regtest miner writes: the versionbits top bits, plus bit 28 while the always
    signalled `testdummy` deployment (start 0, period 144, threshold 108) is started or locked in,
    that is for heights 144 to 431."""
    return BLOCK_VERSION | (1 << 28 if 144 <= height < 432 else 0)


MAX_TIP_AGE = 24 * 60 * 60  # Core's -maxtipage: a tip older than this keeps the node in IBD
REGTEST_GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
GENESIS_MERKLE_ROOT = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"

# ---------------------------------------------------------------------------------------------
# Scripts


def push_data(data: bytes) -> bytes:
    """A minimal push of `data` (as CScript << data)."""
    n = len(data)
    if n < 0x4C:
        return bytes((n,)) + data
    if n <= 0xFF:
        return b"\x4c" + bytes((n,)) + data
    if n <= 0xFFFF:
        return b"\x4d" + n.to_bytes(2, "little") + data
    return b"\x4e" + n.to_bytes(4, "little") + data


def script_num(n: int) -> bytes:
    """CScriptNum serialization: little-endian magnitude, sign in the top bit of the last byte."""
    if n == 0:
        return b""
    magnitude, out = abs(n), bytearray()
    while magnitude:
        out.append(magnitude & 0xFF)
        magnitude >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if n < 0 else 0)
    elif n < 0:
        out[-1] |= 0x80
    return bytes(out)


def push_int(n: int) -> bytes:
    """CScript << n: OP_0, OP_1NEGATE and OP_1..OP_16 as opcodes, otherwise a number push."""
    if n == 0:
        return b"\x00"
    if n == -1 or 1 <= n <= 16:
        return bytes((0x50 + n,))
    return push_data(script_num(n))


def p2pk(pubkey: bytes) -> bytes:
    return push_data(pubkey) + b"\xac"


def p2pkh(h160: bytes) -> bytes:
    assert len(h160) == 20
    return b"\x76\xa9\x14" + h160 + b"\x88\xac"


def p2sh(h160: bytes) -> bytes:
    assert len(h160) == 20
    return b"\xa9\x14" + h160 + b"\x87"


def p2wpkh(h160: bytes) -> bytes:
    assert len(h160) == 20
    return b"\x00\x14" + h160


def p2wsh(h256: bytes) -> bytes:
    assert len(h256) == 32
    return b"\x00\x20" + h256


def p2tr(xonly: bytes) -> bytes:
    assert len(xonly) == 32
    return b"\x51\x20" + xonly


def witness_program(version: int, program: bytes) -> bytes:
    assert 0 <= version <= 16 and 2 <= len(program) <= 40
    return bytes((0x50 + version if version else 0, len(program))) + program


def op_return(data: bytes) -> bytes:
    return b"\x6a" + push_data(data)


def is_unspendable(script: bytes) -> bool:
    """Core's CScript::IsUnspendable: never enters the UTXO set."""
    return script[:1] == b"\x6a" or len(script) > 10_000


# Placeholder unlocking data: well formed (a strict-DER signature with SIGHASH_ALL, the generator as
# compressed public key, a 64-byte Schnorr signature), never verified.
FAKE_PUBKEY = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
FAKE_SIG = b"\x30\x44\x02\x20" + b"\x11" * 32 + b"\x02\x20" + b"\x22" * 32 + b"\x01"
FAKE_SCHNORR = b"\x33" * 64
TRUE_SCRIPT = b"\x51"


def unlocking_data(script: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """A plausible (scriptSig, witness) for spending an output with `script`."""
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14":
        return push_data(FAKE_SIG) + push_data(FAKE_PUBKEY), ()
    if len(script) == 23 and script[:2] == b"\xa9\x14":
        return push_data(TRUE_SCRIPT), ()  # a redeem script of OP_TRUE
    if script[:2] == b"\x00\x14" and len(script) == 22:
        return b"", (FAKE_SIG, FAKE_PUBKEY)
    if script[:2] == b"\x00\x20" and len(script) == 34:
        return b"", (TRUE_SCRIPT,)  # a witness script of OP_TRUE
    if script[:2] == b"\x51\x20" and len(script) == 34:
        return b"", (FAKE_SCHNORR,)
    if script[-1:] == b"\xac":
        return push_data(FAKE_SIG), ()
    return b"", ()


# ---------------------------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    pubkey_prefix: int
    script_prefix: int
    hrp: str


NETWORKS = {
    "main": Network("main", 0x00, 0x05, "bc"),
    "test": Network("test", 0x6F, 0xC4, "tb"),
    "testnet4": Network("testnet4", 0x6F, 0xC4, "tb"),
    "signet": Network("signet", 0x6F, 0xC4, "tb"),
    "regtest": Network("regtest", 0x6F, 0xC4, "bcrt"),
}

# The address codecs come from bip_utils, not from the project's own (depositwatch.addresses): an
# independent oracle for the addresses the node hands out and reads back.


def base58check_encode(version: int, payload: bytes) -> str:
    return str(Base58Encoder.CheckEncode(bytes((version,)) + payload))


def base58check_decode(text: str) -> bytes:
    try:
        return bytes(Base58Decoder.CheckDecode(text))
    except Exception as exc:  # bip_utils raises its own error classes
        raise ValueError(f"invalid base58check: {exc}") from None


def segwit_encode(hrp: str, version: int, program: bytes) -> str:
    """BIP173 (version 0) or BIP350 (version 1 and up) address."""
    return str(SegwitBech32Encoder.Encode(hrp, version, program))


def segwit_decode(hrp: str, address: str) -> tuple[int, bytes]:
    if address.lower() != address and address.upper() != address:
        raise ValueError("mixed case")
    try:
        version, program = SegwitBech32Decoder.Decode(hrp, address.lower())
    except Exception as exc:  # bip_utils raises its own error classes
        raise ValueError(f"invalid segwit address: {exc}") from None
    program = bytes(program)
    if version > 16 or not 2 <= len(program) <= 40 or (version == 0 and len(program) not in (20, 32)):
        raise ValueError("invalid witness program")
    return int(version), program


def script_to_address(script: bytes, network: str = "regtest") -> str | None:
    """The address Core shows for a script (its ExtractDestination), or None (P2PK, bare, nonstandard)."""
    net = NETWORKS[network]
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return base58check_encode(net.pubkey_prefix, script[3:23])
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return base58check_encode(net.script_prefix, script[2:22])
    if 4 <= len(script) <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] + 2 == len(script):
        version = script[0] - 0x50 if script[0] else 0
        if version == 0 and len(script) not in (22, 34):
            return None
        return segwit_encode(net.hrp, version, script[2:])
    return None


def address_to_script(address: str, network: str = "regtest") -> bytes:
    """The output script of an address of `network`; ValueError if it is not valid there."""
    net = NETWORKS[network]
    if address.lower().startswith(net.hrp + "1"):
        version, program = segwit_decode(net.hrp, address)
        return witness_program(version, program)
    data = base58check_decode(address)
    if len(data) == 21 and data[0] == net.pubkey_prefix:
        return p2pkh(data[1:])
    if len(data) == 21 and data[0] == net.script_prefix:
        return p2sh(data[1:])
    raise ValueError("address is not valid for this network")


# ---------------------------------------------------------------------------------------------
# The chain


class ChainRuleError(Exception):
    """A transaction or block the chain refuses; `code` and `message` as Core's RPC reports them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Coin:
    value: int
    script: bytes
    height: int
    coinbase: bool


@dataclass(slots=True)
class BlockRecord:
    header: BlockHeader
    txs: tuple[Tx, ...]
    raw: bytes
    height: int
    chainwork: int
    n_chain_tx: int
    undo: tuple[tuple[Coin, ...], ...]
    """For each transaction after the coinbase, the coins its inputs spent."""
    invalid: bool = False

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def prev_hash(self) -> str:
        return self.header.prev_hash

    @property
    def stripped_size(self) -> int:
        return 80 + len(write_varint(len(self.txs))) + sum(tx_sizes(tx)[1] for tx in self.txs)

    @property
    def weight(self) -> int:
        return self.stripped_size * 3 + len(self.raw)


@dataclass(slots=True)
class MempoolEntry:
    tx: Tx
    fee: int
    time: int
    height: int
    """The chain height when the transaction entered."""
    parents: set[str] = field(default_factory=set)
    """Txids of in-mempool transactions it spends."""


def tx_sizes(tx: Tx) -> tuple[int, int, int, int]:
    """(size, stripped size, weight, vsize) as Core computes them."""
    size = len(serialize_tx(tx))
    stripped = len(serialize_tx(tx, witness=False)) if tx.has_witness else size
    weight = stripped * 3 + size
    return size, stripped, weight, (weight + 3) // 4


def block_subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def bits_to_target(bits: int) -> int:
    return (bits & 0x7FFFFF) << (8 * ((bits >> 24) - 3))


def block_work(bits: int) -> int:
    return (1 << 256) // (bits_to_target(bits) + 1)


def genesis_block() -> tuple[BlockHeader, Tx, bytes]:
    """Regtest's genesis block, rebuilt from its known fields (the same as mainnet's but for time,
    nonce and bits)."""
    coinbase = make_tx(
        [
            TxIn(
                NULL_TXID,
                COINBASE_VOUT,
                bytes.fromhex("04ffff001d0104")
                + push_data(b"The Times 03/Jan/2009 Chancellor on brink of second bailout for banks"),
                0xFFFFFFFF,
                (),
            )
        ],
        [
            TxOut(
                50 * COIN,
                p2pk(
                    bytes.fromhex(
                        "04678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e5"
                        "1ec112de5c384df7ba0b8d578a4c702b6bf11d5f"
                    )
                ),
            )
        ],
        version=1,
    )
    header80 = (
        (1).to_bytes(4, "little")
        + NULL_TXID
        + bytes.fromhex(coinbase.txid)[::-1]
        + (1296688602).to_bytes(4, "little")
        + REGTEST_BITS.to_bytes(4, "little")
        + (2).to_bytes(4, "little")
    )
    header = decode_header(header80)
    raw = header80 + b"\x01" + serialize_tx(coinbase)
    return header, coinbase, raw


Outpoint = tuple[str, int]


class RegtestChain:
    """Blocks, the active chain, UTXO set, mempool and txindex of a regtest node.

    Time: blocks get `max(median time past + 1, now)` unless given a time; `now()` is the wall clock
    unless `set_time` fixed it (Core's setmocktime).
    """

    def __init__(self, *, enforce_maturity: bool = True, miner_script: bytes | None = None) -> None:
        self.enforce_maturity = enforce_maturity
        self.miner_script = miner_script or p2wpkh(b"\x4d" * 20)
        self.blocks: dict[str, BlockRecord] = {}
        self.active: list[str] = []
        self.utxo: dict[Outpoint, Coin] = {}
        self.mempool: dict[str, MempoolEntry] = {}
        self.txindex: dict[str, str] = {}
        self.mempool_sequence = 1
        self.mock_time: int | None = None
        self.listeners: list[Callable[[str, str], None]] = []
        """Called with (event, hash): ("block", hash) when a block connects, ("tx", txid) when a
        transaction enters the mempool (a ZMQ-like hook for tests)."""
        header, coinbase, raw = genesis_block()
        if header.hash != REGTEST_GENESIS_HASH or coinbase.txid != GENESIS_MERKLE_ROOT:
            raise AssertionError(f"the regtest genesis block rebuilt wrongly: {header.hash}")
        genesis = BlockRecord(header, (coinbase,), raw, 0, block_work(REGTEST_BITS), 1, ())
        self.blocks[genesis.hash] = genesis
        self.active.append(genesis.hash)  # as in Core, the genesis outputs never enter the UTXO set

    # -- reading ----------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.active) - 1

    @property
    def tip(self) -> BlockRecord:
        return self.blocks[self.active[-1]]

    @property
    def genesis(self) -> BlockRecord:
        return self.blocks[self.active[0]]

    def block_at(self, height: int) -> BlockRecord:
        return self.blocks[self.active[height]]

    def in_active_chain(self, record: BlockRecord) -> bool:
        return record.height < len(self.active) and self.active[record.height] == record.hash

    def next_in_chain(self, record: BlockRecord) -> BlockRecord | None:
        if self.in_active_chain(record) and record.height < self.height:
            return self.block_at(record.height + 1)
        return None

    def median_time_past(self, record: BlockRecord | None = None) -> int:
        record = record or self.tip
        times = []
        for _ in range(11):
            times.append(record.header.time)
            if record.height == 0:
                break
            record = self.blocks[record.prev_hash]
        return sorted(times)[len(times) // 2]

    def now(self) -> int:
        return self.mock_time if self.mock_time is not None else int(_time.time())

    def set_time(self, timestamp: int | None) -> None:
        """Fix the clock (None: back to the wall clock), like `setmocktime`."""
        self.mock_time = timestamp

    def find_output(self, outpoint: Outpoint) -> Coin | None:
        """An unspent output of the chain or of a mempool transaction (the latter at height -1)."""
        coin = self.utxo.get(outpoint)
        if coin is not None:
            return coin
        entry = self.mempool.get(outpoint[0])
        if entry is not None and outpoint[1] < len(entry.tx.outputs):
            out = entry.tx.outputs[outpoint[1]]
            return Coin(out.value, out.script, -1, False)
        return None

    def coins(self, script: bytes | None = None, *, mature_only: bool = True) -> list[tuple[Outpoint, Coin]]:
        """Confirmed unspent outputs not spent in the mempool (optionally of one script), oldest first."""
        spent = self.mempool_spent()
        spend_height = self.height + 1
        found = []
        for outpoint, coin in self.utxo.items():
            if (script is not None and coin.script != script) or outpoint in spent:
                continue
            if mature_only and coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
                continue
            found.append((outpoint, coin))
        found.sort(key=lambda item: item[1].height)
        return found

    def mempool_txs(self) -> list[Tx]:
        """The mempool in an order where parents come first."""
        return [entry.tx for entry in self.mempool.values()]

    def mempool_spent(self) -> dict[Outpoint, str]:
        return {
            (txin.prev_txid_hex, txin.prev_vout): txid
            for txid, entry in self.mempool.items()
            for txin in entry.tx.inputs
        }

    # -- transactions ---------------------------------------------------------------------------

    def _check_inputs(
        self, tx: Tx, spend_height: int, view: Callable[[Outpoint], Coin | None]
    ) -> tuple[int, list[Coin]]:
        if tx.is_coinbase:
            raise ChainRuleError(-26, "coinbase")
        if any(out.value < 0 for out in tx.outputs):
            raise ChainRuleError(-26, "bad-txns-vout-negative")
        coins = []
        for txin in tx.inputs:
            coin = view((txin.prev_txid_hex, txin.prev_vout))
            if coin is None:
                raise ChainRuleError(-25, "bad-txns-inputs-missingorspent")
            if self.enforce_maturity and coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
                depth = spend_height - coin.height
                raise ChainRuleError(
                    -26, f"bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth {depth}"
                )
            coins.append(coin)
        value_in, value_out = sum(c.value for c in coins), sum(o.value for o in tx.outputs)
        if value_in < value_out:
            raise ChainRuleError(
                -26, f"bad-txns-in-belowout, value in ({_btc(value_in)}) < value out ({_btc(value_out)})"
            )
        return value_in - value_out, coins

    def add_tx(self, tx: Tx, *, replace: bool = False, time: int | None = None) -> str:
        """Accept a transaction into the mempool (as `sendrawtransaction`); return its txid.

        With `replace`, mempool transactions spending the same outputs are evicted with their
        descendants (no fee rules are applied); otherwise a conflict is refused.
        """
        if tx.txid in self.mempool:
            return tx.txid
        if any((tx.txid, n) in self.utxo for n in range(len(tx.outputs))):
            raise ChainRuleError(-27, "Transaction already in block chain")
        spent = self.mempool_spent()
        conflicts = {spent[o] for o in ((i.prev_txid_hex, i.prev_vout) for i in tx.inputs) if o in spent}
        if conflicts and not replace:
            raise ChainRuleError(-26, "txn-mempool-conflict")
        for txid in conflicts:
            self.drop_tx(txid)
        fee, _ = self._check_inputs(tx, self.height + 1, self.find_output)
        parents = {i.prev_txid_hex for i in tx.inputs if i.prev_txid_hex in self.mempool}
        self.mempool[tx.txid] = MempoolEntry(tx, fee, self.now() if time is None else time, self.height, parents)
        self.mempool_sequence += 1
        self._notify("tx", tx.txid)
        return tx.txid

    def descendants(self, txid: str) -> list[str]:
        """In-mempool descendants of a mempool transaction, parents before children."""
        found: list[str] = []
        frontier = [txid]
        while frontier:
            current = frontier.pop()
            for other, entry in self.mempool.items():
                if current in entry.parents and other not in found:
                    found.append(other)
                    frontier.append(other)
        order = list(self.mempool)
        return sorted(found, key=order.index)

    def ancestors(self, txid: str) -> set[str]:
        found: set[str] = set()
        frontier = [txid]
        while frontier:
            for parent in self.mempool[frontier.pop()].parents:
                if parent not in found:
                    found.add(parent)
                    frontier.append(parent)
        return found

    def drop_tx(self, txid: str) -> list[str]:
        """Evict a mempool transaction and its descendants; return the evicted txids."""
        if txid not in self.mempool:
            return []
        gone = [txid, *self.descendants(txid)]
        for other in gone:
            del self.mempool[other]
            self.mempool_sequence += 1
        return gone

    def replace_tx(self, old_txid: str, tx: Tx) -> str:
        """Evict `old_txid` (and descendants) and accept `tx` in its place."""
        self.drop_tx(old_txid)
        return self.add_tx(tx, replace=True)

    def spend(
        self,
        outpoints: Sequence[Outpoint],
        outputs: Sequence[tuple[bytes, int]],
        *,
        sequence: int = 0xFFFFFFFD,
        locktime: int = 0,
        version: int = 2,
        witness: bool = True,
        submit: bool = True,
    ) -> Tx:
        """A transaction spending `outpoints` (confirmed or in the mempool) to `(script, value)`
        outputs, with placeholder unlocking data fitting each spent script (witness data for segwit
        outputs unless `witness` is false); submitted to the mempool unless `submit` is false."""
        inputs = []
        for txid, vout in outpoints:
            coin = self.find_output((txid, vout))
            script_sig, stack = unlocking_data(coin.script if coin else b"")
            inputs.append(TxIn(bytes.fromhex(txid)[::-1], vout, script_sig, sequence, stack if witness else ()))
        tx = make_tx(inputs, [TxOut(value, script) for script, value in outputs], version=version, locktime=locktime)
        if submit:
            self.add_tx(tx)
        return tx

    def send(
        self,
        outputs: Sequence[tuple[bytes, int]],
        *,
        fee: int = 1_000,
        from_script: bytes | None = None,
        change_script: bytes | None = None,
        submit: bool = True,
    ) -> Tx:
        """Pay `(script, value)` outputs from mature coins of `from_script` (default: the miner's),
        change back to `change_script` (default: the same script) as the last output."""
        source = from_script or self.miner_script
        need = sum(value for _, value in outputs) + fee
        chosen: list[Outpoint] = []
        total = 0
        for outpoint, coin in self.coins(source):
            chosen.append(outpoint)
            total += coin.value
            if total >= need:
                break
        if total < need:
            raise ChainRuleError(-6, "Insufficient funds (a coinbase can be spent once 100 blocks are on top of it)")
        change = total - need
        pay = list(outputs) + ([(change_script or source, change)] if change else [])
        return self.spend(chosen, pay, submit=submit)

    # -- blocks ---------------------------------------------------------------------------------

    def mine(
        self,
        n: int = 1,
        *,
        script: bytes | None = None,
        txs: Sequence[Tx] | None = None,
        time: int | None = None,
    ) -> list[BlockRecord]:
        """Mine `n` blocks on the tip. The first takes `txs` (default: the whole mempool; they need
        not be in the mempool), the others the mempool as it is then. `time` sets the first block's
        time (later ones get one second more each)."""
        made = []
        for i in range(n):
            chosen = list(txs) if txs is not None and i == 0 else self.mempool_txs()
            block_time = None if time is None else time + i
            made.append(self._mine_one(chosen, script or self.miner_script, block_time))
        return made

    def _mine_one(self, txs: list[Tx], script: bytes, block_time: int | None) -> BlockRecord:
        height = self.height + 1
        created: dict[Outpoint, Coin] = {}
        spent: set[Outpoint] = set()

        def view(outpoint: Outpoint) -> Coin | None:
            if outpoint in spent:
                return None
            return created.get(outpoint) or self.utxo.get(outpoint)

        fees = 0
        undo = []
        for tx in txs:
            fee, coins = self._check_inputs(tx, height, view)
            fees += fee
            undo.append(tuple(coins))
            spent.update((i.prev_txid_hex, i.prev_vout) for i in tx.inputs)
            for n, out in enumerate(tx.outputs):
                created[(tx.txid, n)] = Coin(out.value, out.script, height, False)
        reward = [TxOut(block_subsidy(height) + fees, script)]
        coinbase_in = TxIn(NULL_TXID, COINBASE_VOUT, push_int(height) + b"\x00", 0xFFFFFFFF, (NULL_TXID,))
        draft = make_tx([coinbase_in], reward)
        commitment = TxOut(0, WITNESS_COMMITMENT_HEADER + witness_commitment([draft, *txs]))
        coinbase = make_tx([coinbase_in], [*reward, commitment])
        all_txs = (coinbase, *txs)
        mtp = self.median_time_past()
        if block_time is None:
            block_time = max(mtp + 1, self.now())
        elif block_time <= mtp:
            raise ChainRuleError(-25, f"time-too-old: {block_time} is not after the median time past {mtp}")
        root = merkle_root([bytes.fromhex(tx.txid)[::-1] for tx in all_txs])
        base = (
            block_version(height).to_bytes(4, "little")
            + bytes.fromhex(self.tip.hash)[::-1]
            + root
            + block_time.to_bytes(4, "little")
            + REGTEST_BITS.to_bytes(4, "little")
        )
        target = bits_to_target(REGTEST_BITS)
        nonce = 0
        while True:
            header80 = base + nonce.to_bytes(4, "little")
            digest = sha256d(header80)
            if int.from_bytes(digest, "little") <= target and digest[::-1].hex() not in self.blocks:
                break
            nonce += 1
        raw = header80 + write_varint(len(all_txs)) + b"".join(serialize_tx(tx) for tx in all_txs)
        tip = self.tip
        record = BlockRecord(
            decode_header(header80),
            all_txs,
            raw,
            height,
            tip.chainwork + block_work(REGTEST_BITS),
            tip.n_chain_tx + len(all_txs),
            tuple(undo),
        )
        self.blocks[record.hash] = record
        self._connect(record)
        return record

    def _connect(self, record: BlockRecord) -> None:
        mined = {tx.txid for tx in record.txs}
        for tx in record.txs:
            for txin in tx.inputs if not tx.is_coinbase else ():
                self.utxo.pop((txin.prev_txid_hex, txin.prev_vout))
            for n, out in enumerate(tx.outputs):
                if not is_unspendable(out.script):
                    self.utxo[(tx.txid, n)] = Coin(out.value, out.script, record.height, tx.is_coinbase)
            self.txindex[tx.txid] = record.hash
        self.active.append(record.hash)
        for txid in mined:
            if txid in self.mempool:
                del self.mempool[txid]
                self.mempool_sequence += 1
        for entry in self.mempool.values():
            entry.parents -= mined
        spent_by_block = {(i.prev_txid_hex, i.prev_vout) for tx in record.txs[1:] for i in tx.inputs}
        for outpoint, txid in self.mempool_spent().items():
            if outpoint in spent_by_block:
                self.drop_tx(txid)  # conflicts with the block
        self._notify("block", record.hash)

    def _disconnect_tip(self) -> BlockRecord:
        record = self.tip
        for tx in record.txs:
            for n in range(len(tx.outputs)):
                self.utxo.pop((tx.txid, n), None)
        for tx, coins in zip(record.txs[1:], record.undo, strict=True):
            for txin, coin in zip(tx.inputs, coins, strict=True):
                self.utxo[(txin.prev_txid_hex, txin.prev_vout)] = coin
        self.active.pop()
        return record

    def invalidate(self, block_hash: str) -> list[BlockRecord]:
        """Core's `invalidateblock`: mark the block and its descendants invalid, disconnect them, and
        return their transactions to the mempool where they are still valid. Returns the
        disconnected blocks, tip first."""
        record = self.blocks[block_hash]
        if record.height == 0:
            raise ChainRuleError(-8, "Genesis block cannot be invalidated")
        for other in self.blocks.values():
            if other.height >= record.height and self._descends_from(other, record):
                other.invalid = True
        gone: list[BlockRecord] = []
        if self.in_active_chain(record):
            while self.height >= record.height:
                gone.append(self._disconnect_tip())
        older_mempool = list(self.mempool.values())
        self.mempool.clear()
        for disconnected in reversed(gone):
            for tx in disconnected.txs[1:]:
                try:
                    self.add_tx(tx)
                except ChainRuleError:
                    pass
        for entry in older_mempool:
            try:
                self.add_tx(entry.tx, time=entry.time)
            except ChainRuleError:
                pass
        return gone

    def _descends_from(self, record: BlockRecord, ancestor: BlockRecord) -> bool:
        while record.height > ancestor.height:
            record = self.blocks[record.prev_hash]
        return record.hash == ancestor.hash

    def reorg(
        self, depth: int, new_blocks: int | None = None, *, txs: Sequence[Tx] = (), script: bytes | None = None
    ) -> list[BlockRecord]:
        """Replace the last `depth` blocks with a competing branch of `new_blocks` blocks (default
        `depth + 1`) from the fork point. The first new block holds `txs` (default none: the
        disconnected transactions wait in the mempool, as after a real reorg). Returns the new blocks."""
        if not 1 <= depth <= self.height:
            raise ValueError(f"cannot reorg {depth} blocks of a chain of height {self.height}")
        self.invalidate(self.active[self.height - depth + 1])
        count = depth + 1 if new_blocks is None else new_blocks
        made = self.mine(1, txs=list(txs), script=script) if count else []
        for _ in range(count - 1):
            made += self.mine(1, txs=[], script=script)
        return made

    def chain_tips(self) -> list[tuple[BlockRecord, str]]:
        """Every block with no known child, with Core's status: active, invalid or valid-fork."""
        parents = {record.prev_hash for record in self.blocks.values() if record.height > 0}
        tips = []
        for record in self.blocks.values():
            if record.hash in parents and record.hash != self.tip.hash:
                continue
            if record.hash == self.tip.hash:
                status = "active"
            elif record.invalid:
                status = "invalid"
            else:
                status = "valid-fork"
            tips.append((record, status))
        tips.sort(key=lambda item: -item[0].height)
        return tips

    def fork_point(self, record: BlockRecord) -> BlockRecord:
        while not self.in_active_chain(record):
            record = self.blocks[record.prev_hash]
        return record

    def _notify(self, event: str, value: str) -> None:
        for listener in list(self.listeners):
            listener(event, value)


def _btc(sats: int) -> str:
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    return f"{sign}{whole}.{frac:08d}"
