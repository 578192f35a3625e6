"""The address book's file formats: the import CSV and revocation lists, validated all at once."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from depositwatch.addresses import AddressError, ParsedAddress, normalise_key
from depositwatch.config import Config
from depositwatch.models import AddressEntry, AddressStatus
from depositwatch.timeutil import now, parse_timestamp

CSV_COLUMNS = ("chain", "address", "status", "label", "owner", "revoked_at", "reason")
REQUIRED_COLUMNS = ("chain", "address", "status")
MAX_TEXT = 512


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """What parsing an address needs to know of a chain."""

    kind: str  # "bitcoin" or "evm"
    network: str | None


class ChainDirectory:
    """Chain names → kind and network: the config's chains, else the built-in `btc` and `eth`."""

    DEFAULTS: Mapping[str, ChainInfo] = {"btc": ChainInfo("bitcoin", "mainnet"), "eth": ChainInfo("evm", None)}

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


def read_import_csv(
    text: str, chains: ChainDirectory, *, source: str = "<csv>", stamp: int | None = None
) -> list[tuple[int, AddressEntry]]:
    """Parse and validate a whole import file; raise BadRows listing every bad row, or return all entries."""
    stamp = now() if stamp is None else stamp
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise BadRows(source, [(1, "empty file: expected a header row " + ",".join(CSV_COLUMNS))]) from None
    except csv.Error as exc:
        raise BadRows(source, [(1, f"not CSV: {exc}")]) from None
    columns = [c.strip().lower() for c in header]
    problems: list[tuple[int, str]] = []
    extra = [c for c in columns if c not in CSV_COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if extra:
        problems.append((1, f"unknown column(s) {', '.join(extra)}; the columns are {','.join(CSV_COLUMNS)}"))
    if missing:
        problems.append((1, f"missing column(s) {', '.join(missing)}"))
    if len(set(columns)) != len(columns):
        problems.append((1, "a column is named twice"))
    if problems:
        raise BadRows(source, problems)
    entries: list[tuple[int, AddressEntry]] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                problems.append((line, f"{len(row)} fields, the header has {len(columns)}"))
                continue
            try:
                entries.append((line, _entry(dict(zip(columns, row, strict=True)), chains, stamp)))
            except (AddressError, ValueError) as exc:
                problems.append((line, str(exc)))
    except csv.Error as exc:
        problems.append((reader.line_num, f"not CSV: {exc}"))
    if problems:
        raise BadRows(source, problems)
    return entries


def _entry(row: dict[str, str], chains: ChainDirectory, stamp: int) -> AddressEntry:
    values = {k: v.strip() for k, v in row.items()}
    for name, value in values.items():
        if len(value) > MAX_TEXT:
            raise ValueError(f"{name} is longer than {MAX_TEXT} characters")
        if any(ord(ch) < 32 for ch in value):
            raise ValueError(f"{name} contains control characters")
    chain = values["chain"]
    if not chain:
        raise ValueError("chain is empty")
    parsed = chains.parse(chain, values["address"])
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
    return AddressEntry(
        chain=chain,
        address=parsed.address,
        key=parsed.key,
        status=status,
        label=values.get("label", ""),
        owner=values.get("owner", ""),
        revoked_at=revoked_at,
        reason=values.get("reason", ""),
        created_at=stamp,
        type=parsed.type,
    )


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
                parsed.add(directory.parse(chain, text).key)
            except (AddressError, ValueError) as exc:
                problems.append((number, f"{chain}: {exc}"))
        if len(parsed) == 1:
            keys.append(parsed.pop())
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
