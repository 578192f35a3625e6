"""TRON's signed bytes: the protobuf of transactions and block headers, and the hashes over them.

A TRON node answers JSON, but what is signed are protobuf bytes. Matching must rest on the signed
bytes, not on the JSON beside them, so this module decodes the fields a deposit watcher uses from
`raw_data_hex` and recomputes every identity:

- a transaction's `txID` is sha256 of its `raw_data` bytes;
- a block's `txTrieRoot` is a merkle root (sha256 of each pair, an odd last node carried up unchanged)
  over sha256 of each whole `Transaction` message (raw data, signatures and results, so the result
  codes are covered too); an empty block's root is 32 zero bytes;
- a `blockID` is the height as 8 big-endian bytes followed by the last 24 bytes of sha256 of the
  header's raw bytes, which the node does not send: they are re-encoded from the header's fields in
  protobuf's canonical form (fields in number order, defaults left out), as java-tron writes them.

Only the protobuf wire format is needed (varints and length-delimited fields), not generated classes:
a reader of a few dozen lines with hard bounds gives exact control over which bytes are hashed.

There is one grammar, `fields`. Contracts are read two ways over it: `canonical_fields` reads the one
layout java-tron writes (nearly every transaction) at fixed offsets and declines anything else, and
`general_contract` reads any layout through `fields`. A generator step per field costs more than
hashing the transaction, which is why the first exists; the tests hold both to the same answers on
real, generated, damaged and random bytes. `_tronscan` (C, built by setup.py where a compiler and
libcrypto's headers are) does the same reading, and for usual transactions the hashing with it, in
one call; `DEPOSITWATCH_PURE_PYTHON=1` turns it off, as for the Bitcoin scan.

The module is about 500 lines and stays whole: the wire format, the two contract readings held to the
same answers and the identities hashed over them are one job, deciding exactly which signed bytes count.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

try:
    from depositwatch.chains import _tronscan
except ImportError:  # not built (no compiler or no libcrypto headers): the Python reading does it all
    _tronscan = None  # type: ignore[assignment]
_BUILT: bool = _tronscan is not None
"""Whether the compiled fast path (`_tronscan.c`) was built and imported."""
compiled = _tronscan
"""The compiled module where built (also for `tron_txs`' one-step reading of a transaction's JSON), else None."""
_USE_EXTENSION = _BUILT and os.environ.get("DEPOSITWATCH_PURE_PYTHON", "") in ("", "0")

_MAX_VARINT_BYTES = 10
_INT64_MAX = 2**63 - 1

# wire types
_VARINT = 0
_FIXED64 = 1
_BYTES = 2
_FIXED32 = 5


class WireError(ValueError):
    """Bytes that are not the protobuf they claim to be, or identities that do not recompute."""


class ContractType(IntEnum):
    """The `Transaction.Contract.ContractType` values a deposit watcher reads."""

    TRANSFER = 1  # TransferContract: TRX
    TRANSFER_ASSET = 2  # TransferAssetContract: TRC-10
    TRIGGER_SMART_CONTRACT = 31  # TriggerSmartContract: TRC-20 calls among others


class ContractResult(IntEnum):
    """`Transaction.Result.contractResult`: how the contract ran (only SUCCESS moves value)."""

    DEFAULT = 0
    SUCCESS = 1
    REVERT = 2
    BAD_JUMP_DESTINATION = 3
    OUT_OF_MEMORY = 4
    PRECOMPILED_CONTRACT = 5
    STACK_TOO_SMALL = 6
    STACK_TOO_LARGE = 7
    ILLEGAL_OPERATION = 8
    STACK_OVERFLOW = 9
    OUT_OF_ENERGY = 10
    OUT_OF_TIME = 11
    JVM_STACK_OVER_FLOW = 12
    UNKNOWN = 13
    TRANSFER_FAILED = 14
    INVALID_CODE = 15


# ---------------------------------------------------------------------------------------------------
# the wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(_MAX_VARINT_BYTES):
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            if value >= 1 << 64:
                raise WireError("varint beyond 64 bits")
            return value, pos
    raise WireError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Each `(field number, wire type, value)` of a message: ints for varints and fixed, bytes otherwise."""
    pos = 0
    end = len(buf)
    while pos < end:
        key = buf[pos]
        if key < 0x80:  # one-byte keys (fields 1 to 15) are nearly all of them
            pos += 1
        else:
            key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _BYTES:
            if pos < end and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = _varint(buf, pos)
            if length > end - pos:
                raise WireError(f"field {number}: {length} bytes announced, {end - pos} left")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if size > end - pos:
                raise WireError(f"field {number}: truncated fixed{size * 8}")
            yield number, wire, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire}")


def _int64(value: int | bytes, what: str) -> int:
    """A varint read as protobuf's int64 (two's complement); negative values are refused here."""
    if not isinstance(value, int):
        raise WireError(f"{what}: expected a varint")
    if value > _INT64_MAX:
        raise WireError(f"{what}: negative or beyond int64")
    return value


def _bytes(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise WireError(f"{what}: expected length-delimited bytes")
    return value


def _key(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def encode_varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer below 2^64."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_ONE_BYTE = [bytes([n]) for n in range(0x80)]


def encode_int(number: int, value: int) -> bytes:
    """An int64 field, left out when 0 (proto3's default)."""
    return _key(number, _VARINT) + encode_varint(value) if value else b""


def encode_bytes(number: int, value: bytes) -> bytes:
    """A bytes, string or message field, left out when empty (proto3's default)."""
    return _key(number, _BYTES) + encode_varint(len(value)) + value if value else b""


def encode_repeated(number: int, values: Sequence[bytes]) -> bytes:
    """A repeated bytes or message field: every element is written, empty ones included."""
    return b"".join(_key(number, _BYTES) + encode_varint(len(v)) + v for v in values)


# ---------------------------------------------------------------------------------------------------
# transactions


@dataclass(frozen=True, slots=True)
class SignedContract:
    """The first contract of a transaction's signed raw data, with the fields a watcher uses.

    Accounts are the 21-byte node form (`0x41` + 20 bytes) as signed; `amount` is sun for TRX, the
    token's base units for TRC-10, `call_value` for a smart-contract call.
    """

    type: int
    owner: bytes
    to: bytes | None  # TransferContract / TransferAssetContract recipient
    contract: bytes | None  # TriggerSmartContract target
    amount: int
    asset: bytes | None  # TRC-10 token id as signed (its text form, e.g. b"1002000")
    data: bytes  # TriggerSmartContract call data


def tx_id(raw: bytes) -> bytes:
    """A transaction's id: sha256 of its signed raw data."""
    return hashlib.sha256(raw).digest()


def decode_contract(raw: bytes) -> SignedContract:
    """The first contract of `Transaction.raw` bytes (TRON transactions carry exactly one)."""
    canonical = canonical_fields(raw)
    return SignedContract(*canonical) if canonical is not None else general_contract(raw)


# `SignedContract`'s fields as a plain tuple, in the same order: building a frozen dataclass costs
# more than hashing a transaction, so the block decoder keeps these.
SignedFields = tuple[int, bytes, bytes | None, bytes | None, int, bytes | None, bytes]


def contract_fields(raw: bytes) -> SignedFields:
    """`decode_contract` as a `SignedFields` tuple: the canonical layout read directly, else the grammar."""
    canonical = canonical_fields(raw)
    if canonical is not None:
        return canonical
    c = general_contract(raw)
    return c.type, c.owner, c.to, c.contract, c.amount, c.asset, c.data


def general_contract(raw: bytes) -> SignedContract:
    """`decode_contract` through the general grammar (`fields`), whatever the field order and extras."""
    contracts = [_bytes(value, "raw.contract") for number, _, value in fields(raw) if number == 11]
    if len(contracts) != 1:
        raise WireError(f"raw data holds {len(contracts)} contracts, expected 1")
    kind = 0
    parameter = b""
    for number, _, value in fields(contracts[0]):
        if number == 1:
            kind = _int64(value, "contract.type")
        elif number == 2:
            parameter = _bytes(value, "contract.parameter")
    inner = b""
    for number, _, value in fields(parameter):  # google.protobuf.Any: type_url = 1, value = 2
        if number == 2:
            inner = _bytes(value, "contract.parameter.value")
    return _decode_parameter(kind, inner)


# java-tron's layout of `Transaction.raw`: ref_block_bytes (2 bytes), ref_block_hash (8 bytes),
# expiration, then the contract; after it only timestamp and fee_limit. Varints of at most 9 bytes
# (63 bits) are always valid; a 10-byte one is left to the general grammar, which checks its bound.
_RAW_HEAD = re.compile(rb"\x0a\x02..\x22\x08.{8}\x40[\x80-\xff]{0,8}[\x00-\x7f]\x5a", re.DOTALL)
_RAW_TAIL = re.compile(rb"(?:\x70[\x80-\xff]{0,8}[\x00-\x7f])?(?:\x90\x01[\x80-\xff]{0,8}[\x00-\x7f])?", re.DOTALL)


def _canonical_fields_py(raw: bytes) -> SignedFields | None:
    """`contract_fields` for the layout java-tron writes, read at fixed offsets; None for any other layout.

    The general grammar walks every field through a generator, which costs more than hashing the
    transaction. Nearly every transaction is laid out the same way, so this reads that one layout
    without building a field list: the known fields in their order, one contract of a known type
    whose parameter holds exactly its usual fields, 21-byte accounts, lengths that add up to the
    message. Anything else (another field, another order, a memo, a permission id, a truncation)
    returns None and `general_contract` decides, so both always give the same answer (the tests
    check this on real and random bytes).
    """
    head = _RAW_HEAD.match(raw)
    if head is None:
        return None
    try:
        pos = head.end()
        size = raw[pos]
        if size < 0x80:  # lengths are read inline up to two bytes (16 KB); longer ones go the general way
            pos += 1
        elif raw[pos + 1] < 0x80:
            size = size & 0x7F | raw[pos + 1] << 7
            pos += 2
        else:
            return None
        end = pos + size
        if end > len(raw) or _RAW_TAIL.fullmatch(raw, end) is None:
            return None
        # Contract: type = 1, parameter = 2 (a google.protobuf.Any filling the rest)
        kind = raw[pos + 1]
        if raw[pos] != 0x08 or raw[pos + 2] != 0x12 or kind not in _CANONICAL_KINDS:
            return None
        size = raw[pos + 3]
        if size < 0x80:
            pos += 4
        elif raw[pos + 4] < 0x80:
            size = size & 0x7F | raw[pos + 4] << 7
            pos += 5
        else:
            return None
        if pos + size != end or raw[pos] != 0x0A or raw[pos + 1] >= 0x80:
            return None
        pos += 2 + raw[pos + 1]  # Any.type_url, not read
        if raw[pos] != 0x12:
            return None
        size = raw[pos + 1]
        if size < 0x80:
            pos += 2
        elif raw[pos + 2] < 0x80:
            size = size & 0x7F | raw[pos + 2] << 7
            pos += 3
        else:
            return None
        if pos + size != end:
            return None
        return _canonical_parameter(raw, kind, pos, end)
    except (IndexError, WireError):
        return None


canonical_fields: Callable[[bytes], SignedFields | None] = _tronscan.fields if _USE_EXTENSION else _canonical_fields_py
"""`contract_fields` for java-tron's layout, None for any other (compiled where built)."""


def _usual_transaction_py(raw_hex: str, signature_hex: str, tail: bytes) -> tuple[str, bytes, SignedFields] | None:
    """`(txID hex, trie leaf, contract fields)` of a transaction with one 65-byte signature, its raw
    data in java-tron's layout, `tail` its encoded result field; None for anything else."""
    try:
        raw, signature = bytes.fromhex(raw_hex), bytes.fromhex(signature_hex)
    except ValueError:
        return None
    fields = _canonical_fields_py(raw)
    if fields is None or len(signature) != 65:
        return None
    size = len(raw)  # Transaction.raw_data = 1, its length a varint of two bytes for usual sizes
    head = bytes((0x0A, size & 0x7F | 0x80, size >> 7)) if 0x80 <= size < 0x4000 else b"\x0a" + encode_varint(size)
    leaf = hashlib.sha256(b"".join((head, raw, b"\x12\x41", signature, tail))).digest()
    return hashlib.sha256(raw).hexdigest(), leaf, fields


usual_transaction: Callable[[str, str, bytes], tuple[str, bytes, SignedFields] | None] = (
    _tronscan.transaction if _USE_EXTENSION else _usual_transaction_py
)
"""`(txID hex, trie leaf, contract fields)` from the hex of a usual transaction's raw data and of its one
signature, and its encoded result field; None for anything else (compiled where built)."""

_CANONICAL_KINDS = frozenset(int(kind) for kind in ContractType)
_TRANSFER_ASSET = int(ContractType.TRANSFER_ASSET)
_TRIGGER_SMART_CONTRACT = int(ContractType.TRIGGER_SMART_CONTRACT)


def _canonical_parameter(raw: bytes, kind: int, pos: int, end: int) -> SignedFields | None:
    """The parameter message at `raw[pos:end]`, its fields in number order, accounts 21 bytes long."""
    asset: bytes | None = None
    if kind == _TRANSFER_ASSET:  # asset_name = 1 comes before the accounts
        if raw[pos] != 0x0A or raw[pos + 1] >= 0x80:
            return None
        asset = raw[pos + 2 : pos + 2 + raw[pos + 1]]
        pos += 2 + raw[pos + 1]
        accounts = b"\x12\x15", b"\x1a\x15"
        amount_key = 0x20
    else:
        accounts = b"\x0a\x15", b"\x12\x15"
        amount_key = 0x18
    if raw[pos : pos + 2] != accounts[0] or raw[pos + 23 : pos + 25] != accounts[1]:
        return None
    owner = raw[pos + 2 : pos + 23]
    other = raw[pos + 25 : pos + 46]
    pos += 46
    amount = 0
    if pos < end and raw[pos] == amount_key:
        amount, pos = _varint(raw, pos + 1)
        if amount > _INT64_MAX:
            return None
    if kind != _TRIGGER_SMART_CONTRACT:
        if pos != end:
            return None
        return kind, owner, other, None, amount, asset, b""
    data = b""
    if pos < end:
        if raw[pos] != 0x22:
            return None
        size = raw[pos + 1]
        pos += 2
        if size >= 0x80:
            size, pos = _varint(raw, pos - 1)
        data = raw[pos : pos + size]
        pos += size
    if pos != end:
        return None
    return kind, owner, None, other, amount, None, data


def _decode_parameter(kind: int, inner: bytes) -> SignedContract:
    owner = b""
    to: bytes | None = None
    contract: bytes | None = None
    amount = 0
    asset: bytes | None = None
    data = b""
    for number, _, value in fields(inner):
        if kind == ContractType.TRANSFER:
            if number == 1:
                owner = _bytes(value, "TransferContract.owner_address")
            elif number == 2:
                to = _bytes(value, "TransferContract.to_address")
            elif number == 3:
                amount = _int64(value, "TransferContract.amount")
        elif kind == ContractType.TRANSFER_ASSET:
            if number == 1:
                asset = _bytes(value, "TransferAssetContract.asset_name")
            elif number == 2:
                owner = _bytes(value, "TransferAssetContract.owner_address")
            elif number == 3:
                to = _bytes(value, "TransferAssetContract.to_address")
            elif number == 4:
                amount = _int64(value, "TransferAssetContract.amount")
        elif kind == ContractType.TRIGGER_SMART_CONTRACT:
            if number == 1:
                owner = _bytes(value, "TriggerSmartContract.owner_address")
            elif number == 2:
                contract = _bytes(value, "TriggerSmartContract.contract_address")
            elif number == 3:
                amount = _int64(value, "TriggerSmartContract.call_value")
            elif number == 4:
                data = _bytes(value, "TriggerSmartContract.data")
        elif number == 1:  # every contract type puts owner_address first
            owner = _bytes(value, "contract.owner_address")
    return SignedContract(type=kind, owner=owner, to=to, contract=contract, amount=amount, asset=asset, data=data)


def encode_result(contract_ret: int, fee: int = 0) -> bytes:
    """`Transaction.Result` as the node stores it: fee = 1, ret = 2 (SUCESS is 0), contractRet = 3."""
    return encode_int(1, fee) + encode_int(3, contract_ret)


def transaction_bytes(raw: bytes, signatures: Sequence[bytes], results: Sequence[bytes]) -> bytes:
    """A whole `Transaction` message: raw_data = 1, signature = 2, ret = 5."""
    parts = [b"\x0a", encode_varint(len(raw)), raw] if raw else []
    for signature in signatures:
        parts += (b"\x12", encode_varint(len(signature)), signature)
    for result in results:
        parts += (b"\x2a", encode_varint(len(result)), result)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------------
# blocks


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """java-tron's transaction trie root: sha256 over pairs, an odd last node carried up unchanged."""
    if _compiled_root is not None:
        root = _compiled_root(leaves)  # None unless a list of 32-byte leaves
        if root is not None:
            return root
    return _merkle_root_py(leaves)


_compiled_root: Callable[[Sequence[bytes]], bytes | None] | None = _tronscan.merkle_root if _USE_EXTENSION else None


def _merkle_root_py(leaves: Sequence[bytes]) -> bytes:
    """`merkle_root` in Python, for any leaves."""
    if not leaves:
        return bytes(32)
    level = list(leaves)
    while len(level) > 1:
        paired = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


@dataclass(frozen=True, slots=True)
class HeaderFields:
    """`BlockHeader.raw` fields, as the node's JSON gives them (hex fields decoded to bytes)."""

    timestamp: int
    tx_trie_root: bytes
    parent_hash: bytes
    number: int
    witness_id: int
    witness_address: bytes
    version: int
    account_state_root: bytes


def header_raw_bytes(header: HeaderFields) -> bytes:
    """The canonical protobuf of `BlockHeader.raw`, the bytes the block id hashes."""
    return b"".join(
        (
            encode_int(1, header.timestamp),
            encode_bytes(2, header.tx_trie_root),
            encode_bytes(3, header.parent_hash),
            encode_int(7, header.number),
            encode_int(8, header.witness_id),
            encode_bytes(9, header.witness_address),
            encode_int(10, header.version),
            encode_bytes(11, header.account_state_root),
        )
    )


def block_id(number: int, raw_header: bytes) -> bytes:
    """The block id: the height in 8 big-endian bytes, then the last 24 bytes of sha256(raw header)."""
    if not 0 <= number <= _INT64_MAX:
        raise WireError(f"block number {number} out of range")
    return number.to_bytes(8, "big") + hashlib.sha256(raw_header).digest()[8:]
