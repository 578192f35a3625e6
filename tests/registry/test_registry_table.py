"""The address book's key tables (`keytable.py`, `_keytable.c`): the compiled table against the reference
and against a plain dict, under random changes, forced collisions, removals inside clusters, growth,
and keys of every length the codecs produce; and the book's users on the compiled table: the matcher,
the compiled Bitcoin scan, the registry's load from a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depositwatch import keytable
from depositwatch.addresses import normalise_key
from depositwatch.addresses.bitcoin import p2pk_script
from depositwatch.chains.btc_decode import decode_block
from depositwatch.chains.btc_scan import _scan_block_ext, _scan_block_py
from depositwatch.keytable import ACTIVE, KeyTable, PyKeyTable, new_table
from depositwatch.matcher import match_transfers
from depositwatch.models import AddressEntry, AddressStatus, Asset, Match, MatchKind, Transfer
from depositwatch.registry import AddressRegistry, ChainBook
from depositwatch.store import open_store
from depositwatch.store.base import RegistryRow
from tests.btcnode import p2pkh, p2sh, p2tr, p2wpkh, p2wsh
from tests.realdata import realdata

pytestmark = pytest.mark.skipif(not keytable.BUILT, reason="the compiled key table is not built")

Model = dict[bytes, int | None]  # key -> revocation time, None while active


def both() -> list[KeyTable]:
    return [new_table(compiled=True), new_table(compiled=False)]


def assert_holds(table: KeyTable, model: Model, probes: list[bytes] = []) -> None:  # noqa: B006
    """`table` answers every question exactly as the dict `model` does."""
    active = {k for k, v in model.items() if v is None}
    revoked = {k: v for k, v in model.items() if v is not None}
    assert len(table) == len(model)
    assert (table.n_active, table.n_revoked) == (len(active), len(revoked))
    view_a, view_r = table.active(), table.revoked()
    assert sorted(view_a) == sorted(active)  # iteration: each key once
    assert sorted(view_r) == sorted(revoked)
    assert (len(view_a), len(view_r)) == (len(active), len(revoked))
    assert (view_a | view_r.keys()) == set(model)
    for key in [*model, *probes]:
        fresh = bytes(bytearray(key))  # a new object: its hash not cached
        want = model.get(key, "absent")
        assert table.get(fresh) == (None if want == "absent" else ACTIVE if want is None else want)
        assert (fresh in view_a) == (want is None)
        assert (fresh in view_r) == (want not in ("absent", None))
        assert view_r.get(fresh) == (want if want not in ("absent", None) else None)
        assert view_r.get(fresh, "dflt") == (want if want not in ("absent", None) else "dflt")
        if want in ("absent", None):
            with pytest.raises(KeyError):
                view_r[fresh]
        else:
            assert view_r[fresh] == want


def home(key: bytes, capacity: int) -> int:
    """The slot where the compiled table starts looking for `key` (`_keytable.c`, `home`)."""
    return ((hash(key) % 2**64) * capacity) >> 64


def keys_homed_at(slot: int, capacity: int, length: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    found: list[bytes] = []
    while len(found) < count:
        key = rng.randbytes(length)
        if home(key, capacity) == slot:
            found.append(key)
    return found


# ---------------------------------------------------------------------------------------------
# The table itself


lengths = st.sampled_from([0, 1, 20, 22, 23, 25, 34, 35, 42, 64, 65, 67, 100])
keys = st.tuples(lengths, st.integers(0, 40)).map(
    lambda t: (hashlib.sha256(t[1].to_bytes(2, "big")).digest() * 4)[: t[0]]
)
stamps = st.one_of(st.none(), st.sampled_from([0, 1, 1_700_000_000, -5, 2**63 - 1, -(2**63)]))
operations = st.lists(st.tuples(st.sampled_from(["set", "set", "set", "discard"]), keys, stamps), max_size=120)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_random_changes_leave_both_tables_as_a_dict(ops: list[tuple[str, bytes, int | None]]) -> None:
    """Adds, revocations in place, reactivations and removals, over keys of many lengths (the short
    ones collide in small tables): both tables answer as a dict after every step."""
    tables = both()
    model: Model = {}
    probes = [b"", b"\x00" * 20, b"\xff" * 34, b"\x01" * 100]
    for op, key, stamp in ops:
        for table in tables:
            if op == "set":
                table.set(key, stamp)
            else:
                assert table.discard(key) == (key in model)
        if op == "set":
            model[key] = stamp
        else:
            model.pop(key, None)
        for table in tables:
            assert_holds(table, model, probes)


@pytest.mark.parametrize("compiled", [True, False])
def test_growth_keeps_every_key_and_the_load_bounded(compiled: bool) -> None:
    table = new_table(compiled)
    rng = random.Random(7)
    model: Model = {}
    for i in range(60_000):
        key = rng.randbytes((20, 22, 23, 25, 34)[i % 5])
        stamp = None if i % 10 else 1_700_000_000 + i % 3
        table.set(key, stamp)
        model[key] = stamp
    assert_holds(table, model, [rng.randbytes(20) for _ in range(1000)])
    if compiled:
        layout = table.layout()  # type: ignore[attr-defined]
        assert set(layout) == {20, 22, 23, 25, 34}
        for used, slots in layout.values():
            assert 0.45 < used / slots <= 0.75  # grown by half each time it would pass three quarters
        # the slots and nothing per key: about 24 to 38 bytes of slot a key, at most a third empty
        assert table.__sizeof__() < sum(slots * (length + 4) for length, (_, slots) in layout.items()) + 10_000


def test_collisions_and_wraparound_in_a_full_cluster() -> None:
    """Six keys that all start at the last of 8 slots fill slots 7, 0, 1, 2, 3, 4; removing any of them
    shifts the rest back so each stays reachable, and a key homed inside the cluster is found."""
    for victim in range(6):
        table = new_table(compiled=True)
        cluster = keys_homed_at(7, 8, 20, 6, seed=victim)
        for key in cluster:
            table.set(key, None)
        assert table.layout() == {20: (6, 8)}  # type: ignore[attr-defined]  # no growth yet: one full cluster
        model: Model = dict.fromkeys(cluster)
        assert table.discard(cluster[victim])
        del model[cluster[victim]]
        assert table.layout() == {20: (5, 8)}  # type: ignore[attr-defined]
        assert_holds(table, model, [cluster[victim]])
        # a key homed at slot 1, inside the shifted cluster, goes in the first free slot and is found
        inside = keys_homed_at(1, 8, 20, 1, seed=100 + victim)[0]
        table.set(inside, 9)
        model[inside] = 9
        assert_holds(table, model)
        for key in list(model):  # empty it in another order: every removal keeps the rest reachable
            assert table.discard(key)
            del model[key]
            assert_holds(table, model, cluster)
        assert table.layout() == {20: (0, 8)}  # type: ignore[attr-defined]


def test_removals_across_a_large_table_keep_the_rest_reachable() -> None:
    rng = random.Random(11)
    tables = both()
    model: Model = {}
    for i in range(20_000):
        key = rng.randbytes(25)
        model[key] = None if i % 3 else i
        for table in tables:
            table.set(key, model[key])
    for key in rng.sample(sorted(model), 12_000):
        for table in tables:
            assert table.discard(key)
        del model[key]
    for table in tables:
        assert_holds(table, model)


def test_a_revocation_replaces_the_state_in_place() -> None:
    for table in both():
        key = b"\x11" * 20
        table.set(key, None)
        table.set(key, 1_700_000_000)
        assert table.get(key) == 1_700_000_000 and key not in table.active() and key in table.revoked()
        table.set(key, 1_700_000_500)  # revoked again later: the new time
        table.set(key, None)  # and active again
        assert table.get(key) is ACTIVE and (table.n_active, table.n_revoked) == (1, 0)
        assert len(table) == 1
        if isinstance(table, PyKeyTable):
            continue
        assert table.layout() == {20: (1, 8)}  # type: ignore[attr-defined]  # the one slot, changed in place


def test_keys_of_every_length_the_codecs_produce() -> None:
    """Every script type of the real block 413,567 (P2PKH, P2SH, bare multisig, OP_RETURN of any length)
    and of the address codecs (segwit v0, v1 and v2, pay-to-pubkey of 35 and 67 bytes, EVM, TRON)."""
    block = decode_block(realdata("btc", "block413567.raw").read_bytes())
    scripts = {out.script for tx in block.txs for out in tx.outputs}
    rng = random.Random(3)
    made = [p2pkh(rng.randbytes(20)), p2sh(rng.randbytes(20)), p2wpkh(rng.randbytes(20))]
    made += [p2wsh(rng.randbytes(32)), p2tr(rng.randbytes(32))]
    made += [normalise_key("evm", "0x" + rng.randbytes(20).hex(), None).key]
    made += [normalise_key("tron", "41" + rng.randbytes(20).hex(), None).key]
    made += [normalise_key("bitcoin", "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", None).key]  # witness v2, 16 bytes
    made += [p2pk_script(b"\x02" + rng.randbytes(32)), p2pk_script(b"\x04" + rng.randbytes(64))]  # pay-to-pubkey
    every = sorted(scripts | set(made))
    assert {len(k) for k in every} >= {18, 20, 22, 23, 25, 34, 35, 67}
    model: Model = {key: (None if i % 4 else i) for i, key in enumerate(every)}
    for table in both():
        for key, stamp in model.items():
            table.set(key, stamp)
        assert_holds(table, model, [k + b"\x00" for k in every[:200]])


def test_iterating_while_keys_are_added_or_removed_fails_as_a_dict_does() -> None:
    for table in both():
        for i in range(10):
            table.set(bytes([i]) * 20, None)

        def add_while_iterating(t: KeyTable = table) -> None:
            for key in t.active():
                t.set(key + b"x", None)

        def remove_while_iterating(t: KeyTable = table) -> None:
            for key in t.active():
                t.discard(key)

        with pytest.raises(RuntimeError):
            add_while_iterating()
        with pytest.raises(RuntimeError):
            remove_while_iterating()
        for key in list(table.active()):  # a change of state alone is no change of size
            table.set(key, 5)
        assert table.n_revoked == len(table)


@pytest.mark.parametrize("compiled", [True, False])
def test_bad_keys_and_times_are_typed_errors(compiled: bool) -> None:
    table = new_table(compiled)
    with pytest.raises(TypeError):
        table.set("ab" * 10, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.set(b"k" * 20, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.set(b"k" * 20, "1")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        table.set(b"k" * 20, 2**63)
    with pytest.raises(OverflowError):
        table.set(b"k" * 20, -(2**63) - 1)
    assert len(table) == 0
    table.set(b"k" * 20, None)
    assert table.get("k" * 20) is None and "k" * 20 not in table.active()  # type: ignore[arg-type]
    assert not table.discard(bytearray(b"k" * 20))  # type: ignore[arg-type]


def test_pure_python_is_used_when_asked_for() -> None:
    code = "from depositwatch import keytable; from depositwatch.registry import ChainBook; "
    code += "print(keytable.USE_EXTENSION, type(ChainBook().table).__name__)"
    for value, expected in (("1", "False PyKeyTable"), ("0", "True KeyTable"), ("", "True KeyTable")):
        env = {**os.environ, "DEPOSITWATCH_PURE_PYTHON": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


# ---------------------------------------------------------------------------------------------
# The book's users


ETH = Asset("ETH", 18)
UNLISTED = Asset("XYZ", 18, contract="0x" + "99" * 20, listed=False)


def matches_the_old_way(transfers: list[Transfer], active: set[bytes], revoked: dict[bytes, int], time: int) -> Any:
    """The matcher as it was over a set and a dict: the oracle."""
    found = []
    for t in transfers:
        to = t.to_key
        if to is not None:
            at = revoked.get(to)
            if at is not None and time >= at:
                found.append((MatchKind.REVOKED_INCOMING, to, t))
            elif (at is not None or to in active) and t.asset.listed:
                found.append((MatchKind.DEPOSIT, to, t))
        if t.from_key is not None:
            at = revoked.get(t.from_key)
            if at is not None and time >= at:
                found.append((MatchKind.REVOKED_OUTGOING, t.from_key, t))
    return found


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_matcher_on_either_table_matches_as_over_a_set_and_a_dict(data: st.DataObject) -> None:
    pool = [bytes([n]) * 20 for n in range(12)]
    states = data.draw(st.lists(st.one_of(st.none(), st.integers(90, 110)), min_size=12, max_size=12))
    watched = data.draw(st.lists(st.booleans(), min_size=12, max_size=12))
    active = {k for k, s, w in zip(pool, states, watched, strict=True) if w and s is None}
    revoked = {k: s for k, s, w in zip(pool, states, watched, strict=True) if w and s is not None}
    transfers = [
        Transfer(
            data.draw(st.sampled_from([ETH, UNLISTED])),
            1,
            f"0x{i:064x}",
            0,
            data.draw(st.sampled_from(pool)),
            from_key=data.draw(st.sampled_from([None, *pool])),
        )
        for i in range(data.draw(st.integers(0, 8)))
    ]
    time = data.draw(st.integers(85, 115))
    expected = matches_the_old_way(transfers, active, revoked, time)
    for compiled in (True, False):
        book = ChainBook(active, revoked, table=new_table(compiled))
        got = match_transfers("eth", transfers, book, time, None)
        assert [(m.kind, m.key, m.transfer) for m in got] == expected
        assert all(isinstance(m, Match) and m.block_time == time for m in got)


def test_the_compiled_bitcoin_scan_reads_the_views_as_a_set_and_a_dict() -> None:
    """`BitcoinSource` hands the book's views to the scan: the same hits as with a set and a dict, on
    both scan paths."""
    raw = realdata("btc", "block413567.raw").read_bytes()
    txs = decode_block(raw).txs
    real = sorted({out.script for tx in txs for out in tx.outputs if out.script[:1] != b"\x6a"})
    picked = random.Random(413567).sample(real, 60)
    active = {hashlib.sha256(i.to_bytes(4, "big")).digest()[:25] for i in range(50_000)} | set(picked[:30])
    revoked = dict.fromkeys(picked[30:], 0)
    book = ChainBook(active, revoked)
    assert type(book.active).__name__ == "ActiveKeys"
    expected = _scan_block_py(raw, active, set(), more_scripts=revoked, follow=revoked)
    assert len(expected.outputs) >= 60
    assert _scan_block_ext(raw, book.active, set(), True, book.revoked, book.revoked) == expected
    assert _scan_block_py(raw, book.active, set(), more_scripts=book.revoked, follow=book.revoked) == expected


_LOAD = """
import asyncio, json, sys
from depositwatch.registry import AddressRegistry
from depositwatch.store import open_store
from depositwatch.store.base import RegistryRow

async def main():
    store = await open_store(sys.argv[1])
    registry = await AddressRegistry.load(store)
    await store.close()
    probes = [(chain, bytes.fromhex(key)) for chain, key in json.loads(sys.stdin.read())]
    print(type(registry.book("eth").table).__name__)
    print(json.dumps(sorted([chain, status, n] for (chain, status), n in registry.sizes().items())))
    print(json.dumps([str(registry.lookup(chain, key)) for chain, key in probes]))

asyncio.run(main())
"""


@pytest.mark.parametrize("pure", ["0", "1"])
async def test_the_registry_loads_the_same_book_on_either_table(tmp_path: Path, pure: str) -> None:
    """A store's book, with keys of several lengths, active and revoked, through `AddressRegistry.load`
    in a process on the compiled table or on the reference one: the sizes and answers of the book
    built from the same rows."""
    url = f"sqlite:///{tmp_path / 'book.db'}"
    store = await open_store(url, migrate=True)
    rng = random.Random(5)
    entries = []
    for i in range(300):
        chain, key = (
            ("eth", rng.randbytes(20))
            if i % 2
            else ("btc", (p2wsh(rng.randbytes(32)), p2pkh(rng.randbytes(20)))[i % 3 == 0])
        )
        revoked = i % 5 == 0
        status = AddressStatus.REVOKED if revoked else AddressStatus.ACTIVE
        address = "0x" + key.hex() if chain == "eth" else f"script-{i}"
        entries.append(
            AddressEntry(chain, address, key, status, f"l{i}", f"o{i}", 1_700_000_000 + i if revoked else None)
        )
    await store.import_addresses(list(enumerate(entries, start=2)))
    await store.close()
    probes = [(e.chain, e.key) for e in entries] + [
        ("eth", b"\x00" * 20),
        ("btc", b"\x00" * 25),
        ("tron", b"\x00" * 20),
    ]
    run = subprocess.run(
        [sys.executable, "-c", _LOAD, url],
        input=json.dumps([(chain, key.hex()) for chain, key in probes]),
        env={**os.environ, "DEPOSITWATCH_PURE_PYTHON": pure},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    kind, sizes, answers = run.stdout.strip().splitlines()
    assert kind == ("PyKeyTable" if pure == "1" else "KeyTable")
    expected = AddressRegistry.from_rows(RegistryRow(e.chain, e.key, e.status, e.revoked_at) for e in entries)
    assert json.loads(sizes) == sorted([chain, status, n] for (chain, status), n in expected.sizes().items())
    assert json.loads(answers) == [str(expected.lookup(chain, key)) for chain, key in probes]
    assert sum(a != "None" for a in json.loads(answers)) == 300


def test_a_registry_swap_is_seen_by_a_book_held_since() -> None:
    """A book taken before `ChainBook.add` sees the change (the TRON source reads the book at each fetch)."""
    book = ChainBook()
    registry = AddressRegistry({"tron": book})
    held: Callable[[bytes], object] = registry.book("tron").get
    key = b"\x41" * 20
    assert held(key) is None
    book.add(key, AddressStatus.REVOKED, 7)
    assert held(key) == 7 and registry.lookup("tron", key) == (AddressStatus.REVOKED, 7)
    book.add(key, AddressStatus.ACTIVE, None)
    assert registry.lookup("tron", key) == (AddressStatus.ACTIVE, None)
    assert registry.sizes() == {("tron", "active"): 1, ("tron", "revoked"): 0}
