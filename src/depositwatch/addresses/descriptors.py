"""Key-tree entries: output descriptors (BIP380-386, BIP389 multipath) and bare extended keys.

A tree is one extended public key and a path whose last step is `*`: every index of that last step
is one address. Accepted forms:

* Bitcoin: `pkh(KEY)`, `sh(wpkh(KEY))`, `wpkh(KEY)`, `tr(KEY)` (BIP86 key-path only), or a bare
  SLIP-132 key mapped to its script: xpub/tpub -> pkh, ypub/upub -> sh(wpkh), zpub/vpub -> wpkh.
* EVM and TRON: the descriptor notation without a wrapper, `[fingerprint/44h/60h/0h]xpub.../0/*`.

KEY is `[fingerprint/origin path]` (optional), the key, then non-hardened steps and `/*`. A bare key
without steps gets `default_path` (`/0/*`, the receive branch). A multipath step `<0;1>` (BIP389)
expands into one tree per value, each with its own canonical descriptor: a match then names one tree
and one index, never a branch. `#checksum` is verified when present; `KeyTree.descriptor` renders
the canonical form (`h` for hardened origin steps, xpub/tpub versions, checksum appended), which
`parse_trees` reads back to the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from depositwatch.addresses.hd import (
    HARDENED,
    ExtendedPublicKey,
    KeyNetwork,
    KeyScript,
    KeyTreeError,
    PrivateKeyRefused,
    parse_extended_public_key,
    private_material_kind,
)

INPUT_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)
_CHECKSUM_LENGTH = 8
MAX_DESCRIPTOR_LENGTH = 1000  # a single-key descriptor with a deep origin is under 300 characters
_MAX_STEPS = 8  # derivation steps after the key, the wildcard included
_MAX_ORIGIN_STEPS = 32
_MAX_MULTIPATH = 16
DEFAULT_PATH = "/0/*"


class TreeChain(StrEnum):
    """The chain family a tree's keys are for."""

    BITCOIN = "bitcoin"
    EVM = "evm"
    TRON = "tron"


class ScriptType(StrEnum):
    """What each child key becomes: a Bitcoin output script or a 20-byte account."""

    PKH = "pkh"
    SH_WPKH = "sh_wpkh"
    WPKH = "wpkh"
    TR = "tr"
    EVM = "evm"
    TRON = "tron"


_WRAPPERS = {
    ScriptType.PKH: ("pkh(", ")"),
    ScriptType.SH_WPKH: ("sh(wpkh(", "))"),
    ScriptType.WPKH: ("wpkh(", ")"),
    ScriptType.TR: ("tr(", ")"),
}
_BARE_SCRIPT = {KeyScript.PLAIN: ScriptType.PKH, KeyScript.SH_WPKH: ScriptType.SH_WPKH, KeyScript.WPKH: ScriptType.WPKH}
_CHAIN_SCRIPT = {TreeChain.EVM: ScriptType.EVM, TreeChain.TRON: ScriptType.TRON}


@dataclass(frozen=True, slots=True)
class KeyOrigin:
    """Where the key sits below its master: the master's fingerprint and the path (hardened bit set)."""

    fingerprint: bytes
    path: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KeyTree:
    """One tree: every child `path/i` of `key`, turned into `script`'s key bytes."""

    chain: TreeChain
    script: ScriptType
    network: KeyNetwork
    key: ExtendedPublicKey
    origin: KeyOrigin | None
    path: tuple[int, ...]  # non-hardened steps between the key and the ranged index

    @property
    def descriptor(self) -> str:
        """The canonical text of this tree, checksum included: its stable identity in the book."""
        prefix = "xpub" if self.network is KeyNetwork.MAINNET else "tpub"
        origin = ""
        if self.origin is not None:
            origin = "[" + "".join([self.origin.fingerprint.hex(), *(f"/{_step(s)}" for s in self.origin.path)]) + "]"
        body = origin + self.key.serialise(prefix) + "".join(f"/{step}" for step in self.path) + "/*"
        opening, closing = _WRAPPERS.get(self.script, ("", ""))
        text = opening + body + closing
        return f"{text}#{descriptor_checksum(text)}"


def _step(value: int) -> str:
    return f"{value - HARDENED}h" if value >= HARDENED else str(value)


def _polymod(symbols: list[int]) -> int:
    check = 1
    for value in symbols:
        top = check >> 35
        check = (check & 0x7FFFFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                check ^= generator
    return check


def _expand(text: str) -> list[int]:
    symbols: list[int] = []
    groups: list[int] = []
    for position, char in enumerate(text):
        value = INPUT_CHARSET.find(char)
        if value < 0:
            raise KeyTreeError(text, f"character {char!r} at position {position} is not allowed in a descriptor")
        symbols.append(value & 31)
        groups.append(value >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    return symbols


def descriptor_checksum(text: str) -> str:
    """The eight-character BIP380 checksum of a descriptor without its `#...` suffix."""
    value = _polymod([*_expand(text), 0, 0, 0, 0, 0, 0, 0, 0]) ^ 1
    return "".join(CHECKSUM_CHARSET[(value >> (5 * (7 - i))) & 31] for i in range(_CHECKSUM_LENGTH))


def strip_checksum(text: str) -> str:
    """`text` without its checksum, verified when present; KeyTreeError for a malformed or wrong one."""
    if len(text) > MAX_DESCRIPTOR_LENGTH:
        raise KeyTreeError(text, f"longer than {MAX_DESCRIPTOR_LENGTH} characters")
    body, sep, check = text.partition("#")
    _expand(body)  # refuses characters outside the descriptor set, checksum or not
    if not sep:
        return body
    if len(check) != _CHECKSUM_LENGTH or any(char not in CHECKSUM_CHARSET for char in check):
        raise KeyTreeError(text, f"a checksum is {_CHECKSUM_LENGTH} characters of the bech32 set after '#'")
    if _polymod([*_expand(body), *(CHECKSUM_CHARSET.find(char) for char in check)]) != 1:
        raise KeyTreeError(text, "checksum mismatch")
    return body


def _number(text: str, step: str, where: str) -> int:
    if not step.isdigit() or not step.isascii():
        raise KeyTreeError(text, f"{where}: {step!r} is not a derivation step")
    value = int(step)
    if value >= HARDENED:
        raise KeyTreeError(text, f"{where}: step {value} is out of range (0 to 2^31-1)")
    return value


def _parse_origin(text: str, origin: str) -> KeyOrigin:
    fingerprint, *steps = origin.split("/")
    if len(fingerprint) != 8 or any(char not in "0123456789abcdefABCDEF" for char in fingerprint):
        raise KeyTreeError(text, "key origin: the fingerprint is 8 hex digits")
    if len(steps) > _MAX_ORIGIN_STEPS:
        raise KeyTreeError(text, f"key origin: more than {_MAX_ORIGIN_STEPS} steps")
    path = []
    for step in steps:
        hardened = step.endswith(("'", "h"))
        value = _number(text, step[:-1] if hardened else step, "key origin")
        path.append(value + HARDENED if hardened else value)
    return KeyOrigin(bytes.fromhex(fingerprint), tuple(path))


def _parse_steps(text: str, steps: list[str]) -> list[tuple[int, ...]]:
    """Each step as its values: one for a plain step, several for a multipath `<a;b>`."""
    if len(steps) > _MAX_STEPS:
        raise KeyTreeError(text, f"more than {_MAX_STEPS} derivation steps after the key")
    if not steps or steps[-1] != "*":
        if steps and steps[-1] in ("*'", "*h"):
            raise KeyTreeError(text, "hardened children (*h) cannot be derived from a public key")
        raise KeyTreeError(text, "not a tree: the path after the key must end in /*")
    parsed: list[tuple[int, ...]] = []
    for step in steps[:-1]:
        if step.endswith(("'", "h", "H")):
            raise KeyTreeError(text, f"hardened step {step!r} after the key cannot be derived from a public key")
        if step.startswith("<") and step.endswith(">"):
            values = tuple(_number(text, value, "multipath") for value in step[1:-1].split(";"))
            if len(values) < 2 or len(values) > _MAX_MULTIPATH or len(set(values)) != len(values):
                raise KeyTreeError(text, f"multipath: 2 to {_MAX_MULTIPATH} distinct values")
            parsed.append(values)
        else:
            parsed.append((_number(text, step, "path"),))
    if sum(len(values) > 1 for values in parsed) > 1:
        raise KeyTreeError(text, "at most one multipath step")
    return parsed


def _unwrap(text: str, body: str) -> tuple[ScriptType | None, str]:
    for script, (opening, closing) in _WRAPPERS.items():
        if body.startswith(opening) and body.endswith(closing):
            inner = body[len(opening) : -len(closing)]
            if any(char in inner for char in "(),{}"):
                raise KeyTreeError(text, f"{opening[:-1]}(...) takes one key here (no scripts, no script paths)")
            return script, inner
    if "(" in body or ")" in body:
        raise KeyTreeError(text, "supported trees are pkh(KEY), sh(wpkh(KEY)), wpkh(KEY) and tr(KEY)")
    return None, body


def parse_trees(chain: TreeChain | str, text: str, default_path: str = DEFAULT_PATH) -> tuple[KeyTree, ...]:
    """Parse one tree entry; a multipath step gives one tree per value, in the order written.

    Raises PrivateKeyRefused for private material anywhere it could be a key and KeyTreeError for
    anything else; neither message contains key material.
    """
    family = TreeChain(chain)
    kind = private_material_kind(text)
    if kind is not None:
        raise PrivateKeyRefused(text, f"{kind}: give the account's extended public key, never a private key")
    if text != text.strip():
        raise KeyTreeError(text, "leading or trailing whitespace")
    body = strip_checksum(text)
    kind = private_material_kind(body)  # the same material with a checksum appended
    if kind is not None:
        raise PrivateKeyRefused(text, f"{kind}: give the account's extended public key, never a private key")
    wrapper, key_text = _unwrap(text, body) if family is TreeChain.BITCOIN else (None, body)
    origin = None
    if key_text.startswith("["):
        origin_text, found, key_text = key_text[1:].partition("]")
        if not found or "[" in origin_text or "]" in key_text:
            raise KeyTreeError(text, "key origin: one [fingerprint/path] before the key")
        origin = _parse_origin(text, origin_text)
    elif "[" in key_text or "]" in key_text:
        raise KeyTreeError(text, "key origin: '[' must open the key expression")
    serialised, *steps = key_text.split("/")
    key, version = parse_extended_public_key(serialised)
    if not steps and wrapper is None:
        steps = default_path.removeprefix("/").split("/")
    parsed = _parse_steps(text, steps)
    script = _script(text, family, wrapper, version.script, version.network)
    multipath = next((i for i, values in enumerate(parsed) if len(values) > 1), None)
    if multipath is None:
        return (KeyTree(family, script, version.network, key, origin, tuple(v for (v,) in parsed)),)
    return tuple(
        KeyTree(
            family,
            script,
            version.network,
            key,
            origin,
            tuple(value if i == multipath else values[0] for i, values in enumerate(parsed)),
        )
        for value in parsed[multipath]
    )


def parse_tree(chain: TreeChain | str, text: str, default_path: str = DEFAULT_PATH) -> KeyTree:
    """Parse an entry that names exactly one tree; a multipath entry is refused here."""
    trees = parse_trees(chain, text, default_path)
    if len(trees) != 1:
        raise KeyTreeError(text, f"a multipath entry: it names {len(trees)} trees")
    return trees[0]


def _script(
    text: str, chain: TreeChain, wrapper: ScriptType | None, implied: KeyScript, network: KeyNetwork
) -> ScriptType:
    if chain is not TreeChain.BITCOIN:
        if implied is not KeyScript.PLAIN or network is not KeyNetwork.MAINNET:
            raise KeyTreeError(text, f"{chain.value} trees take an xpub (no SLIP-132 or testnet version)")
        return _CHAIN_SCRIPT[chain]
    if wrapper is None:
        return _BARE_SCRIPT[implied]
    if implied is not KeyScript.PLAIN and _BARE_SCRIPT[implied] is not wrapper:
        raise KeyTreeError(text, f"the key's version says {implied.value}, the descriptor says {wrapper.value}")
    return wrapper
