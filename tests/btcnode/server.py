"""A Bitcoin Core stand-in for tests: JSON-RPC and REST over a `RegtestChain`, on 127.0.0.1.

It answers the calls a chain watcher makes the way Bitcoin Core 25 does, checked against Core's
sources (`httprpc.cpp`, `rpc/server.cpp`, `rpc/util.cpp`, `rpc/blockchain.cpp`,
`rpc/rawtransaction.cpp`, `core_write.cpp`, `rest.cpp`):

- HTTP: JSON-RPC is POST only (405 "JSONRPC server handles only POST requests"), at `/` and under
  `/wallet/`; HTTP Basic auth is required (401, empty body, `WWW-Authenticate: Basic
  realm="jsonrpc"`). A single request that fails is answered `{"result": null, "error": {...},
  "id": ...}` with HTTP 500, except -32600 (invalid request, HTTP 400) and -32601 (method not found,
  HTTP 404); a batch (JSON array) is always HTTP 200 with one reply per element. Core 25 ignores the
  `"jsonrpc"` member; with `version >= 280000` a `"jsonrpc": "2.0"` request gets Core 28's strict
  JSON-RPC 2.0 answers (HTTP 200 with only `result` or `error`, 204 for a notification).
- Arguments: named or positional; a wrong count is -1 with the usage text; a wrong JSON type is -3
  "Wrong type passed: {...}" (Core 25's per-argument check); a number where an integer is needed
  is -1 "JSON integer out of range"; hashes are checked as `ParseHashV` does (-8).
- Shapes: `getblock` 0/1/2/3 (3 adds `prevout`), `getblockheader`, `getrawtransaction` (txindex
  on by default, so the -5 message is the txindex one), mempool calls, `scantxoutset` with
  `raw()` and `addr()` descriptors. Amounts are JSON numbers with exactly 8 decimals; `asm` is
  Core's (signature hash types decoded in scriptSigs), `desc` is Core's inferred descriptor with its
  checksum (`addr()`, `pk()`, `multi()`, `rawtr()`, `raw()`), `address` appears for standard
  types only, `type` uses Core's names.
- REST (unauthenticated, `rest=True`): `/rest/block/<hash>.bin|hex|json`,
  `/rest/block/notxdetails/<hash>.<ext>`, `/rest/tx/<txid>.<ext>`,
  `/rest/blockhashbyheight/<n>.<ext>`, `/rest/chaininfo.json`, `/rest/mempool/contents.json`;
  errors as Core writes them (plain text ending in CRLF: 400 for a bad hash, 404 when unknown).

ZMQ (`zmq=True`): a PUB socket on 127.0.0.1 (`zmq_url`) publishes what Core's `-zmqpub*` options do,
each message `[topic, body, 4-byte little-endian sequence number of that topic]`: `hashblock` (the
hash, in RPC byte order), `rawblock` and `sequence` (hash + `C`) for each block connected, `hashtx`,
`rawtx` and `sequence` (txid + `A` + the 8-byte mempool sequence) for each transaction entering the
mempool; `getzmqnotifications` lists them. It lives from the first `start()` to the end of the
`async with` (`close()`), through `go_down()` and `come_up()`.

Faults for tests: `warming_up(True)` makes every call answer -28 (REST: 503), `go_down()` closes
the listener and every connection and `come_up()` listens again on the same port, `chain_name`
sets what `getblockchaininfo` reports (and the address format), `latency` delays each request.
`max_in_flight` records the most concurrent JSON-RPC requests seen.

Known differences: usage texts are shortened; a wrong password is answered at once (Core waits
250 ms; set `bad_auth_delay`); `size_on_disk` is the raw block bytes; no wallet,
no P2P, no fee policy (a transaction only needs inputs worth at least its outputs).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from depositwatch.chains.btc_decode import decode_tx
from depositwatch.chains.btc_serialize import serialize_tx
from depositwatch.chains.btc_wire import BlockDecodeError, Tx
from tests.util import serve

from .chain import (
    COIN,
    GENESIS_MERKLE_ROOT,
    NETWORKS,
    BlockRecord,
    ChainRuleError,
    Coin,
    RegtestChain,
    address_to_script,
    is_unspendable,
    script_to_address,
    tx_sizes,
)

WWW_AUTHENTICATE = 'Basic realm="jsonrpc"'
WARMUP_MESSAGE = "Loading block index…"  # Core 25's text, with its ellipsis character

# Core's RPC error codes
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_IN_WARMUP = -28
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# JSON as Core writes it: compact, numbers verbatim (amounts with 8 decimals, doubles with %.16g)


class Raw(str):
    """A JSON number written exactly as this text."""

    __slots__ = ()


def amount(sats: int) -> Raw:
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    return Raw(f"{sign}{whole}.{frac:08d}")


def double(value: float) -> Raw:
    return Raw(f"{value:.16g}")


def to_json(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(double(value))
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def difficulty(bits: int) -> float:
    """Core's GetDifficulty."""
    shift = (bits >> 24) & 0xFF
    diff = 0xFFFF / (bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


# ---------------------------------------------------------------------------------------------
# Scripts: Core's GetOp, ScriptToAsmStr, Solver and InferDescriptor

_OP_NAMES_FROM_0X61 = """
    OP_NOP OP_VER OP_IF OP_NOTIF OP_VERIF OP_VERNOTIF OP_ELSE OP_ENDIF OP_VERIFY OP_RETURN OP_TOALTSTACK
    OP_FROMALTSTACK OP_2DROP OP_2DUP OP_3DUP OP_2OVER OP_2ROT OP_2SWAP OP_IFDUP OP_DEPTH OP_DROP OP_DUP OP_NIP
    OP_OVER OP_PICK OP_ROLL OP_ROT OP_SWAP OP_TUCK OP_CAT OP_SUBSTR OP_LEFT OP_RIGHT OP_SIZE OP_INVERT OP_AND
    OP_OR OP_XOR OP_EQUAL OP_EQUALVERIFY OP_RESERVED1 OP_RESERVED2 OP_1ADD OP_1SUB OP_2MUL OP_2DIV OP_NEGATE
    OP_ABS OP_NOT OP_0NOTEQUAL OP_ADD OP_SUB OP_MUL OP_DIV OP_MOD OP_LSHIFT OP_RSHIFT OP_BOOLAND OP_BOOLOR
    OP_NUMEQUAL OP_NUMEQUALVERIFY OP_NUMNOTEQUAL OP_LESSTHAN OP_GREATERTHAN OP_LESSTHANOREQUAL
    OP_GREATERTHANOREQUAL OP_MIN OP_MAX OP_WITHIN OP_RIPEMD160 OP_SHA1 OP_SHA256 OP_HASH160 OP_HASH256
    OP_CODESEPARATOR OP_CHECKSIG OP_CHECKSIGVERIFY OP_CHECKMULTISIG OP_CHECKMULTISIGVERIFY OP_NOP1
    OP_CHECKLOCKTIMEVERIFY OP_CHECKSEQUENCEVERIFY OP_NOP4 OP_NOP5 OP_NOP6 OP_NOP7 OP_NOP8 OP_NOP9 OP_NOP10
    OP_CHECKSIGADD
"""
_OP_NAMES = {
    0x4F: "-1",
    0x50: "OP_RESERVED",
    **{0x50 + n: str(n) for n in range(1, 17)},
    **dict(enumerate(_OP_NAMES_FROM_0X61.split(), start=0x61)),
    0xFF: "OP_INVALIDOPCODE",
}
_SIGHASH_NAMES = {
    0x01: "ALL",
    0x81: "ALL|ANYONECANPAY",
    0x02: "NONE",
    0x82: "NONE|ANYONECANPAY",
    0x03: "SINGLE",
    0x83: "SINGLE|ANYONECANPAY",
}


def script_ops(script: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(opcode, pushed data or None) per operation; (-1, None) at a malformed push, then stops."""
    i, n = 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        if op > 0x4E:
            yield op, None
            continue
        width = {0x4C: 1, 0x4D: 2, 0x4E: 4}.get(op, 0)
        if i + width > n:
            yield -1, None
            return
        size = int.from_bytes(script[i : i + width], "little") if width else op
        i += width
        if i + size > n:
            yield -1, None
            return
        yield op, script[i : i + size]
        i += size


def script_num_value(data: bytes) -> int:
    """CScriptNum of up to 4 bytes, minimal encoding not required."""
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _is_strict_der(sig: bytes) -> bool:
    """BIP66 IsValidSignatureEncoding (with the sighash byte)."""
    n = len(sig)
    if n < 9 or n > 73 or sig[0] != 0x30 or sig[1] != n - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= n:
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != n or sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80:
        return False
    if len_r > 1 and sig[4] == 0 and not sig[5] & 0x80:
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    return not (len_s > 1 and sig[len_r + 6] == 0 and not sig[len_r + 7] & 0x80)


def script_asm(script: bytes, *, sighash_decode: bool = False) -> str:
    """Core's ScriptToAsmStr."""
    parts = []
    for op, data in script_ops(script):
        if op < 0:
            parts.append("[error]")
            break
        if data is None:
            parts.append(_OP_NAMES.get(op, "OP_UNKNOWN"))
        elif len(data) <= 4:
            parts.append(str(script_num_value(data)))
        elif sighash_decode and not is_unspendable(script) and _is_strict_der(data):
            name = _SIGHASH_NAMES.get(data[-1])
            parts.append(data[:-1].hex() + f"[{name}]" if name else data.hex())
        else:
            parts.append(data.hex())
    return " ".join(parts)


def _pubkey_valid_size(key: bytes) -> bool:
    """CPubKey::ValidSize."""
    return (len(key) == 33 and key[0] in (2, 3)) or (len(key) == 65 and key[0] in (4, 6, 7))


_P = 2**256 - 2**32 - 977


def _xonly_on_curve(x: bytes) -> bool:
    value = int.from_bytes(x, "big")
    if value >= _P:
        return False
    rhs = (pow(value, 3, _P) + 7) % _P
    return pow(pow(rhs, (_P + 1) // 4, _P), 2, _P) == rhs


def _small_int(op: int, data: bytes | None) -> int | None:
    if 0x51 <= op <= 0x60:
        return op - 0x50
    if data is not None and 0 < len(data) <= 4 and op == len(data):  # a minimal push of a number
        return script_num_value(data)
    return None


def solver(script: bytes) -> tuple[str, list[bytes]]:
    """Core 25's Solver: the output type name and the solutions (keys, hashes, programs)."""
    n = len(script)
    if n == 23 and script[0] == 0xA9 and script[1] == 0x14 and script[22] == 0x87:
        return "scripthash", [script[2:22]]
    if 4 <= n <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] + 2 == n:
        version, program = (script[0] - 0x50 if script[0] else 0), script[2:]
        if version == 0 and len(program) == 20:
            return "witness_v0_keyhash", [program]
        if version == 0 and len(program) == 32:
            return "witness_v0_scripthash", [program]
        if version == 1 and len(program) == 32:
            return "witness_v1_taproot", [program]
        if version != 0:
            return "witness_unknown", [bytes((version,)), program]
        return "nonstandard", []
    if n >= 1 and script[0] == 0x6A and all(op >= 0 and op <= 0x60 for op, _ in script_ops(script[1:])):
        return "nulldata", []
    if n in (35, 67) and script[0] == n - 2 and script[-1] == 0xAC and _pubkey_valid_size(script[1:-1]):
        return "pubkey", [script[1:-1]]
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash", [script[3:23]]
    if n >= 1 and script[-1] == 0xAE:
        ops = list(script_ops(script))
        if len(ops) >= 3 and all(op >= 0 for op, _ in ops):
            required = _small_int(*ops[0])
            keys = []
            i = 1
            while i < len(ops) and ops[i][1] is not None and _pubkey_valid_size(ops[i][1] or b""):
                keys.append(ops[i][1] or b"")
                i += 1
            count = _small_int(*ops[i]) if i < len(ops) else None
            if (
                required is not None
                and count is not None
                and 1 <= required <= count <= 20
                and len(keys) == count
                and i == len(ops) - 2
            ):
                return "multisig", [bytes((required,)), *keys, bytes((count,))]
    return "nonstandard", []


_DESC_INPUT = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_DESC_CHECKSUM = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _desc_polymod(c: int, val: int) -> int:
    c0 = c >> 35
    c = ((c & 0x7FFFFFFFF) << 5) ^ val
    for bit, gen in enumerate((0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)):
        if c0 >> bit & 1:
            c ^= gen
    return c


def descriptor_checksum(desc: str) -> str:
    """Core's DescriptorChecksum; empty for characters outside its set."""
    c, cls, clscount = 1, 0, 0
    for ch in desc:
        pos = _DESC_INPUT.find(ch)
        if pos < 0:
            return ""
        c = _desc_polymod(c, pos & 31)
        cls = cls * 3 + (pos >> 5)
        clscount += 1
        if clscount == 3:
            c = _desc_polymod(c, cls)
            cls = clscount = 0
    if clscount:
        c = _desc_polymod(c, cls)
    for _ in range(8):
        c = _desc_polymod(c, 0)
    c ^= 1
    return "".join(_DESC_CHECKSUM[(c >> (5 * (7 - j))) & 31] for j in range(8))


def _with_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def _hash160(data: bytes) -> bytes | None:
    try:
        return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()
    except ValueError:  # OpenSSL without its legacy provider
        return None


def infer_descriptor(script: bytes, network: str = "regtest") -> str:
    """Core's InferDescriptor with no keys known, with its checksum."""
    kind, solutions = solver(script)
    if kind == "witness_v1_taproot" and _xonly_on_curve(solutions[0]):
        return _with_checksum(f"rawtr({solutions[0].hex()})")
    if kind == "pubkey" and solutions[0][0] in (2, 3, 4):
        return _with_checksum(f"pk({solutions[0].hex()})")
    if kind == "multisig" and all(key[0] in (2, 3, 4) for key in solutions[1:-1]):
        keys = ",".join(key.hex() for key in solutions[1:-1])
        return _with_checksum(f"multi({solutions[0][0]},{keys})")
    address = script_to_address(script, network)
    if address is None and kind == "pubkey":
        h160 = _hash160(solutions[0])
        if h160 is not None:
            address = script_to_address(b"\x76\xa9\x14" + h160 + b"\x88\xac", network)
    if address is not None:
        return _with_checksum(f"addr({address})")
    return _with_checksum(f"raw({script.hex()})")


def parse_descriptor(text: str, network: str) -> bytes:
    """The script of a `raw()` or `addr()` descriptor, checksum optional (as scantxoutset takes them)."""
    body, *checks = text.split("#")
    if len(checks) > 1:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Multiple '#' symbols")
    if checks and len(checks[0]) != 8:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"Expected 8 character checksum, not {len(checks[0])} characters")
    computed = descriptor_checksum(body)
    if not computed:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Invalid characters in payload")
    if checks and checks[0] != computed:
        raise RpcError(
            RPC_INVALID_ADDRESS_OR_KEY,
            f"Provided checksum '{checks[0]}' does not match computed checksum '{computed}'",
        )
    name, _, rest = body.partition("(")
    if not rest.endswith(")"):
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"'{body}' is not a valid descriptor function")
    inner = rest[:-1]
    if name == "raw":
        try:
            script = bytes.fromhex(inner)
        except ValueError:
            script = b""
        if not script or len(inner) != 2 * len(script):  # Core's IsHex: even, non-empty, hex only
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Raw script is not hex")
        return script
    if name == "addr":
        try:
            return address_to_script(inner, network)
        except ValueError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Address is not valid") from None
    if name in {"pk", "pkh", "wpkh", "sh", "wsh", "combo", "multi", "sortedmulti", "tr", "rawtr"}:
        raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"{name}() descriptors are not supported by this test node")
    raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"'{body}' is not a valid descriptor function")


def script_pub_key_json(script: bytes, network: str) -> dict[str, Any]:
    """Core's ScriptToUniv with hex and address: asm, desc, hex, address (if any), type."""
    kind, _ = solver(script)
    out: dict[str, Any] = {"asm": script_asm(script), "desc": infer_descriptor(script, network), "hex": script.hex()}
    address = script_to_address(script, network)
    if address is not None and kind != "pubkey":
        out["address"] = address
    out["type"] = kind
    return out


# ---------------------------------------------------------------------------------------------
# Arguments


_UV_TYPES = {"str": "string", "str_hex": "string", "num": "number", "bool": "bool", "arr": "array", "obj": "object"}


def _uv_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(frozen=True)
class Arg:
    names: str
    type: str  # a key of _UV_TYPES, or "any" (an amount, or a type Core does not check)
    required: bool = False
    skip_type_check: bool = False

    def mismatch(self, value: Any) -> str | None:
        if self.skip_type_check or self.type == "any" or (value is None and not self.required):
            return None
        expected = _UV_TYPES[self.type]
        if _uv_type(value) != expected:
            return f"JSON value of type {_uv_type(value)} is not of expected type {expected}"
        return None


def get_int(value: Any) -> int:
    """UniValue::getInt<int>: -1 errors as Core's std::runtime_error becomes RPC_MISC_ERROR."""
    if _uv_type(value) != "number":
        raise RpcError(RPC_MISC_ERROR, f"JSON value of type {_uv_type(value)} is not of expected type number")
    if isinstance(value, float) or not -(2**31) <= value < 2**31:
        raise RpcError(RPC_MISC_ERROR, "JSON integer out of range")
    return int(value)


def get_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise RpcError(RPC_MISC_ERROR, f"JSON value of type {_uv_type(value)} is not of expected type bool")
    return value


def parse_hash(value: Any, name: str) -> str:
    """Core's ParseHashV."""
    if not isinstance(value, str):
        raise RpcError(RPC_MISC_ERROR, f"JSON value of type {_uv_type(value)} is not of expected type string")
    if len(value) != 64:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')") from None
    return value.lower()


def parse_verbosity(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    return get_int(value)


@dataclass(frozen=True)
class Method:
    handler: Callable[[list[Any]], Any]
    args: tuple[Arg, ...]
    summary: str

    def usage(self, name: str) -> str:
        shown = " ".join(a.names.split("|")[0] if a.required else f"( {a.names.split('|')[0]} )" for a in self.args)
        lines = [f"{name} {shown}".rstrip(), "", self.summary, ""]
        if self.args:
            lines.append("Arguments:")
            for i, arg in enumerate(self.args, 1):
                need = "required" if arg.required else "optional"
                lines.append(f"{i}. {arg.names.split('|')[0]}    ({_UV_TYPES.get(arg.type, 'any')}, {need})")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The server


class BitcoinRegtestServer:
    """`async with BitcoinRegtestServer() as node:` then `node.url`, `node.user`, `node.password`,
    and `node.chain` (a `RegtestChain`) to shape the chain."""

    def __init__(
        self,
        chain: RegtestChain | None = None,
        *,
        user: str = "depositwatch",
        password: str | None = None,
        chain_name: str = "regtest",
        version: int = 250000,
        txindex: bool = True,
        rest: bool = True,
        bad_auth_delay: float = 0.0,
        port: int = 0,
        zmq: bool = False,
    ) -> None:
        self.chain = chain or RegtestChain()
        self.zmq = zmq
        self.zmq_url: str | None = None
        self.zmq_sent: dict[bytes, int] = {}  # topic -> messages published
        self._publisher: Any = None
        self.user = user
        self.password = password or secrets.token_hex(12)
        self.chain_name = chain_name
        self.version = version
        self.txindex = txindex
        self.rest = rest
        self.bad_auth_delay = bad_auth_delay
        self.port = port
        self.latency = 0.0
        self.zmq_notifications: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._warmup: str | None = None
        self._ibd_done = False
        self._started = time.time()
        self._runner: web.AppRunner | None = None
        self._methods = self._method_table()

    # -- lifecycle and faults -----------------------------------------------------------------

    async def __aenter__(self) -> BitcoinRegtestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.close()

    def close(self) -> None:
        """Close the ZMQ publisher (the HTTP listener closes with `stop()`)."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            self.chain.listeners.remove(self._publish)
            publisher.close(linger=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port the first time, the same port afterwards)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner, self.port = await serve(app, self.port)
        if self.zmq and self._publisher is None:
            self._open_publisher()

    def _open_publisher(self) -> None:
        import zmq

        publisher = zmq.Context.instance().socket(zmq.PUB)
        port = publisher.bind_to_random_port("tcp://127.0.0.1")
        self._publisher = publisher
        self.zmq_url = f"tcp://127.0.0.1:{port}"
        self.zmq_notifications = [
            {"type": f"pub{topic}", "address": self.zmq_url, "hwm": 1000}
            for topic in ("hashblock", "hashtx", "rawblock", "rawtx", "sequence")
        ]
        self.chain.listeners.append(self._publish)

    def _publish(self, event: str, value: str) -> None:
        """A chain event as Core's ZMQ notifiers send it."""
        if event == "block":
            record = self.chain.blocks[value]
            self._send(b"hashblock", bytes.fromhex(value))
            self._send(b"rawblock", record.raw)
            self._send(b"sequence", bytes.fromhex(value) + b"C")
        elif event == "tx":
            entry = self.chain.mempool.get(value)
            self._send(b"hashtx", bytes.fromhex(value))
            if entry is not None:
                self._send(b"rawtx", serialize_tx(entry.tx))
            sequence = self.chain.mempool_sequence.to_bytes(8, "little")
            self._send(b"sequence", bytes.fromhex(value) + b"A" + sequence)

    def _send(self, topic: bytes, body: bytes) -> None:
        import zmq

        number = self.zmq_sent.get(topic, 0)
        self.zmq_sent[topic] = number + 1
        # PUB never blocks: with no subscriber, or one too slow, messages are dropped, as in Core
        self._publisher.send_multipart([topic, body, (number % 2**32).to_bytes(4, "little")], flags=zmq.NOBLOCK)

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def go_down(self) -> None:
        """Crash: refuse connections and drop open ones, until `come_up()`."""
        await self.stop()

    async def come_up(self) -> None:
        """Listen again on the same port."""
        await self.start()

    def warming_up(self, on: bool = True, message: str = WARMUP_MESSAGE) -> None:
        """While on, every RPC answers -28 with `message` (Core's start-up state) and REST 503."""
        self._warmup = message if on else None

    # -- HTTP -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/" or path.startswith("/wallet/"):
            return await self._rpc(request)
        if path.startswith("/rest/") and self.rest:
            return self._rest(path[len("/rest/") :])
        return web.Response(status=404)

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, self.user) and secrets.compare_digest(password, self.password)

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="JSONRPC server handles only POST requests")
        if not self._authorized(request.headers.get("Authorization")):
            if self.bad_auth_delay:
                await asyncio.sleep(self.bad_auth_delay)
            return web.Response(status=401, headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            if self.latency:
                await asyncio.sleep(self.latency)
            status, reply = self._handle_body(body)
        finally:
            self.in_flight -= 1
        if reply is None:
            return web.Response(status=status)
        return web.Response(status=status, body=(reply + "\n").encode(), content_type="application/json")

    def _handle_body(self, body: bytes) -> tuple[int, str | None]:
        try:
            value = json.loads(body)
        except ValueError:
            return 500, self._reply(None, RpcError(RPC_PARSE_ERROR, "Parse error"), None, v2=False)
        if isinstance(value, dict):
            v2 = self._is_v2(value)
            try:
                result = self._execute_request(value)
            except RpcError as error:
                if v2:
                    return 200, self._reply(None, error, value.get("id"), v2=True)
                status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(error.code, 500)
                return status, self._reply(None, error, value.get("id"), v2=False)
            if v2 and "id" not in value:
                return 204, None
            return 200, self._reply(result, None, value.get("id"), v2=v2)
        if isinstance(value, list):
            replies = []
            for item in value:
                v2 = isinstance(item, dict) and self._is_v2(item)
                request_id = item.get("id") if isinstance(item, dict) else None
                try:
                    reply = self._reply(self._execute_request(item), None, request_id, v2=v2)
                except RpcError as error:
                    reply = self._reply(None, error, request_id, v2=v2)
                if not (v2 and isinstance(item, dict) and "id" not in item):
                    replies.append(reply)
            if value and not replies:
                return 204, None
            return 200, "[" + ",".join(replies) + "]"
        return 500, self._reply(None, RpcError(RPC_PARSE_ERROR, "Top-level object parse error"), None, v2=False)

    def _is_v2(self, request: dict[str, Any]) -> bool:
        return self.version >= 280000 and request.get("jsonrpc") == "2.0"

    def _reply(self, result: Any, error: RpcError | None, request_id: Any, *, v2: bool) -> str:
        body: dict[str, Any] = {"jsonrpc": "2.0"} if v2 else {}
        error_json = None if error is None else {"code": error.code, "message": error.message}
        if not v2 or error is None:
            body["result"] = result
        if not v2 or error is not None:
            body["error"] = error_json
        body["id"] = request_id
        return to_json(body)

    def _execute_request(self, request: Any) -> Any:
        """Core's JSONRPCRequest::parse, then CRPCTable::execute."""
        if not isinstance(request, dict):
            raise RpcError(RPC_INVALID_REQUEST, "Invalid Request object")
        if self.version >= 280000 and request.get("jsonrpc") not in (None, "1.0", "2.0"):
            raise RpcError(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
        method = request.get("method")
        if method is None:
            raise RpcError(RPC_INVALID_REQUEST, "Missing method")
        if not isinstance(method, str):
            raise RpcError(RPC_INVALID_REQUEST, "Method must be a string")
        params = request.get("params")
        if params is None:
            params = []
        elif not isinstance(params, list | dict):
            raise RpcError(RPC_INVALID_REQUEST, "Params must be an array or object")
        self.calls.append(method)
        if self._warmup is not None:
            raise RpcError(RPC_IN_WARMUP, self._warmup)
        spec = self._methods.get(method)
        if spec is None:
            raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")
        if isinstance(params, dict):
            params = self._named(spec, params)
        required = sum(1 for a in spec.args if a.required)
        if not required <= len(params) <= len(spec.args):
            raise RpcError(RPC_MISC_ERROR, spec.usage(method))
        padded = [*params, *([None] * (len(spec.args) - len(params)))]
        mismatches = {
            f"Position {i} ({arg.names})": problem
            for i, (arg, value) in enumerate(zip(spec.args, padded, strict=True), 1)
            if (problem := arg.mismatch(value)) is not None
        }
        if mismatches:
            raise RpcError(RPC_TYPE_ERROR, "Wrong type passed:\n" + json.dumps(mismatches, indent=4))
        try:
            return spec.handler(padded)
        except ChainRuleError as error:
            raise RpcError(error.code, error.message) from None

    @staticmethod
    def _named(spec: Method, named: dict[str, Any]) -> list[Any]:
        """Core's transformNamedArguments."""
        left = dict(named)
        out: list[Any] = []
        hole = 0
        for arg in spec.args:
            key = next((n for n in arg.names.split("|") if n in left), None)
            if key is None:
                hole += 1
                continue
            out += [None] * hole
            hole = 0
            out.append(left.pop(key))
        if left:
            raise RpcError(RPC_INVALID_PARAMETER, f"Unknown named parameter {next(iter(left))}")
        return out

    # -- REST -------------------------------------------------------------------------------

    def _rest(self, rest_path: str) -> web.Response:
        if self._warmup is not None:
            return self._rest_error(503, f"Service temporarily unavailable: {self._warmup}")
        if rest_path.startswith("chaininfo"):
            _, fmt = self._split_format(rest_path)
            if fmt != "json":
                return self._rest_error(404, "output format not found (available: json)")
            return self._rest_json(self.getblockchaininfo([]))
        if rest_path.startswith("mempool/contents"):
            _, fmt = self._split_format(rest_path)
            if fmt != "json":
                return self._rest_error(404, "output format not found (available: json)")
            return self._rest_json(self.getrawmempool([True, False]))
        for prefix, verbosity in (("block/notxdetails/", 1), ("block/", 2)):
            if rest_path.startswith(prefix):
                return self._rest_block(rest_path[len(prefix) :], verbosity)
        if rest_path.startswith("tx/"):
            return self._rest_tx(rest_path[len("tx/") :])
        if rest_path.startswith("blockhashbyheight/"):
            return self._rest_hash_by_height(rest_path[len("blockhashbyheight/") :])
        return web.Response(status=404)

    @staticmethod
    def _split_format(part: str) -> tuple[str, str]:
        name, dot, fmt = part.rpartition(".")
        return (name, fmt) if dot else (part, "")

    @staticmethod
    def _rest_error(status: int, message: str) -> web.Response:
        return web.Response(status=status, text=message + "\r\n", content_type="text/plain")

    @staticmethod
    def _rest_json(value: Any) -> web.Response:
        return web.Response(body=(to_json(value) + "\n").encode(), content_type="application/json")

    def _rest_raw(self, raw: bytes, fmt: str, as_json: Callable[[], Any]) -> web.Response:
        if fmt == "bin":
            return web.Response(body=raw, content_type="application/octet-stream")
        if fmt == "hex":
            return web.Response(text=raw.hex() + "\n", content_type="text/plain")
        if fmt == "json":
            return self._rest_json(as_json())
        return self._rest_error(404, "output format not found (available: .bin, .hex, .json)")

    def _rest_block(self, part: str, verbosity: int) -> web.Response:
        block_hash, fmt = self._split_format(part)
        if not _is_hash(block_hash):
            return self._rest_error(400, f"Invalid hash: {block_hash}")
        record = self.chain.blocks.get(block_hash.lower())
        if record is None:
            return self._rest_error(404, f"{block_hash} not found")
        return self._rest_raw(record.raw, fmt, lambda: self._block_json(record, verbosity))

    def _rest_tx(self, part: str) -> web.Response:
        txid, fmt = self._split_format(part)
        if not _is_hash(txid):
            return self._rest_error(400, f"Invalid hash: {txid}")
        found = self._find_tx(txid.lower(), None)
        if found is None:
            return self._rest_error(404, f"{txid} not found")
        tx, block_hash = found
        return self._rest_raw(serialize_tx(tx), fmt, lambda: self._tx_to_json(tx, block_hash, None))

    def _rest_hash_by_height(self, part: str) -> web.Response:
        text, fmt = self._split_format(part)
        if not text.isdigit():
            return self._rest_error(400, f"Invalid height: {text}")
        height = int(text)
        if height > self.chain.height:
            return self._rest_error(404, "Block height out of range")
        block_hash = self.chain.active[height]
        if fmt == "hex":  # the display form, unlike the other .hex answers
            return web.Response(text=block_hash + "\n", content_type="text/plain")
        return self._rest_raw(bytes.fromhex(block_hash)[::-1], fmt, lambda: {"blockhash": block_hash})

    # -- JSON shapes ------------------------------------------------------------------------

    @property
    def network(self) -> str:
        return self.chain_name if self.chain_name in NETWORKS else "regtest"

    def _initial_block_download(self) -> bool:
        """Core latches IBD off once the tip is less than -maxtipage (24 h) old."""
        if not self._ibd_done and self.chain.tip.header.time >= self.chain.now() - 24 * 60 * 60:
            self._ibd_done = True
        return not self._ibd_done

    def _header_json(self, record: BlockRecord) -> dict[str, Any]:
        chain = self.chain
        header = record.header
        active = chain.in_active_chain(record)
        out: dict[str, Any] = {
            "hash": record.hash,
            "confirmations": chain.height - record.height + 1 if active else -1,
            "height": record.height,
            "version": header.version,
            "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
            "merkleroot": header.merkle_root,
            "time": header.time,
            "mediantime": chain.median_time_past(record),
            "nonce": header.nonce,
            "bits": f"{header.bits:08x}",
            "difficulty": double(difficulty(header.bits)),
            "chainwork": f"{record.chainwork:064x}",
            "nTx": len(record.txs),
        }
        if record.height > 0:
            out["previousblockhash"] = record.prev_hash
        following = chain.next_in_chain(record)
        if following is not None:
            out["nextblockhash"] = following.hash
        return out

    def _block_json(self, record: BlockRecord, verbosity: int) -> dict[str, Any]:
        out = self._header_json(record)
        out["strippedsize"] = record.stripped_size
        out["size"] = len(record.raw)
        out["weight"] = record.weight
        if verbosity == 1:
            out["tx"] = [tx.txid for tx in record.txs]
        else:
            out["tx"] = [
                self._tx_json(tx, record.undo[i - 1] if i and record.undo else None, verbosity)
                for i, tx in enumerate(record.txs)
            ]
        return out

    def _tx_json(self, tx: Tx, undo: tuple[Coin, ...] | None, verbosity: int) -> dict[str, Any]:
        """Core's TxToUniv (include_hex, no block hash)."""
        network = self.network
        size, _, weight, vsize = tx_sizes(tx)
        vin = []
        for i, txin in enumerate(tx.inputs):
            item: dict[str, Any]
            if tx.is_coinbase:
                item = {"coinbase": txin.script_sig.hex()}
            else:
                item = {
                    "txid": txin.prev_txid_hex,
                    "vout": txin.prev_vout,
                    "scriptSig": {
                        "asm": script_asm(txin.script_sig, sighash_decode=True),
                        "hex": txin.script_sig.hex(),
                    },
                }
            if txin.witness:
                item["txinwitness"] = [w.hex() for w in txin.witness]
            if undo is not None and verbosity >= 3:
                coin = undo[i]
                item["prevout"] = {
                    "generated": coin.coinbase,
                    "height": coin.height,
                    "value": amount(coin.value),
                    "scriptPubKey": script_pub_key_json(coin.script, network),
                }
            item["sequence"] = txin.sequence
            vin.append(item)
        vout = [
            {"value": amount(out.value), "n": n, "scriptPubKey": script_pub_key_json(out.script, network)}
            for n, out in enumerate(tx.outputs)
        ]
        entry: dict[str, Any] = {
            "txid": tx.txid,
            "hash": tx.wtxid,
            "version": tx.version,
            "size": size,
            "vsize": vsize,
            "weight": weight,
            "locktime": tx.locktime,
            "vin": vin,
            "vout": vout,
        }
        if undo is not None:
            entry["fee"] = amount(sum(c.value for c in undo) - sum(o.value for o in tx.outputs))
        entry["hex"] = serialize_tx(tx).hex()
        return entry

    def _tx_to_json(
        self, tx: Tx, block_hash: str | None, undo: tuple[Coin, ...] | None, verbosity: int = 1
    ) -> dict[str, Any]:
        """Core's TxToJSON: the transaction, then where it is."""
        entry = self._tx_json(tx, undo, verbosity)
        if block_hash is not None:
            entry["blockhash"] = block_hash
            record = self.chain.blocks.get(block_hash)
            if record is not None:
                if self.chain.in_active_chain(record):
                    entry["confirmations"] = self.chain.height - record.height + 1
                    entry["time"] = record.header.time
                    entry["blocktime"] = record.header.time
                else:
                    entry["confirmations"] = 0
        return entry

    def _mempool_entry_json(self, txid: str) -> dict[str, Any]:
        chain = self.chain
        entry = chain.mempool[txid]
        _, _, weight, vsize = tx_sizes(entry.tx)
        ancestors = chain.ancestors(txid)
        descendants = chain.descendants(txid)

        def sizes(txids: Iterator[str] | list[str] | set[str]) -> tuple[int, int]:
            picked = list(txids)
            return sum(tx_sizes(chain.mempool[t].tx)[3] for t in picked), sum(chain.mempool[t].fee for t in picked)

        anc_size, anc_fee = sizes(ancestors)
        desc_size, desc_fee = sizes(descendants)
        replaceable = any(i.sequence < 0xFFFFFFFE for i in entry.tx.inputs) or any(
            i.sequence < 0xFFFFFFFE for a in ancestors for i in chain.mempool[a].tx.inputs
        )
        return {
            "vsize": vsize,
            "weight": weight,
            "time": entry.time,
            "height": entry.height,
            "descendantcount": len(descendants) + 1,
            "descendantsize": desc_size + vsize,
            "ancestorcount": len(ancestors) + 1,
            "ancestorsize": anc_size + vsize,
            "wtxid": entry.tx.wtxid,
            "fees": {
                "base": amount(entry.fee),
                "modified": amount(entry.fee),
                "ancestor": amount(anc_fee + entry.fee),
                "descendant": amount(desc_fee + entry.fee),
            },
            "depends": sorted(entry.parents),
            "spentby": [t for t in chain.mempool if txid in chain.mempool[t].parents],
            "bip125-replaceable": replaceable,
            "unbroadcast": False,
        }

    def _block(self, value: Any, name: str) -> BlockRecord:
        record = self.chain.blocks.get(parse_hash(value, name))
        if record is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return record

    def _find_tx(self, txid: str, block: BlockRecord | None) -> tuple[Tx, str | None] | None:
        """Core's GetTransaction: the mempool (unless a block is named), the txindex, the block."""
        chain = self.chain
        if block is None and txid in chain.mempool:
            return chain.mempool[txid].tx, None
        if self.txindex and txid in chain.txindex:
            where = chain.txindex[txid]
            if block is None or block.hash == where:
                found = next(tx for tx in chain.blocks[where].txs if tx.txid == txid)
                return found, where
        if block is not None:
            for tx in block.txs:
                if tx.txid == txid:
                    return tx, block.hash
        return None

    # -- methods ----------------------------------------------------------------------------

    def _method_table(self) -> dict[str, Method]:
        num, text, hexa, flag, array = "num", "str", "str_hex", "bool", "arr"
        m = Method
        return {
            "getblockchaininfo": m(self.getblockchaininfo, (), "Returns an object containing blockchain state."),
            "getbestblockhash": m(lambda p: self.chain.tip.hash, (), "Returns the hash of the best (tip) block."),
            "getblockcount": m(lambda p: self.chain.height, (), "Returns the height of the most-work chain."),
            "getblockhash": m(
                self.getblockhash, (Arg("height", num, True),), "Returns hash of block in best-block-chain at height."
            ),
            "getblockheader": m(
                self.getblockheader,
                (Arg("blockhash", hexa, True), Arg("verbose", flag)),
                "Returns the block header, as JSON or as hex when verbose is false.",
            ),
            "getblock": m(
                self.getblock,
                (Arg("blockhash", hexa, True), Arg("verbosity|verbose", num, skip_type_check=True)),
                "Returns a block: hex (0), with txids (1), with transactions (2), with prevouts (3).",
            ),
            "getchaintips": m(self.getchaintips, (), "Return information about all known tips in the block tree."),
            "getrawmempool": m(
                self.getrawmempool,
                (Arg("verbose", flag), Arg("mempool_sequence", flag)),
                "Returns all transaction ids in memory pool.",
            ),
            "getmempoolentry": m(self.getmempoolentry, (Arg("txid", hexa, True),), "Returns mempool data for a tx."),
            "getmempoolinfo": m(self.getmempoolinfo, (), "Returns details on the active state of the TX memory pool."),
            "getrawtransaction": m(
                self.getrawtransaction,
                (Arg("txid", hexa, True), Arg("verbosity|verbose", num, skip_type_check=True), Arg("blockhash", hexa)),
                "Return the raw transaction data.",
            ),
            "sendrawtransaction": m(
                self.sendrawtransaction,
                (Arg("hexstring", hexa, True), Arg("maxfeerate", "any"), Arg("maxburnamount", "any")),
                "Submit a raw transaction (serialized, hex-encoded) to the mempool.",
            ),
            "gettxout": m(
                self.gettxout,
                (Arg("txid", hexa, True), Arg("n", num, True), Arg("include_mempool", flag)),
                "Returns details about an unspent transaction output.",
            ),
            "scantxoutset": m(
                self.scantxoutset,
                (Arg("action", text, True), Arg("scanobjects", array)),
                "Scans the unspent transaction output set for entries that match output descriptors.",
            ),
            "generatetoaddress": m(
                self.generatetoaddress,
                (Arg("nblocks", num, True), Arg("address", text, True), Arg("maxtries", num)),
                "Mine blocks to an address and return their hashes.",
            ),
            "invalidateblock": m(
                self.invalidateblock, (Arg("blockhash", hexa, True),), "Permanently marks a block as invalid."
            ),
            "setmocktime": m(self.setmocktime, (Arg("timestamp", num, True),), "Set the local time (regtest only)."),
            "getnetworkinfo": m(self.getnetworkinfo, (), "Returns state info regarding P2P networking."),
            "getzmqnotifications": m(
                lambda p: list(self.zmq_notifications), (), "Returns the active ZeroMQ notifications."
            ),
            "uptime": m(lambda p: int(time.time() - self._started), (), "Returns the total uptime of the server."),
        }

    def getblockchaininfo(self, params: list[Any]) -> dict[str, Any]:
        chain = self.chain
        tip = chain.tip
        return {
            "chain": self.chain_name,
            "blocks": chain.height,
            "headers": chain.height,
            "bestblockhash": tip.hash,
            "difficulty": double(difficulty(tip.header.bits)),
            "time": tip.header.time,
            "mediantime": chain.median_time_past(tip),
            "verificationprogress": double(1.0),  # regtest has no chain tx data: nChainTx / nChainTx
            "initialblockdownload": self._initial_block_download(),
            "chainwork": f"{tip.chainwork:064x}",
            "size_on_disk": sum(len(record.raw) + 8 for record in chain.blocks.values()),
            "pruned": False,
            "warnings": [] if self.version >= 280000 else "",
        }

    def getblockhash(self, params: list[Any]) -> str:
        height = get_int(params[0])
        if not 0 <= height <= self.chain.height:
            raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range")
        return self.chain.active[height]

    def getblockheader(self, params: list[Any]) -> Any:
        record = self._block(params[0], "hash")
        if params[1] is False:
            return record.raw[:80].hex()
        return self._header_json(record)

    def getblock(self, params: list[Any]) -> Any:
        record = self._block(params[0], "blockhash")
        value = params[1]
        verbosity = 1 if value is None else (1 if value else 0) if isinstance(value, bool) else get_int(value)
        if verbosity <= 0:
            return record.raw.hex()
        return self._block_json(record, min(verbosity, 3))

    def getchaintips(self, params: list[Any]) -> list[dict[str, Any]]:
        tips = []
        for record, status in self.chain.chain_tips():
            fork = self.chain.fork_point(record)
            tips.append(
                {
                    "height": record.height,
                    "hash": record.hash,
                    "branchlen": record.height - fork.height,
                    "status": status,
                }
            )
        return tips

    def getrawmempool(self, params: list[Any]) -> Any:
        verbose, sequence = bool(params[0]), bool(params[1])
        if verbose and sequence:
            raise RpcError(RPC_INVALID_PARAMETER, "Verbose results cannot contain mempool sequence values.")
        if verbose:
            return {txid: self._mempool_entry_json(txid) for txid in self.chain.mempool}
        txids = list(self.chain.mempool)
        if sequence:
            return {"txids": txids, "mempool_sequence": self.chain.mempool_sequence}
        return txids

    def getmempoolentry(self, params: list[Any]) -> dict[str, Any]:
        txid = parse_hash(params[0], "parameter 1")
        if txid not in self.chain.mempool:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        return self._mempool_entry_json(txid)

    def getmempoolinfo(self, params: list[Any]) -> dict[str, Any]:
        entries = self.chain.mempool.values()
        size = sum(tx_sizes(e.tx)[3] for e in entries)
        return {
            "loaded": True,
            "size": len(entries),
            "bytes": size,
            "usage": size * 4,
            "total_fee": amount(sum(e.fee for e in entries)),
            "maxmempool": 300_000_000,
            "mempoolminfee": amount(1000),
            "minrelaytxfee": amount(1000),
            "incrementalrelayfee": amount(1000),
            "unbroadcastcount": 0,
            "fullrbf": False,
        }

    def getrawtransaction(self, params: list[Any]) -> Any:
        txid = parse_hash(params[0], "parameter 1")
        verbosity = parse_verbosity(params[1], 0)
        if txid == GENESIS_MERKLE_ROOT:
            raise RpcError(
                RPC_INVALID_ADDRESS_OR_KEY,
                "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved",
            )
        block = None
        if params[2] is not None:
            block = self.chain.blocks.get(parse_hash(params[2], "parameter 3"))
            if block is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
        found = self._find_tx(txid, block)
        if found is None:
            if block is not None:
                reason = "No such transaction found in the provided block"
            elif not self.txindex:
                reason = (
                    "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain "
                    "transaction queries"
                )
            else:
                reason = "No such mempool or blockchain transaction"
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, reason + ". Use gettransaction for wallet transactions.")
        tx, block_hash = found
        if verbosity <= 0:
            return serialize_tx(tx).hex()
        result: dict[str, Any] = {}
        if block is not None:
            result["in_active_chain"] = self.chain.in_active_chain(block)
        record = block or (self.chain.blocks.get(block_hash) if block_hash else None)
        undo = None
        if verbosity >= 2 and record is not None and not tx.is_coinbase:
            index = next(i for i, other in enumerate(record.txs) if other.txid == tx.txid)
            undo = record.undo[index - 1]
        result.update(self._tx_to_json(tx, block_hash, undo, 3 if undo is not None else 1))
        return result

    def sendrawtransaction(self, params: list[Any]) -> str:
        try:
            tx = decode_tx(bytes.fromhex(params[0]))
        except (ValueError, BlockDecodeError):
            raise RpcError(
                RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input."
            ) from None
        return self.chain.add_tx(tx)

    def gettxout(self, params: list[Any]) -> Any:
        """Core's gettxout: null for a spent or unknown output; with the mempool (the default), an output
        a mempool transaction spends is null too and a mempool transaction's output has 0 confirmations."""
        outpoint = (parse_hash(params[0], "txid"), get_int(params[1]))
        include_mempool = True if len(params) < 3 or params[2] is None else get_bool(params[2])
        chain = self.chain
        if include_mempool:
            if outpoint in chain.mempool_spent():
                return None
            coin = chain.find_output(outpoint)
        else:
            coin = chain.utxo.get(outpoint)
        if coin is None:
            return None
        return {
            "bestblock": chain.tip.hash,
            "confirmations": 0 if coin.height < 0 else chain.height - coin.height + 1,
            "value": amount(coin.value),
            "scriptPubKey": script_pub_key_json(coin.script, self.network),
            "coinbase": coin.coinbase,
        }

    def scantxoutset(self, params: list[Any]) -> Any:
        action = params[0]
        if action == "status":
            return None
        if action == "abort":
            return False
        if action != "start":
            raise RpcError(RPC_INVALID_PARAMETER, f"Invalid action '{action}'")
        if params[1] is None:
            raise RpcError(RPC_MISC_ERROR, "scanobjects argument is required for the start action")
        wanted: dict[bytes, str] = {}
        for item in params[1]:
            if isinstance(item, str):
                text = item
            elif isinstance(item, dict):
                if item.get("desc") is None:
                    raise RpcError(RPC_INVALID_PARAMETER, "Descriptor needs to be provided in scan object")
                text = str(item["desc"])
            else:
                raise RpcError(RPC_INVALID_PARAMETER, "Scan object needs to be either a string or an object")
            script = parse_descriptor(text, self.network)
            wanted[script] = infer_descriptor(script, self.network)
        chain = self.chain
        hits = sorted(
            ((outpoint, coin) for outpoint, coin in chain.utxo.items() if coin.script in wanted),
            key=lambda item: (bytes.fromhex(item[0][0])[::-1], item[0][1]),
        )
        unspents = []
        for (txid, vout), coin in hits:
            unspent: dict[str, Any] = {
                "txid": txid,
                "vout": vout,
                "scriptPubKey": coin.script.hex(),
                "desc": wanted[coin.script],
                "amount": amount(coin.value),
                "coinbase": coin.coinbase,
                "height": coin.height,
            }
            if self.version >= 270000:
                unspent["blockhash"] = chain.active[coin.height]
                unspent["confirmations"] = chain.height - coin.height + 1
            unspents.append(unspent)
        return {
            "success": True,
            "txouts": len(chain.utxo),
            "height": chain.height,
            "bestblock": chain.tip.hash,
            "unspents": unspents,
            "total_amount": amount(sum(coin.value for _, coin in hits)),
        }

    def generatetoaddress(self, params: list[Any]) -> list[str]:
        count = get_int(params[0])
        try:
            script = address_to_script(params[1], self.network)
        except ValueError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
        return [record.hash for record in self.chain.mine(count, script=script)]

    def invalidateblock(self, params: list[Any]) -> None:
        record = self._block(params[0], "blockhash")
        self.chain.invalidate(record.hash)

    def setmocktime(self, params: list[Any]) -> None:
        stamp = get_int(params[0])
        if stamp < 0:
            raise RpcError(RPC_INVALID_PARAMETER, f"Mocktime cannot be negative: {stamp}.")
        self.chain.set_time(stamp or None)

    def getnetworkinfo(self, params: list[Any]) -> dict[str, Any]:
        major, minor = divmod(self.version // 100, 100)
        return {
            "version": self.version,
            "subversion": f"/Satoshi:{major}.{minor}.0/",
            "protocolversion": 70016,
            "localservices": "0000000000000c09",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
            "localrelay": True,
            "timeoffset": 0,
            "networkactive": True,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": amount(1000),
            "incrementalfee": amount(1000),
            "localaddresses": [],
            "warnings": [] if self.version >= 280000 else "",
        }


def _is_hash(text: str) -> bool:
    if len(text) != 64:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
