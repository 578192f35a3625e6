"""Small hand-assembled contracts for the blind-spot tests, placed with `anvil_setCode` or deployed raw.

- `emitter_code()`: every call emits one `Transfer(from, to, value)` log from the calldata words
  (from, to, value) and returns nothing, so `symbol()` and `decimals()` answer empty: a token whose
  metadata is garbage.
- `forwarder_code(target)`: a deposit-address contract. A plain ETH send (no calldata) is passed on to
  `target` by its receive path; a call with calldata `target (32 bytes) | value (32 bytes) | payload`
  makes it CALL `target` with `value` wei of its own and `payload` (an ERC-20 `transfer`, say), and
  reverts if that call fails.
- `forwarding_creation(target)`: init code whose constructor passes the creation's value to `target`
  and leaves no code behind.
"""

from __future__ import annotations

from collections.abc import Sequence

TRANSFER_TOPIC = bytes.fromhex("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")

OPS = {
    "STOP": 0x00,
    "SUB": 0x03,
    "CALLVALUE": 0x34,
    "CALLDATALOAD": 0x35,
    "CALLDATASIZE": 0x36,
    "CALLDATACOPY": 0x37,
    "POP": 0x50,
    "JUMPI": 0x57,
    "GAS": 0x5A,
    "JUMPDEST": 0x5B,
    "LOG3": 0xA3,
    "CALL": 0xF1,
    "RETURN": 0xF3,
    "REVERT": 0xFD,
}

Op = str | int | bytes | tuple[str, str]  # opcode name, PUSH1 of a small int, PUSHn of bytes, ("push", label)


def assemble(program: Sequence[Op]) -> bytes:
    """Opcodes, pushes and labels ("@name" marks a JUMPDEST) to bytecode; label pushes are PUSH1."""
    labels: dict[str, int] = {}
    size = 0
    for op in program:
        if isinstance(op, str) and op.startswith("@"):
            labels[op[1:]] = size
            size += 1
        elif isinstance(op, str):
            size += 1
        elif isinstance(op, int | tuple):
            size += 2
        else:
            size += 1 + len(op)
    code = bytearray()
    for op in program:
        if isinstance(op, str) and op.startswith("@"):
            code.append(OPS["JUMPDEST"])
        elif isinstance(op, str):
            code.append(OPS[op])
        elif isinstance(op, int):
            assert 0 <= op < 256
            code += bytes([0x60, op])
        elif isinstance(op, tuple):
            code += bytes([0x60, labels[op[1]]])
        else:
            assert 1 <= len(op) <= 32
            code += bytes([0x5F + len(op)]) + op
    return bytes(code)


def emitter_code() -> bytes:
    return assemble(
        [
            0x20, 0x40, 0x00, "CALLDATACOPY",  # memory[0:32] = value word
            0x20, "CALLDATALOAD",  # topic 2: to
            0x00, "CALLDATALOAD",  # topic 1: from
            TRANSFER_TOPIC,
            0x20, 0x00, "LOG3",
            "STOP",
        ]
    )  # fmt: skip


def forwarder_code(target: bytes) -> bytes:
    assert len(target) == 20
    return assemble(
        [
            "CALLDATASIZE", ("push", "generic"), "JUMPI",
            # receive: a CALL of target with the call value, no data, all gas
            0, 0, 0, 0, "CALLVALUE", target, "GAS", "CALL", "POP", "STOP",
            "@generic",
            0x40, "CALLDATASIZE", "SUB", 0x40, 0x00, "CALLDATACOPY",  # memory[0:] = payload
            0, 0, 0x40, "CALLDATASIZE", "SUB", 0,  # ret size, ret offset, args size, args offset
            0x20, "CALLDATALOAD", 0x00, "CALLDATALOAD", "GAS", "CALL",  # value, target
            ("push", "ok"), "JUMPI",
            0, 0, "REVERT",
            "@ok", "STOP",
        ]
    )  # fmt: skip


def forwarding_creation(target: bytes) -> bytes:
    assert len(target) == 20
    return assemble(
        [
            0, 0, 0, 0, "CALLVALUE", target, "GAS", "CALL", "POP",
            0, 0, "RETURN",  # no runtime code
        ]
    )  # fmt: skip
