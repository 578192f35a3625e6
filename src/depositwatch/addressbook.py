"""The address book's file formats: the import CSV and revocation lists, validated all at once."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from depositwatch.addresses import AddressError, ParsedAddress, normalise_key
from depositwatch.addresses.derive import network_matches
from depositwatch.addresses.descriptors import MAX_DESCRIPTOR_LENGTH, KeyTree, TreeChain, parse_trees
from depositwatch.addresses.hd import HARDENED, PrivateKeyRefused, private_material_kind
from depositwatch.config import Config
from depositwatch.models import AddressEntry, AddressStatus, TreeEntry
from depositwatch.timeutil import now, parse_timestamp

CSV_COLUMNS = ("chain", "address", "status", "label", "owner", "revoked_at", "reason")
TREE_COLUMNS = ("descriptor", "range", "gap")  # optional: rows with a descriptor instead of an address
REQUIRED_COLUMNS = ("chain", "address", "status")
MAX_TEXT = 512
DEFAULT_RANGE = (0, 999)  # a tree row without a range: the first thousand indexes
MAX_GAP = 100_000  # a gap extension derives in the block commit: at most a few seconds of one core


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """What parsing an address needs to know of a chain."""

    kind: str  # "bitcoin", "evm" or "tron"
    network: str | None


class ChainDirectory:
    """Chain names → kind and network: the config's chains, else the built-in `btc` and `eth`."""

    DEFAULTS: Mapping[str, ChainInfo] = {
        "btc": ChainInfo("bitcoin", "mainnet"),
        "eth": ChainInfo("evm", None),
        "tron": ChainInfo("tron", None),
    }

    def __init__(self, chains: Mapping[str, ChainInfo]) -> None:
        self.chains = dict(chains)

    @classmethod
    def from_config(cls, config: Config, *, btc_network: str | None = None) -> ChainDirectory:
        """Configured chains win; without any, the defaults (Bitcoin on `btc_network` if given)."""
        chains = {c.name: ChainInfo(c.kind, c.network if c.kind == "bitcoin" else None) for c in config.chains}
        if not chains:
            chains = dict(cls.DEFAULTS)
            if btc_network:
                chains["btc"] = ChainInfo("bitcoin", btc_network)
        return cls(chains)

    def info(self, name: str) -> ChainInfo:
        """The chain's info, or ValueError naming the known chains."""
        try:
            return self.chains[name]
        except KeyError:
            known = ", ".join(sorted(self.chains))
            raise ValueError(f"unknown chain {name!r} (known: {known}; configure it under [[chains]])") from None

    def parse(self, chain: str, address: str) -> ParsedAddress:
        """Parse an address for a named chain; AddressError or ValueError on bad input."""
        info = self.info(chain)
        return normalise_key(info.kind, address, info.network)

    def expand(self, selector: str) -> list[str]:
        """`evm:*` → every EVM chain, `bitcoin:*` → every Bitcoin chain, `*` → all, else the one name."""
        if selector in {"*", "all"}:
            return sorted(self.chains)
        if selector.endswith(":*"):
            kind = selector[:-2]
            found = sorted(n for n, c in self.chains.items() if c.kind == kind)
            if not found:
                raise ValueError(f"no {kind} chains are configured for {selector!r}")
            return found
        self.info(selector)
        return [selector]


class BadRows(ValueError):
    """Rows that cannot be imported; `problems` are (line number, reason), every one of them."""

    def __init__(self, source: str, problems: Sequence[tuple[int, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}:{line}: {reason}" for line, reason in self.problems))


@dataclass(frozen=True, slots=True)
class BookRows:
    """An import file's rows: plain addresses and key trees, each with its line number."""

    entries: list[tuple[int, AddressEntry]]
    trees: list[tuple[int, TreeEntry]]


def read_import_csv(
    text: str, chains: ChainDirectory, *, source: str = "<csv>", stamp: int | None = None
) -> list[tuple[int, AddressEntry]]:
    """Parse and validate a whole import file of plain addresses; raise BadRows listing every bad row
    (a key tree row among them: `read_book_csv` reads those), or return all entries."""
    book = read_book_csv(text, chains, source=source, stamp=stamp)
    if book.trees:
        raise BadRows(
            source, [(line, "a key tree row (descriptor) where plain addresses are read") for line, _ in book.trees]
        )
    return book.entries


def _header(header: list[str], source: str) -> list[str]:
    """The import file's columns, lower-cased; BadRows naming every problem of the header row."""
    columns = [c.strip().lower() for c in header]
    problems: list[tuple[int, str]] = []
    extra = [c for c in columns if c not in CSV_COLUMNS + TREE_COLUMNS]
    required = [c for c in REQUIRED_COLUMNS if c != "address" or "descriptor" not in columns]
    missing = [c for c in required if c not in columns]
    if extra:
        problems.append(
            (1, f"unknown column(s) {', '.join(extra)}; the columns are {','.join(CSV_COLUMNS + TREE_COLUMNS)}")
        )
    if missing:
        problems.append((1, f"missing column(s) {', '.join(missing)}"))
    if len(set(columns)) != len(columns):
        problems.append((1, "a column is named twice"))
    if problems:
        raise BadRows(source, problems)
    return columns


def read_book_csv(text: str, chains: ChainDirectory, *, source: str = "<csv>", stamp: int | None = None) -> BookRows:
    """Parse and validate a whole import file, plain addresses and key trees (a `descriptor` column);
    raise BadRows listing every bad row, or return them all. No key material is ever echoed."""
    stamp = now() if stamp is None else stamp
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise BadRows(source, [(1, "empty file: expected a header row " + ",".join(CSV_COLUMNS))]) from None
    except csv.Error as exc:
        raise BadRows(source, [(1, f"not CSV: {exc}")]) from None
    columns = _header(header, source)
    problems: list[tuple[int, str]] = []
    book = BookRows([], [])
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                problems.append((line, f"{len(row)} fields, the header has {len(columns)}"))
                continue
            values = dict(zip(columns, row, strict=True))
            try:
                if values.get("descriptor", "").strip():
                    book.trees.extend((line, tree) for tree in _tree_entries(values, chains, stamp))
                else:
                    book.entries.extend((line, e) for e in _entries(values, chains, stamp))
            except (AddressError, ValueError) as exc:
                problems.append((line, str(exc)))
    except csv.Error as exc:
        problems.append((reader.line_num, f"not CSV: {exc}"))
    if problems:
        raise BadRows(source, problems)
    return book


def read_import_rows(
    rows: Sequence[Mapping[str, str]], chains: ChainDirectory, *, source: str = "<rows>", stamp: int | None = None
) -> list[tuple[int, AddressEntry]]:
    """Rows given as mappings of the CSV columns (the HTTP API's batches), validated exactly like CSV
    rows; BadRows numbers the bad ones from 1, every one of them."""
    stamp = now() if stamp is None else stamp
    entries: list[tuple[int, AddressEntry]] = []
    problems: list[tuple[int, str]] = []
    for number, row in enumerate(rows, start=1):
        values = {column: row.get(column, "") for column in CSV_COLUMNS}
        try:
            entries.extend((number, entry) for entry in _entries(values, chains, stamp))
        except (AddressError, ValueError) as exc:
            problems.append((number, str(exc)))
    if problems:
        raise BadRows(source, problems)
    return entries


def _entries(row: dict[str, str], chains: ChainDirectory, stamp: int) -> list[AddressEntry]:
    """A row's entry, and one more per other script paying the same key (a public key's bare P2PK
    script beside its P2PKH one: same address text, label, owner and status, type `p2pk`)."""
    entry, parsed = _entry(row, chains, stamp)
    return [entry, *(dataclasses.replace(entry, key=key, type=kind) for key, kind in parsed.also)]


def tree_chain(info: ChainInfo) -> TreeChain:
    """The tree family of a chain kind: every kind with a TreeChain of the same name takes trees."""
    try:
        return TreeChain(info.kind)
    except ValueError:
        raise ValueError(f"chains of kind {info.kind!r} take no key trees") from None


def parse_chain_trees(chains: ChainDirectory, chain: str, descriptor: str) -> tuple[KeyTree, ...]:
    """The trees a descriptor names on a chain (several for a multipath one), checked against the
    chain's kind and network; KeyTreeError (key material redacted) or ValueError."""
    info = chains.info(chain)
    trees = parse_trees(tree_chain(info), descriptor)
    if info.kind == "bitcoin" and not network_matches(trees[0], info.network or "mainnet"):
        raise ValueError(
            f"chain {chain} is on {info.network or 'mainnet'}; this key's version is for"
            f" {trees[0].network.value} (xpub/ypub/zpub for mainnet, tpub/upub/vpub for the test networks)"
        )
    return trees


def parse_range(text: str) -> tuple[int, int]:
    """`A-B`, inclusive, within 0..2^31-1; empty gives DEFAULT_RANGE."""
    if not text:
        return DEFAULT_RANGE
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit() or len(text) > 24:
        raise ValueError(f"range {text!r} is not A-B (inclusive indexes, e.g. 0-999)")
    a, b = int(first), int(last)
    if a > b or b >= HARDENED:
        raise ValueError(f"range {text!r}: need A <= B <= {HARDENED - 1}")
    return a, b


def _tree_entries(row: dict[str, str], chains: ChainDirectory, stamp: int) -> list[TreeEntry]:
    values = {k: v.strip() for k, v in row.items()}
    descriptor = values["descriptor"]
    kind = private_material_kind(descriptor)
    if kind is not None:  # before any other check, so no message can carry the key
        raise PrivateKeyRefused(descriptor, f"{kind}: give the account's extended public key, never a private key")
    if len(descriptor) > MAX_DESCRIPTOR_LENGTH:
        raise ValueError(f"descriptor is longer than {MAX_DESCRIPTOR_LENGTH} characters")
    if values.get("address"):
        raise ValueError("a row has an address or a descriptor, not both")
    status, revoked_at, label, owner, reason = _common(values)
    trees = parse_chain_trees(chains, values["chain"], descriptor)
    first, last = parse_range(values.get("range", ""))
    gap_text = values.get("gap", "") or "0"
    if not gap_text.isdigit() or int(gap_text) > MAX_GAP:
        raise ValueError(f"gap {gap_text!r} is not a count from 0 to {MAX_GAP}")
    info = chains.info(values["chain"])
    return [
        TreeEntry(
            chain=values["chain"],
            descriptor=tree.descriptor,
            script=tree.script.value,
            first=first,
            last=last,
            status=status,
            gap=int(gap_text),
            network=info.network if info.kind == "bitcoin" else None,
            label=label,
            owner=owner,
            revoked_at=revoked_at,
            reason=reason,
            created_at=stamp,
        )
        for tree in trees
    ]


def _common(values: dict[str, str]) -> tuple[AddressStatus, int | None, str, str, str]:
    """A row's status, revocation time, label, owner and reason, checked."""
    for name, value in values.items():
        if len(value) > MAX_TEXT and name != "descriptor":
            raise ValueError(f"{name} is longer than {MAX_TEXT} characters")
        if any(ord(ch) < 32 for ch in value):
            raise ValueError(f"{name} contains control characters")
    if not values["chain"]:
        raise ValueError("chain is empty")
    try:
        status = AddressStatus(values["status"].lower())
    except ValueError:
        raise ValueError(f"status must be active or revoked, not {values['status']!r}") from None
    revoked_text = values.get("revoked_at", "")
    revoked_at = None
    if status is AddressStatus.REVOKED:
        if not revoked_text:
            raise ValueError("a revoked address needs revoked_at (when its key may have leaked)")
        revoked_at = parse_timestamp(revoked_text)
    elif revoked_text:
        raise ValueError("revoked_at is set but status is active")
    return status, revoked_at, values.get("label", ""), values.get("owner", ""), values.get("reason", "")


def _entry(row: dict[str, str], chains: ChainDirectory, stamp: int) -> tuple[AddressEntry, ParsedAddress]:
    values = {k: v.strip() for k, v in row.items() if k not in TREE_COLUMNS}
    kind = private_material_kind(values["address"])
    if kind is not None:  # never let a codec's error echo a private key
        raise PrivateKeyRefused(values["address"], f"{kind}: an address column takes addresses, never a private key")
    status, revoked_at, label, owner, reason = _common(values)
    parsed = chains.parse(values["chain"], values["address"])
    entry = AddressEntry(
        chain=values["chain"],
        address=parsed.address,
        key=parsed.key,
        status=status,
        label=label,
        owner=owner,
        revoked_at=revoked_at,
        reason=reason,
        created_at=stamp,
        type=parsed.type,
    )
    return entry, parsed


def read_address_list(
    lines: Iterable[str], chains: Sequence[str], directory: ChainDirectory, *, source: str = "<list>"
) -> list[bytes]:
    """A revocation list: one address per line, `#` comments; every address must parse on every chain."""
    keys: list[bytes] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parsed = set()
        for chain in chains:
            try:
                found = directory.parse(chain, text)
                parsed.add((found.key, *(key for key, _ in found.also)))
            except (AddressError, ValueError) as exc:
                problems.append((number, f"{chain}: {exc}"))
        if len(parsed) == 1:
            keys += parsed.pop()
        elif len(parsed) > 1:
            problems.append((number, "the address means different keys on the chosen chains; revoke per chain"))
    if problems:
        raise BadRows(source, problems)
    return keys


def read_text(path: str) -> str:
    """A file's text, or stdin for '-'; ValueError naming the file when it cannot be read."""
    import sys

    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
