"""BIP32 public derivation and tree expansion: the published vectors, and EVM/TRON against bip-utils."""

from __future__ import annotations

import itertools
import json
import pickle
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins
from hypothesis import given, settings
from hypothesis import strategies as st

from depositwatch.addresses.bitcoin import bitcoin_script_to_address
from depositwatch.addresses.derive import address_text, derive, network_matches
from depositwatch.addresses.descriptors import KeyTree, ScriptType, parse_tree
from depositwatch.addresses.hd import (
    HARDENED,
    KeyTreeError,
    PrivateKeyRefused,
    child,
    parse_extended_public_key,
    public_children,
)

DATA = Path(__file__).parents[1] / "data" / "hd"
BIP32: dict[str, Any] = json.loads((DATA / "bip32_vectors.json").read_text())
WALLETS: dict[str, Any] = json.loads((DATA / "bip84_bip86_bip49.json").read_text())
MNEMONIC = WALLETS["mnemonic"]


def _steps(path: str) -> list[str]:
    return path.split("/")[1:]


def _public_pairs() -> list[tuple[str, str, int]]:
    """(parent xpub, child xpub, index) for every non-hardened step of vectors 1-4."""
    pairs = []
    for vector in BIP32["vectors"]:
        chains = vector.get("chains", [])
        for parent, kid in itertools.pairwise(chains):
            last = _steps(kid["path"])[-1]
            if not last.endswith("h"):
                pairs.append((parent["xpub"], kid["xpub"], int(last)))
    return pairs


@pytest.mark.parametrize(("parent", "expected", "index"), _public_pairs())
def test_bip32_vectors_public_derivation(parent: str, expected: str, index: int) -> None:
    """Each non-hardened step of BIP32 vectors 1-3 derived from the parent xpub gives the published child."""
    key, version = parse_extended_public_key(parent)
    assert version.prefix == "xpub"
    assert child(key, index).serialise() == expected


def test_bip32_vectors_cover_vectors_1_to_3() -> None:
    """Vectors 1 and 2 give three non-hardened steps each (vector 3 has only hardened ones): six checks."""
    assert len(_public_pairs()) == 6


@pytest.mark.parametrize("text", [chain["xpub"] for vector in BIP32["vectors"] for chain in vector.get("chains", [])])
def test_bip32_vector_keys_round_trip(text: str) -> None:
    """Every published xpub (vectors 1-4, leading zeros included) parses and serialises to itself."""
    key, _ = parse_extended_public_key(text)
    assert key.serialise() == text


@pytest.mark.parametrize("case", BIP32["vectors"][4]["invalid"], ids=lambda case: case["reason"])
def test_bip32_vector_5_invalid_keys_are_refused(case: dict[str, str]) -> None:
    """Vector 5: bad prefixes, depth-0 inconsistencies, unknown versions, off-curve points, private ones."""
    with pytest.raises(KeyTreeError) as caught:
        parse_extended_public_key(case["key"])
    _assert_not_echoed(caught.value, case["key"])


@pytest.mark.parametrize("text", [chain["xprv"] for vector in BIP32["vectors"] for chain in vector.get("chains", [])])
def test_extended_private_keys_are_refused_without_echo(text: str) -> None:
    """Every published xprv is refused as private material, and neither it nor its parts appear."""
    with pytest.raises(PrivateKeyRefused, match="extended private key") as caught:
        parse_extended_public_key(text)
    _assert_not_echoed(caught.value, text)


def _assert_not_echoed(exc: BaseException, secret: str) -> None:
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(pickle.loads(pickle.dumps(exc)))]
    for text in shown:
        assert secret not in text
        assert secret[4:30] not in text
    assert exc.__context__ is None or secret not in repr(exc.__context__)


def _tree(chain: str, text: str) -> KeyTree:
    return parse_tree(chain, text)


def _wallet_rows(name: str) -> list[dict[str, Any]]:
    return list(WALLETS[name]["addresses"])


@pytest.mark.parametrize("row", _wallet_rows("bip84"), ids=lambda row: f"{row['branch']}/{row['index']}")
def test_bip84_vectors_from_the_zpub(row: dict[str, Any]) -> None:
    """BIP84: the account zpub (bare, so wpkh by its version) derives the published addresses."""
    tree = _tree("bitcoin", f"{WALLETS['bip84']['account_zpub']}/{row['branch']}/*")
    assert tree.script is ScriptType.WPKH
    [(index, script)] = list(derive(tree, row["index"], row["index"] + 1))
    assert index == row["index"]
    assert bitcoin_script_to_address(script, "mainnet") == row["address"]
    branch = child(tree.key, row["branch"])
    [(_, point)] = list(public_children(branch, row["index"], row["index"] + 1))
    assert point.format().hex() == row["pubkey"]


@pytest.mark.parametrize("row", _wallet_rows("bip86"), ids=lambda row: f"{row['branch']}/{row['index']}")
def test_bip86_vectors_from_the_xpub(row: dict[str, Any]) -> None:
    """BIP86: tr(xpub/branch/*) gives the published internal keys, tweaked output scripts and addresses."""
    tree = _tree("bitcoin", f"tr({WALLETS['bip86']['account_xpub']}/{row['branch']}/*)")
    [(_, script)] = list(derive(tree, row["index"], row["index"] + 1))
    assert script.hex() == row["script"]
    assert bitcoin_script_to_address(script, "mainnet") == row["address"]
    assert address_text(tree, script) == row["address"]
    [(_, point)] = list(public_children(child(tree.key, row["branch"]), row["index"], row["index"] + 1))
    assert point.format()[1:].hex() == row["internal_key"]


def test_bip49_vector_from_the_upub() -> None:
    """BIP49: the testnet upub, bare, is sh(wpkh) on testnet; /0/0 is the published 2Mww8... address."""
    [row] = _wallet_rows("bip49")
    tree = _tree("bitcoin", WALLETS["bip49"]["account_upub"])
    assert tree.script is ScriptType.SH_WPKH
    assert network_matches(tree, "testnet") and network_matches(tree, "regtest")
    assert not network_matches(tree, "mainnet")
    [(_, script)] = list(derive(tree, 0, 1))
    assert address_text(tree, script, row["network"]) == row["address"]


def _oracle_account(coin: Bip44Coins) -> Any:
    seed = Bip39SeedGenerator(MNEMONIC).Generate()
    return Bip44.FromSeed(seed, coin).Purpose().Coin().Account(0)


def test_bip44_ethereum_first_address() -> None:
    """m/44'/60'/0'/0/0 of the `abandon ... about` mnemonic is 0x9858...: account xpub from the oracle,
    the child from our code."""
    seed = Bip39SeedGenerator(MNEMONIC).Generate()
    master = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM)
    xpub = master.Purpose().Coin().Account(0).PublicKey().ToExtended()
    fingerprint = master.Bip32Object().FingerPrint().ToBytes().hex()
    tree = _tree("evm", f"[{fingerprint}/44h/60h/0h]{xpub}")
    assert tree.origin is not None and tree.origin.fingerprint.hex() == "73c5da0a"
    [(index, key)] = list(derive(tree, 0, 1))
    assert index == 0
    assert address_text(tree, key) == WALLETS["ethereum"]["addresses"][0]["address"]


@pytest.mark.parametrize(
    ("chain", "coin"), [("evm", Bip44Coins.ETHEREUM), ("tron", Bip44Coins.TRON)], ids=["evm", "tron"]
)
def test_evm_and_tron_match_the_oracle(chain: str, coin: Bip44Coins) -> None:
    """Receive (0) and change (1) branches, 40 indexes each, against bip-utils' own derivation and encoding."""
    account = _oracle_account(coin)
    xpub = account.PublicKey().ToExtended()
    for branch, change in ((0, Bip44Changes.CHAIN_EXT), (1, Bip44Changes.CHAIN_INT)):
        tree = _tree(chain, f"{xpub}/{branch}/*")
        ours = [address_text(tree, key) for _, key in derive(tree, 0, 40)]
        oracle = [account.Change(change).AddressIndex(i).PublicKey().ToAddress() for i in range(40)]
        assert ours == oracle


def test_tron_defaults_to_the_receive_branch() -> None:
    """A bare TRON xpub is the /0/* tree; indexes far into the range match the oracle too."""
    account = _oracle_account(Bip44Coins.TRON)
    tree = _tree("tron", account.PublicKey().ToExtended())
    assert tree.path == (0,) and tree.script is ScriptType.TRON
    for index, key in derive(tree, 123_456, 123_459):
        oracle = account.Change(Bip44Changes.CHAIN_EXT).AddressIndex(index).PublicKey().ToAddress()
        assert address_text(tree, key) == oracle


@settings(max_examples=25, deadline=None)
@given(start=st.integers(0, HARDENED - 50), length=st.integers(0, 5))
def test_derive_yields_each_index_of_the_range_once(start: int, length: int) -> None:
    """derive(start, stop) gives indexes start..stop-1 in order, each equal to a one-index derivation."""
    tree = _tree("evm", WALLETS_ETH_XPUB)
    pairs = list(derive(tree, start, start + length))
    assert [index for index, _ in pairs] == list(range(start, start + length))
    for index, key in pairs:
        assert list(derive(tree, index, index + 1)) == [(index, key)]


WALLETS_ETH_XPUB = BIP32["vectors"][0]["chains"][1]["xpub"]


@pytest.mark.parametrize(("start", "stop"), [(-1, 3), (5, 4), (0, HARDENED + 1)])
def test_derive_refuses_ranges_outside_the_public_indexes(start: int, stop: int) -> None:
    """Negative starts, reversed ranges and hardened indexes are errors, not empty or wrapped ranges."""
    tree = _tree("evm", WALLETS_ETH_XPUB)
    with pytest.raises(ValueError, match="index range"):
        list(derive(tree, start, stop))


def test_hardened_child_is_refused() -> None:
    """A public key has no hardened children."""
    key, _ = parse_extended_public_key(WALLETS_ETH_XPUB)
    with pytest.raises(ValueError, match="cannot be derived from a public key"):
        child(key, HARDENED)


def test_derive_bench_runs_and_reports_every_script_type() -> None:
    """bench/derive_bench.py, the command docs/performance.md records, prints a row per script type."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "derive_bench.py"), "--sample", "200", "--million", ""],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[2:] == [script.value for script in ScriptType]
