"""Key trees in the store, on SQLite and PostgreSQL: import and its cache, registry load, matches that
name tree and index, gap extension while running, revocation, and the all-or-nothing refusals."""

from __future__ import annotations

import pytest

from depositwatch.addressbook import BadRows, ChainDirectory, ChainInfo, read_book_csv, read_import_csv
from depositwatch.addresses.derive import address_text, derive, watch_keys
from depositwatch.addresses.descriptors import parse_tree
from depositwatch.addresses.hd import parse_extended_public_key
from depositwatch.jsonutil import loads
from depositwatch.matcher import match_block
from depositwatch.models import AddressStatus, Asset, Block, Transfer
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, ChainPolicy, Cursor, ImportRejected, Scope, SqlStore

XPUB = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
TPUB = parse_extended_public_key(XPUB)[0].serialise("tpub")
ETH = Asset("ETH", 18)
BTC = Asset("BTC", 8)
DIRECTORY = ChainDirectory(
    {
        "btc": ChainInfo("bitcoin", "mainnet"),
        "eth": ChainInfo("evm", None),
        "polygon": ChainInfo("evm", None),
        "tron": ChainInfo("tron", None),
        "regtest": ChainInfo("bitcoin", "regtest"),
    }
)
HEADER = "chain,descriptor,range,gap,status,label,owner,revoked_at,reason\n"


def book(*rows: str) -> str:
    return HEADER + "".join(row + "\n" for row in rows)


def key_at(chain: str, descriptor: str, index: int) -> bytes:
    tree = parse_tree(DIRECTORY.info(chain).kind, descriptor)
    return next(key for i, key in derive(tree, index, index + 1))


async def commit(store: SqlStore, chain: str, height: int, transfers: tuple[Transfer, ...]) -> list[str]:
    """Match a block against a freshly loaded registry and commit it; return the matches' kinds."""
    registry = await AddressRegistry.load(store)
    block = Block(height, f"h{height}", f"h{height - 1}", 1_800_000_000 + height, transfers)
    found = match_block(chain, block, registry.book(chain))
    cursor = await store.get_cursor(f"live:{chain}") or Cursor(f"live:{chain}", chain, height - 1, f"h{height - 1}")
    await store.set_cursor(cursor)
    await store.commit_blocks(
        Scope.live(), cursor, ChainPolicy(chain, confirmations=1), [BlockEffects(block, found)], height
    )
    return sorted(str(m.kind) for m in found)


async def test_import_caches_every_key_and_the_registry_loads_them(store: SqlStore) -> None:
    """A wpkh tree of 10 indexes caches 10 scripts; a pkh tree caches 20 (P2PKH and P2PK of each key);
    the registry holds them with the tree's status, and a re-import changes nothing."""
    text = book(
        f"btc,wpkh({XPUB}/0/*),0-9,,revoked,hot,ops,2024-01-01T00:00:00Z,leak",
        f"btc,pkh({XPUB}/1/*),0-9,,active,change,ops,,",
    )
    rows = read_book_csv(text, DIRECTORY)
    assert [line for line, _ in rows.trees] == [2, 3] and not rows.entries
    result = await store.trees.import_entries(rows.trees)
    assert (result.inserted, result.updated, result.unchanged) == (2, 0, 0)
    listed = await store.trees.entries()
    assert sorted((entry.script, count) for entry, count in listed) == [("pkh", 20), ("wpkh", 10)]
    registry = await AddressRegistry.load(store)
    wpkh = rows.trees[0][1]
    for index in (0, 9):
        assert registry.lookup("btc", key_at("btc", wpkh.descriptor, index)) == (AddressStatus.REVOKED, 1704067200)
    assert registry.lookup("btc", key_at("btc", wpkh.descriptor, 10)) is None
    pkh = parse_tree("bitcoin", rows.trees[1][1].descriptor)
    p2pk = [key for index, key in watch_keys(pkh, 4, 5)][1]
    assert p2pk[0] == 0x21 and p2pk[-1] == 0xAC
    assert registry.lookup("btc", p2pk) == (AddressStatus.ACTIVE, None)
    again = await store.trees.import_entries(read_book_csv(text, DIRECTORY).trees)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    stats = await store.trees.stats()
    assert {(r["script"], r["trees"], r["indexes"], r["keys"]) for r in stats} == {
        ("pkh", 1, 10, 20),
        ("wpkh", 1, 10, 10),
    }


async def test_a_match_names_tree_and_index_and_the_gap_grows_the_range(store: SqlStore) -> None:
    """A transfer to index 7 of a 0-9 tree with gap 5 alerts naming the tree and index 7 and grows the
    range to 0-12 in the same commit (book version bumped); a transfer to index 12 then matches."""
    rows = read_book_csv(
        book(f"eth,[d34db33f/44h/60h/0h]{XPUB}/0/*,0-9,5,revoked,acct,ops,2024-01-01T00:00:00Z,x"), DIRECTORY
    )
    await store.trees.import_entries(rows.trees)
    descriptor = rows.trees[0][1].descriptor
    before = await store.address_book_version()
    standby = await AddressRegistry.load(store)  # another instance's registry, loaded before the growth
    other = bytes(20)
    seven = key_at("eth", descriptor, 7)
    assert await commit(store, "eth", 10, (Transfer(ETH, 1, "0x01", None, seven, other),)) == ["revoked_incoming"]
    (match,) = await store.matches(Scope.live(), chain="eth")
    assert match["tree_index"] == 7 and match["tree_id"] is not None
    (message,) = [m for m in await store.outbox.messages() if m.event == "detected"]
    body = loads(message.payload)
    assert body["tree"] == {"id": match["tree_id"], "descriptor": descriptor, "index": 7}
    tree = parse_tree("evm", descriptor)
    assert body["address"]["address"] == address_text(tree, seven)
    assert await store.address_book_version() > before
    ((entry, count),) = await store.trees.entries()
    assert (entry.first, entry.last, count) == (0, 12, 13)
    twelve = key_at("eth", descriptor, 12)
    assert standby.lookup("eth", twelve) is None
    assert await standby.reload(store)  # the book version tells it; the grown range is in its registry
    assert standby.lookup("eth", twelve) == (AddressStatus.REVOKED, 1704067200)
    assert await commit(store, "eth", 11, (Transfer(ETH, 1, "0x02", None, twelve, other),)) == ["revoked_incoming"]
    ((entry, count),) = await store.trees.entries()
    assert (entry.last, count) == (17, 18)


async def test_grow_trees_before_the_commit_grows_only_what_a_gap_calls_for(store: SqlStore) -> None:
    """`trees.grow`, which the follower calls before committing a batch: a key deep inside the range, a
    plain address and a tree without a gap grow nothing; a key within the gap of the end grows its tree
    (the book version bumped), once: asked again, nothing more grows."""
    rows = read_book_csv(
        book(
            f"eth,{XPUB}/0/*,0-9,5,revoked,acct,ops,2024-01-01T00:00:00Z,x",
            f"eth,{XPUB}/1/*,0-9,,active,change,ops,,",
        ),
        DIRECTORY,
    )
    await store.trees.import_entries(rows.trees)
    grows, fixed = (entry.descriptor for _, entry in rows.trees)
    before = await store.address_book_version()
    assert await store.trees.grow("eth", {key_at("eth", grows, 2), key_at("eth", fixed, 9), bytes(20)}) == 0
    assert await store.trees.grow("btc", {key_at("eth", grows, 9)}) == 0  # another chain's book
    assert await store.address_book_version() == before
    assert await store.trees.grow("eth", {key_at("eth", grows, 2), key_at("eth", grows, 8)}) == 1
    assert await store.address_book_version() > before
    assert sorted((entry.descriptor, entry.last, count) for entry, count in await store.trees.entries()) == sorted(
        [(grows, 13, 14), (fixed, 9, 10)]
    )
    assert await store.trees.grow("eth", {key_at("eth", grows, 8)}) == 0
    registry = await AddressRegistry.load(store)
    assert registry.lookup("eth", key_at("eth", grows, 13)) == (AddressStatus.REVOKED, 1704067200)


async def test_revoke_a_tree_turns_recorded_deposits_into_retro_alerts(store: SqlStore) -> None:
    """An active tree's recorded deposit at index 3 becomes a revoked_incoming alert when the tree is
    revoked as of before its block; an unknown tree revokes nothing; re-importing as active is refused."""
    rows = read_book_csv(book(f"tron,{XPUB},0-4,,active,deposits,ops,,"), DIRECTORY)
    await store.trees.import_entries(rows.trees)
    descriptor = rows.trees[0][1].descriptor
    three = key_at("tron", descriptor, 3)
    assert await commit(store, "tron", 5, (Transfer(Asset("TRX", 6), 9, "aa", None, three, bytes(20)),)) == ["deposit"]
    with pytest.raises(Exception, match="not in the book"):
        await store.trees.revoke([("tron", descriptor), ("eth", descriptor)], 1, "leak")
    assert (await AddressRegistry.load(store)).lookup("tron", three) == (AddressStatus.ACTIVE, None)
    result = await store.trees.revoke([("tron", descriptor)], 1, "leak")
    assert (result.revoked, result.already_revoked, result.retro) == (1, 0, 1)
    again = await store.trees.revoke([("tron", descriptor)], 2, "again")
    assert (again.revoked, again.already_revoked) == (0, 1)
    assert (await AddressRegistry.load(store)).lookup("tron", three) == (AddressStatus.REVOKED, 1)
    retro = [m for m in await store.matches(Scope.live(), chain="tron") if m["kind"] == "revoked_incoming"]
    assert [(m["tree_index"], m["address"]) for m in retro] == [
        (3, address_text(parse_tree("tron", descriptor), three))
    ]
    with pytest.raises(ImportRejected, match="importing it as active is refused"):
        await store.trees.import_entries(rows.trees)


def test_tree_rows_are_refused_where_plain_addresses_are_read() -> None:
    """read_import_csv (the plain form) names a tree row's line instead of reading it as an address."""
    with pytest.raises(BadRows, match=r"<csv>:2: a key tree row"):
        read_import_csv(book(f"eth,{XPUB},0-1,,active,,,,"), DIRECTORY)


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (f"btc,{TPUB},0-1,,active,,,,", "is on mainnet"),
        (f"regtest,{XPUB},0-1,,active,,,,", "is on regtest"),
        (f"eth,{XPUB},5-1,,active,,,,", "need A <= B"),
        (f"eth,{XPUB},0-2147483648,,active,,,,", "need A <= B"),
        (f"eth,{XPUB},x,,active,,,,", "is not A-B"),
        (f"eth,{XPUB},0-1,-1,active,,,,", "is not a count"),
        (f"eth,wpkh({XPUB}),0-1,,active,,,,", "character"),
    ],
)
def test_bad_tree_rows(row: str, why: str) -> None:
    """Network mismatches, bad ranges and gaps, Bitcoin wrappers on an EVM chain: refused with a reason."""
    with pytest.raises(BadRows, match=why):
        read_book_csv(book(row), DIRECTORY)


async def test_reimport_grows_a_range_and_never_shrinks_it(store: SqlStore) -> None:
    """Importing a tree again with a wider range derives only the new indexes (both ends); a narrower
    range keeps what is cached; a new label updates it."""
    first = read_book_csv(book(f"eth,{XPUB},10-19,,active,a,ops,,"), DIRECTORY).trees
    await store.trees.import_entries(first)
    wider = read_book_csv(book(f"eth,{XPUB},5-24,,active,b,ops,,"), DIRECTORY).trees
    assert (await store.trees.import_entries(wider)).updated == 1
    ((entry, count),) = await store.trees.entries()
    assert (entry.first, entry.last, entry.label, count) == (5, 24, "b", 20)
    narrower = read_book_csv(book(f"eth,{XPUB},0-9,,active,b,ops,,"), DIRECTORY).trees
    await store.trees.import_entries(narrower)
    ((entry, count),) = await store.trees.entries()
    assert (entry.first, entry.last, count) == (0, 24, 25)
    registry = await AddressRegistry.load(store)
    descriptor = entry.descriptor
    assert all(registry.lookup("eth", key_at("eth", descriptor, i)) for i in (0, 5, 24))
    assert registry.lookup("eth", key_at("eth", descriptor, 25)) is None
