"""BIP32 extended public keys: strict parsing, serialisation and public child derivation.

Only public derivation lives here: a tree is watched from its account key, and private material is
refused on sight (`PrivateKeyRefused`), with an error that never contains it.

The EC arithmetic is libsecp256k1 through `coincurve`; the BIP32 steps around it (HMAC-SHA512,
serialisation, the checks of BIP32's test vector 5) are our own. Measured on this project's machine
(docs/performance.md, "Key trees"; `bench/derive_bench.py --libraries`): coincurve plus this code
derives about 43,000 children per CPU second, bip-utils (on the same coincurve backend) about 21,000
and embit about 17,400, because each of their steps builds a whole extended key (depth, fingerprint,
chain code, objects) that a watcher never needs. coincurve is also the smallest dependency of the
three: one binding of libsecp256k1, with no wallet, mnemonic or signing code pulled in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from coincurve import PublicKey

from depositwatch.addresses.base58 import b58check_encode, b58decode, checksum
from depositwatch.addresses.common import AddressError

HARDENED = 0x8000_0000
_SERIALISED_LENGTH = 78
_KEY_LENGTH = 33
_MAX_KEY_TEXT = 120  # 82 bytes in base58 are 111 or 112 characters; a little room to name a wrong length
# Long runs of base58 or hex are key material (public or private); errors show their length instead.
_KEY_LIKE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{24,}|[0-9a-fA-F]{24,}")
# Three or more words in a row may be a seed phrase: errors show how many words, not which.
_WORDS = re.compile(r"[A-Za-z]+(?:\s+[A-Za-z]+){2,}")
_SEED_PHRASE = re.compile(r"\s*[a-z]+(?:\s+[a-z]+){11,23}\s*")
_MAX_ECHO = 200


def redact(text: str) -> str:
    """`text` with every key-like run replaced by its length, shortened: safe for errors and logs."""
    shown = _WORDS.sub(lambda run: f"<{len(run.group().split())} words>", text)
    shown = _KEY_LIKE.sub(lambda run: f"<{len(run.group())} characters>", shown)
    return shown if len(shown) <= _MAX_ECHO else shown[:_MAX_ECHO] + "..."


class KeyTreeError(AddressError):
    """A key or tree entry that cannot be used; `.address` holds the input with key material redacted."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(redact(text), reason)


class PrivateKeyRefused(KeyTreeError):
    """Private key material where a public key belongs; the message names the kind, never the key."""


class KeyNetwork(StrEnum):
    """The network family an extended key's version bytes name (testnet covers signet and regtest)."""

    MAINNET = "mainnet"
    TESTNET = "testnet"


class KeyScript(StrEnum):
    """The script type a SLIP-132 version implies; PLAIN (xpub, tpub) implies none."""

    PLAIN = "plain"
    SH_WPKH = "sh_wpkh"
    WPKH = "wpkh"


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """What the four version bytes of a serialised public key say."""

    prefix: str
    network: KeyNetwork
    script: KeyScript


# SLIP-132 public versions. Ypub/Zpub/Upub/Vpub (multisig) are not listed: a tree is single-key.
PUBLIC_VERSIONS: dict[bytes, KeyVersion] = {
    bytes.fromhex("0488b21e"): KeyVersion("xpub", KeyNetwork.MAINNET, KeyScript.PLAIN),
    bytes.fromhex("049d7cb2"): KeyVersion("ypub", KeyNetwork.MAINNET, KeyScript.SH_WPKH),
    bytes.fromhex("04b24746"): KeyVersion("zpub", KeyNetwork.MAINNET, KeyScript.WPKH),
    bytes.fromhex("043587cf"): KeyVersion("tpub", KeyNetwork.TESTNET, KeyScript.PLAIN),
    bytes.fromhex("044a5262"): KeyVersion("upub", KeyNetwork.TESTNET, KeyScript.SH_WPKH),
    bytes.fromhex("045f1cf6"): KeyVersion("vpub", KeyNetwork.TESTNET, KeyScript.WPKH),
}
VERSION_BY_PREFIX = {version.prefix: raw for raw, version in PUBLIC_VERSIONS.items()}
_MULTISIG_VERSIONS = {
    bytes.fromhex("0295b43f"): "Ypub",
    bytes.fromhex("02aa7ed3"): "Zpub",
    bytes.fromhex("024289ef"): "Upub",
    bytes.fromhex("02575483"): "Vpub",
}
_PRIVATE_VERSIONS = {
    bytes.fromhex(raw): name
    for raw, name in (
        ("0488ade4", "xprv"),
        ("049d7878", "yprv"),
        ("04b2430c", "zprv"),
        ("0295b005", "Yprv"),
        ("02aa7a99", "Zprv"),
        ("04358394", "tprv"),
        ("044a4e28", "uprv"),
        ("045f18bc", "vprv"),
        ("024285b5", "Uprv"),
        ("02575048", "Vprv"),
    )
}
_WIF_VERSIONS = {0x80: "mainnet", 0xEF: "testnet"}


def hash160(data: bytes) -> bytes:
    """RIPEMD-160 of SHA-256: the key hash of P2PKH and P2WPKH, and BIP32's fingerprints."""
    digest = hashlib.sha256(data).digest()
    try:
        return hashlib.new("ripemd160", digest).digest()
    except ValueError:  # OpenSSL 3 builds may leave RIPEMD-160 out; pycryptodome always has it
        from Crypto.Hash import RIPEMD160

        return bytes(RIPEMD160.new(digest).digest())


@dataclass(frozen=True, slots=True)
class ExtendedPublicKey:
    """The BIP32 fields of an extended public key; the version bytes stay with the caller."""

    depth: int
    parent_fingerprint: bytes
    child_number: int
    chain_code: bytes
    key: bytes  # compressed SEC1 point, 33 bytes

    @property
    def fingerprint(self) -> bytes:
        """The first four bytes of hash160(key): what children record as their parent."""
        return hash160(self.key)[:4]

    def serialise(self, prefix: str = "xpub") -> str:
        """The base58check text with the version of `prefix` (xpub, ypub, zpub, tpub, upub, vpub)."""
        body = (
            VERSION_BY_PREFIX[prefix]
            + bytes([self.depth])
            + self.parent_fingerprint
            + self.child_number.to_bytes(4, "big")
            + self.chain_code
            + self.key
        )
        return b58check_encode(body)


def private_material_kind(text: str) -> str | None:
    """Name the kind of private key `text` is (an xprv, a WIF key, 64 hex digits), or None.

    Decodes without raising, so that no exception carrying the text is ever chained to the caller's.
    """
    if _SEED_PHRASE.fullmatch(text):
        return "a seed phrase (BIP39 words)"
    digits = text[2:] if text.startswith(("0x", "0X")) else text
    if len(digits) == 64 and all(char in "0123456789abcdefABCDEF" for char in digits):
        return "64 hex digits (a raw private key; a tree needs an extended public key)"
    payload = _b58check_payload(text)
    if payload is None:
        return None
    if len(payload) == _SERIALISED_LENGTH:
        name = _PRIVATE_VERSIONS.get(payload[:4])
        if name is not None:
            return f"an extended private key ({name})"
        if payload[45] == 0:  # BIP32 writes private keys as 0x00 + 32 bytes where the point goes
            return "an extended private key under a public version"
    if len(payload) in (33, 34) and payload[0] in _WIF_VERSIONS and (len(payload) == 33 or payload[33] == 1):
        return f"a WIF private key ({_WIF_VERSIONS[payload[0]]})"
    return None


def _b58check_payload(text: str) -> bytes | None:
    if not text or len(text) > _MAX_KEY_TEXT:
        return None
    try:
        raw = b58decode(text)
    except AddressError:
        return None
    if len(raw) <= 4 or checksum(raw[:-4]) != raw[-4:]:
        return None
    return raw[:-4]


def parse_extended_public_key(text: str) -> tuple[ExtendedPublicKey, KeyVersion]:
    """Decode a serialised extended public key, checked as BIP32 asks; refuses private material.

    Raises PrivateKeyRefused for an xprv (any SLIP-132 private version) or a WIF key, KeyTreeError for
    anything else that is not a valid public key of a known single-key version.
    """
    kind = private_material_kind(text)
    if kind is not None:
        raise PrivateKeyRefused(text, f"{kind}: give the account's extended public key (xpub), never a private key")
    payload = _b58check_payload(text)
    if payload is None:
        raise KeyTreeError(text, "not an extended public key (base58check does not decode)")
    if len(payload) != _SERIALISED_LENGTH:
        raise KeyTreeError(text, f"an extended key has {_SERIALISED_LENGTH} bytes, this one {len(payload)}")
    raw_version = payload[:4]
    if raw_version in _MULTISIG_VERSIONS:
        raise KeyTreeError(text, f"a multisig key ({_MULTISIG_VERSIONS[raw_version]}); trees are single-key")
    version = PUBLIC_VERSIONS.get(raw_version)
    if version is None:
        raise KeyTreeError(text, f"unknown extended key version 0x{raw_version.hex()}")
    depth = payload[4]
    parent_fingerprint = payload[5:9]
    child_number = int.from_bytes(payload[9:13], "big")
    if depth == 0 and parent_fingerprint != bytes(4):
        raise KeyTreeError(text, "depth 0 with a non-zero parent fingerprint")
    if depth == 0 and child_number != 0:
        raise KeyTreeError(text, "depth 0 with a non-zero child number")
    key = payload[45:]
    if key[0] not in (2, 3):
        raise KeyTreeError(text, f"public key prefix 0x{key[0]:02x}, expected 02 or 03")
    try:
        PublicKey(key)
    except ValueError:
        raise KeyTreeError(text, "the public key is not a point on secp256k1") from None
    return ExtendedPublicKey(depth, parent_fingerprint, child_number, payload[13:45], key), version


def _tweak(parent: ExtendedPublicKey, index: int) -> tuple[bytes, bytes]:
    digest = hmac.digest(parent.chain_code, parent.key + index.to_bytes(4, "big"), "sha512")
    return digest[:32], digest[32:]


def child(parent: ExtendedPublicKey, index: int) -> ExtendedPublicKey:
    """The non-hardened child `index` of `parent` (BIP32 CKDpub); ValueError for a hardened index.

    Raises ValueError too in the case BIP32 says has no key (IL >= n or the point at infinity,
    probability below 2^-127): the caller moves to the next index, as wallets do.
    """
    if not 0 <= index < HARDENED:
        raise ValueError(f"child index {index} cannot be derived from a public key (0 to 2^31-1)")
    if parent.depth == 255:
        raise ValueError("depth 255 is the deepest BIP32 serialises")
    tweak, chain_code = _tweak(parent, index)
    point = PublicKey(parent.key).add(tweak)
    return ExtendedPublicKey(parent.depth + 1, parent.fingerprint, index, chain_code, point.format())


def public_children(parent: ExtendedPublicKey, start: int, stop: int) -> Iterator[tuple[int, PublicKey]]:
    """(index, point) of the non-hardened children start..stop-1 of `parent`: the hot loop of expansion.

    Only the point is built (no chain code, depth or fingerprint): a watcher needs the leaf keys, and
    skipping the rest is most of the speed over a general BIP32 library. An index without a key (see
    `child`) is left out of the sequence.
    """
    if not 0 <= start <= stop <= HARDENED:
        raise ValueError(f"child range {start}..{stop} is outside 0..2^31")
    point = PublicKey(parent.key)
    prefix = parent.key
    chain_code = parent.chain_code
    digest = hmac.digest
    for index in range(start, stop):
        tweak = digest(chain_code, prefix + index.to_bytes(4, "big"), "sha512")[:32]
        try:
            key = point.add(tweak)
        except ValueError:
            continue  # no key at this index (probability < 2^-127); BIP32 says proceed with the next
        yield index, key
