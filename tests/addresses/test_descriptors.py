"""Tree entries: the BIP380 checksum, BIP380-389 parse and derive examples, refusals, round trips."""

from __future__ import annotations

import json
import pickle
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depositwatch.addresses.base58 import b58check_encode
from depositwatch.addresses.common import AddressError
from depositwatch.addresses.derive import derive
from depositwatch.addresses.descriptors import (
    CHECKSUM_CHARSET,
    KeyTree,
    ScriptType,
    TreeChain,
    descriptor_checksum,
    parse_tree,
    parse_trees,
    strip_checksum,
)
from depositwatch.addresses.hd import (
    HARDENED,
    KeyNetwork,
    KeyTreeError,
    PrivateKeyRefused,
    parse_extended_public_key,
)

DATA = Path(__file__).parents[1] / "data" / "hd"
VECTORS: dict[str, Any] = json.loads((DATA / "descriptors.json").read_text())
WALLETS: dict[str, Any] = json.loads((DATA / "bip84_bip86_bip49.json").read_text())
XPUB = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
# The same key under the testnet version (BIP32 serialisation, version 043587cf).
TPUB = parse_extended_public_key(XPUB)[0].serialise("tpub")


@pytest.mark.parametrize("case", VECTORS["checksum_valid"], ids=lambda case: case["checksum"])
def test_checksum_published_examples(case: dict[str, str]) -> None:
    """BIP380's raw(deadbeef)#89f8spxm and Bitcoin Core's wpkh example: computed and verified."""
    assert descriptor_checksum(case["descriptor"]) == case["checksum"]
    assert strip_checksum(f"{case['descriptor']}#{case['checksum']}") == case["descriptor"]
    assert strip_checksum(case["descriptor"]) == case["descriptor"]


@pytest.mark.parametrize("case", VECTORS["checksum_invalid"], ids=lambda case: case["why"])
def test_checksum_published_failures(case: dict[str, str]) -> None:
    """BIP380: missing, too long, too short, wrong payload, wrong checksum, characters outside the set."""
    with pytest.raises(KeyTreeError):
        strip_checksum(case["text"])


@given(st.text(alphabet="0123456789()[],'/*abcdefgh", min_size=1, max_size=60), st.data())
def test_checksum_catches_any_single_substitution(body: str, data: st.DataObject) -> None:
    """Changing one checksum character always fails verification (BCH code: distance above 1)."""
    check = descriptor_checksum(body)
    position = data.draw(st.integers(0, 7))
    other = data.draw(st.sampled_from([c for c in CHECKSUM_CHARSET if c != check[position]]))
    broken = check[:position] + other + check[position + 1 :]
    with pytest.raises(KeyTreeError, match="checksum mismatch"):
        strip_checksum(f"{body}#{broken}")


@pytest.mark.parametrize("case", VECTORS["derive"], ids=lambda case: case["descriptor"][:20])
def test_bip382_ranged_wpkh_example(case: dict[str, Any]) -> None:
    """BIP382: wpkh([ffffffff/13']xpub.../1/2/*) children 0-2 are the published scripts."""
    tree = parse_tree("bitcoin", case["descriptor"])
    assert tree.script is ScriptType.WPKH and tree.path == (1, 2)
    assert tree.origin is not None and tree.origin.path == (13 + HARDENED,)
    assert [script.hex() for _, script in derive(tree, 0, 3)] == case["scripts"]
    checked = parse_tree("bitcoin", f"{case['descriptor']}#{descriptor_checksum(case['descriptor'])}")
    assert checked == tree


@pytest.mark.parametrize("case", VECTORS["multipath"], ids=lambda case: case["descriptor"][:20])
def test_bip389_multipath_expands_into_one_tree_per_value(case: dict[str, Any]) -> None:
    """BIP389: <1;3> gives the two published single-path descriptors, in that order."""
    trees = parse_trees("bitcoin", case["descriptor"])
    expected = [parse_tree("bitcoin", text) for text in case["expands_to"]]
    assert list(trees) == expected
    with pytest.raises(KeyTreeError, match="names 2 trees"):
        parse_tree("bitcoin", case["descriptor"])


def test_receive_and_change_multipath_matches_bip84() -> None:
    """wpkh(zpub/<0;1>/*): the receive tree and the change tree give BIP84's published addresses."""
    from depositwatch.addresses.derive import address_text

    receive, change = parse_trees("bitcoin", f"wpkh({WALLETS['bip84']['account_zpub']}/<0;1>/*)")
    rows = {(row["branch"], row["index"]): row["address"] for row in WALLETS["bip84"]["addresses"]}
    assert [address_text(receive, key) for _, key in derive(receive, 0, 2)] == [rows[0, 0], rows[0, 1]]
    assert [address_text(change, key) for _, key in derive(change, 0, 1)] == [rows[1, 0]]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda case: case["why"])
def test_invalid_entries_are_refused(case: dict[str, str]) -> None:
    """BIP380/389's invalid key expressions, and what a tree cannot be (one key, hardened, scripts)."""
    chain = "bitcoin" if "(" in case["text"] else "evm"
    with pytest.raises(KeyTreeError):
        parse_trees(chain, case["text"])


@pytest.mark.parametrize("text", VECTORS["private"])
@pytest.mark.parametrize("chain", ["bitcoin", "evm", "tron"])
def test_private_material_is_refused_without_echo(chain: str, text: str) -> None:
    """xprv (bare, with origin, in wrappers, with hardened steps), WIF and 64-hex: refused, never shown."""
    with pytest.raises(KeyTreeError) as caught:
        parse_trees(chain, text)
    error = caught.value
    secret = max(text.replace("(", "/").replace(")", "/").replace("]", "/").split("/"), key=len)
    assert len(secret) >= 51
    shown = [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        repr(pickle.loads(pickle.dumps(error))),
    ]
    for rendered in shown:
        assert secret not in rendered
        assert secret[8:24] not in rendered
    assert error.__context__ is None
    if "(" not in text or chain == "bitcoin":
        assert isinstance(error, PrivateKeyRefused)
        assert "private key" in str(error)


def test_private_key_with_a_wrong_checksum_is_not_echoed() -> None:
    """The checksum is checked first; its error still redacts the key it covers."""
    text = VECTORS["private"][2] + "#qqqqqqqq"
    with pytest.raises(KeyTreeError, match="checksum") as caught:
        parse_trees("bitcoin", text)
    assert "xprv" not in str(caught.value)


def test_bare_slip132_keys_map_to_their_script_and_network() -> None:
    """zpub -> wpkh, ypub/upub -> sh(wpkh), xpub -> pkh, tpub -> pkh on testnet; bare keys get /0/*."""
    zpub = parse_tree("bitcoin", WALLETS["bip84"]["account_zpub"])
    assert (zpub.script, zpub.network, zpub.path) == (ScriptType.WPKH, KeyNetwork.MAINNET, (0,))
    upub = parse_tree("bitcoin", WALLETS["bip49"]["account_upub"])
    assert (upub.script, upub.network) == (ScriptType.SH_WPKH, KeyNetwork.TESTNET)
    assert parse_tree("bitcoin", XPUB).script is ScriptType.PKH
    tpub = parse_tree("bitcoin", TPUB)
    assert (tpub.script, tpub.network) == (ScriptType.PKH, KeyNetwork.TESTNET)
    assert parse_tree("bitcoin", XPUB, default_path="/1/*").path == (1,)
    assert parse_tree("evm", XPUB, default_path="/7/0/*").path == (7, 0)


def test_slip132_key_must_agree_with_its_wrapper() -> None:
    """wpkh(zpub...) is fine; pkh(zpub...) contradicts the version and is refused."""
    zpub = WALLETS["bip84"]["account_zpub"]
    assert parse_tree("bitcoin", f"wpkh({zpub}/0/*)") == parse_tree("bitcoin", zpub)
    with pytest.raises(KeyTreeError, match="version says wpkh"):
        parse_tree("bitcoin", f"pkh({zpub}/0/*)")


@pytest.mark.parametrize("chain", ["evm", "tron"])
def test_evm_and_tron_take_a_plain_mainnet_xpub(chain: str) -> None:
    """No wrapper, no SLIP-132 version, no testnet version for account trees."""
    for text in (WALLETS["bip84"]["account_zpub"], TPUB, f"pkh({XPUB}/0/*)"):
        with pytest.raises(KeyTreeError):
            parse_tree(chain, text)
    tree = parse_tree(chain, f"[deadbeef/44'/60h/0']{XPUB}/0/*")
    assert tree.chain is TreeChain(chain)
    assert tree.descriptor.startswith(f"[deadbeef/44h/60h/0h]{XPUB}/0/*#")


def test_canonical_descriptor_is_what_bitcoin_core_writes() -> None:
    """The canonical text of Core's wpkh example is that example with its published checksum."""
    [case] = [c for c in VECTORS["checksum_valid"] if c["descriptor"].startswith("wpkh")]
    assert parse_tree("bitcoin", case["descriptor"]).descriptor == f"{case['descriptor']}#{case['checksum']}"


def test_errors_are_address_errors_and_bounded() -> None:
    """Tree errors subclass AddressError, and a huge input is refused before parsing, shortly."""
    with pytest.raises(AddressError) as caught:
        parse_trees("bitcoin", "wpkh(" + "x" * 5000 + ")")
    assert len(str(caught.value)) < 400
    with pytest.raises(KeyTreeError, match="whitespace"):
        parse_trees("bitcoin", f" {XPUB}")
    with pytest.raises(ValueError, match="solana"):
        parse_trees("solana", XPUB)


_PATHS = st.lists(st.integers(0, HARDENED - 1), min_size=0, max_size=4)
_ORIGINS = st.none() | st.tuples(
    st.binary(min_size=4, max_size=4), st.lists(st.integers(0, 2 * HARDENED - 1), max_size=5)
)


@given(
    chain_script=st.sampled_from(
        [
            ("bitcoin", "pkh(", ")"),
            ("bitcoin", "sh(wpkh(", "))"),
            ("bitcoin", "wpkh(", ")"),
            ("bitcoin", "tr(", ")"),
            ("evm", "", ""),
            ("tron", "", ""),
        ]
    ),
    key=st.sampled_from([XPUB, TPUB]),
    origin=_ORIGINS,
    path=_PATHS,
)
def test_parse_of_render_is_identity(
    chain_script: tuple[str, str, str], key: str, origin: tuple[bytes, list[int]] | None, path: list[int]
) -> None:
    """parse(tree.descriptor) == tree for every wrapper, network, origin and path."""
    chain, opening, closing = chain_script
    if chain != "bitcoin" and key == TPUB:
        key = XPUB
    origin_text = ""
    if origin is not None:
        steps = "".join(f"/{s - HARDENED}h" if s >= HARDENED else f"/{s}" for s in origin[1])
        origin_text = f"[{origin[0].hex()}{steps}]"
    text = opening + origin_text + key + "".join(f"/{s}" for s in path) + "/*" + closing
    tree = parse_tree(chain, text)
    assert isinstance(tree, KeyTree)
    assert parse_tree(chain, tree.descriptor) == tree
    assert tree.descriptor.split("#")[0] == text


def _xprv(secret: bytes, version: str = "0488ade4") -> str:
    body = bytes.fromhex(version) + bytes(9) + bytes(range(32)) + b"\x00" + secret
    return b58check_encode(body)


_SECRETS = st.binary(min_size=32, max_size=32).filter(any)


@given(secret=_SECRETS, chain=st.sampled_from(["bitcoin", "evm", "tron"]), form=st.integers(0, 5))
def test_any_private_key_is_refused_without_echo(secret: bytes, chain: str, form: int) -> None:
    """Random secrets as xprv, tprv, zprv, an xprv under the xpub version, WIF and hex: never shown."""
    texts = [
        _xprv(secret),
        _xprv(secret, "04358394"),
        _xprv(secret, "04b2430c"),
        _xprv(secret, "0488b21e"),
        b58check_encode(b"\x80" + secret + b"\x01"),
        secret.hex(),
    ]
    text = texts[form]
    for entry in (text, f"{text}/0/*", f"wpkh([deadbeef/84h/0h/0h]{text}/<0;1>/*)"):
        with pytest.raises(KeyTreeError) as caught:
            parse_trees(chain, entry)
        shown = str(caught.value) + repr(caught.value) + "".join(traceback.format_exception(caught.value))
        assert text not in shown
        assert secret.hex() not in shown
        assert text[10:26] not in shown


MNEMONIC = WALLETS["mnemonic"]


@pytest.mark.parametrize("chain", ["bitcoin", "evm", "tron"])
@pytest.mark.parametrize(
    "text",
    [MNEMONIC, f" {MNEMONIC}\n", f"wpkh({MNEMONIC})", "0x" + "5a" * 32],
    ids=["phrase", "phrase-with-whitespace", "phrase-in-wrapper", "0x-hex"],
)
def test_seed_phrases_and_prefixed_hex_are_refused_without_echo(chain: str, text: str) -> None:
    """A pasted seed phrase or 0x-prefixed private key is refused and its words or digits not shown."""
    with pytest.raises(KeyTreeError) as caught:
        parse_trees(chain, text)
    shown = str(caught.value) + repr(caught.value)
    assert "abandon abandon" not in shown
    assert "abandon about" not in shown
    assert "5a5a5a5a" not in shown
    if "(" not in text:
        assert isinstance(caught.value, PrivateKeyRefused)
