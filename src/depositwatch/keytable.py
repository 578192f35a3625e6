"""Key tables: a chain's watched keys, each active or revoked at a time, with no object per key.

A `KeyTable(marker)` answers `get(key)` with one probe: None when the key is not watched, `marker` when
it is active, its revocation time (an int) when it is revoked. `active()` and `revoked()` give live
views that behave as the set of active keys and the dict of revoked keys to their times, for code that
reads a book that way (the Bitcoin and TRON scans, the mempool watchers, the EVM log filter).

The compiled table (`_keytable.c`) keeps the keys of each length in one open-addressing table of
fixed-size slots (the key and a 4-byte value), about 40 bytes an address where Python sets and dicts
took about 100. This module's `PyKeyTable` is the reference, a dict of keys to their state: it is used
where the extension is not built or `DEPOSITWATCH_PURE_PYTHON=1` (read at import), and the tests hold
both to the same answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Final, Protocol, TypeVar

try:
    from depositwatch import _keytable
except ImportError:  # not built (no compiler): the dict-backed table does it all, with more memory
    _keytable = None  # type: ignore[assignment]

BUILT: bool = _keytable is not None
"""Whether the compiled table (`_keytable.c`) was built and imported."""
USE_EXTENSION: bool = BUILT and os.environ.get("DEPOSITWATCH_PURE_PYTHON", "") in ("", "0")
"""Whether `new_table` makes compiled tables: built, and `DEPOSITWATCH_PURE_PYTHON` not set."""

_D = TypeVar("_D")


class Active(Enum):
    """The type of `ACTIVE`, what a book's `get` answers for an active key."""

    ACTIVE = "active"


ACTIVE: Final = Active.ACTIVE


class ActiveKeys(Protocol):
    """The active keys of a table, as a set (live)."""

    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __or__(self, other: Iterable[bytes], /) -> set[bytes]: ...


class RevokedKeys(Protocol):
    """The revoked keys of a table and their revocation times, as a dict (live)."""

    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __getitem__(self, key: bytes, /) -> int: ...
    def __or__(self, other: Iterable[bytes], /) -> set[bytes]: ...
    def get(self, key: bytes, default: _D | None = None, /) -> int | _D | None: ...
    def keys(self) -> RevokedKeys: ...


class KeyTable(Protocol):
    """What both tables do (see the module docstring)."""

    @property
    def n_active(self) -> int: ...
    @property
    def n_revoked(self) -> int: ...
    def __len__(self) -> int: ...
    def get(self, key: bytes, default: None = None, /) -> int | Active | None: ...
    def set(self, key: bytes, revoked_at: int | None, /) -> None: ...
    def discard(self, key: bytes, /) -> bool: ...
    def reserve(self, length: int, count: int, /) -> None: ...
    def active(self) -> ActiveKeys: ...
    def revoked(self) -> RevokedKeys: ...


_INT64 = range(-(2**63), 2**63)


class PyKeyTable:
    """The reference table: a dict of each key to the marker (active) or its revocation time."""

    __slots__ = ("_marker", "_values", "n_active", "n_revoked")

    def __init__(self, marker: Active) -> None:
        self._marker = marker
        self._values: dict[bytes, int | Active] = {}
        self.n_active = 0
        self.n_revoked = 0

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: object, default: None = None, /) -> int | Active | None:
        if not isinstance(key, bytes):
            return default
        return self._values.get(key, default)

    def set(self, key: object, revoked_at: object, /) -> None:
        if not isinstance(key, bytes):
            raise TypeError(f"a key is bytes, not {type(key).__name__}")
        if revoked_at is not None:
            if not isinstance(revoked_at, int):
                raise TypeError(f"a revocation time is an int or None, not {type(revoked_at).__name__}")
            if revoked_at not in _INT64:
                raise OverflowError("a revocation time is a 64-bit int")
        key = bytes(key)
        old = self._values.get(key)
        if old is not None:
            self._count(old, -1)
        value: int | Active = self._marker if revoked_at is None else int(revoked_at)
        self._values[key] = value
        self._count(value, 1)

    def discard(self, key: object, /) -> bool:
        if not isinstance(key, bytes):
            return False
        old = self._values.pop(key, None)
        if old is None:
            return False
        self._count(old, -1)
        return True

    def reserve(self, length: int, count: int, /) -> None:
        """Nothing to do: a dict sizes itself (the compiled table takes the room at once)."""
        if length < 0 or count < 0:
            raise ValueError("a key length and a count are not negative")

    def _count(self, value: int | Active, step: int) -> None:
        if value is self._marker:
            self.n_active += step
        else:
            self.n_revoked += step

    def active(self) -> PyActiveKeys:
        return PyActiveKeys(self)

    def revoked(self) -> PyRevokedKeys:
        return PyRevokedKeys(self)


class PyActiveKeys:
    """The active keys of a `PyKeyTable`, as a set (live)."""

    __slots__ = ("table",)

    def __init__(self, table: PyKeyTable) -> None:
        self.table = table

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.table._values.get(key) is self.table._marker

    def __len__(self) -> int:
        return self.table.n_active

    def __iter__(self) -> Iterator[bytes]:
        marker = self.table._marker
        return (key for key, value in self.table._values.items() if value is marker)

    def __or__(self, other: Iterable[bytes]) -> set[bytes]:
        return {*self, *other}

    def __ror__(self, other: Iterable[bytes]) -> set[bytes]:
        return {*other, *self}


class PyRevokedKeys:
    """The revoked keys of a `PyKeyTable` and their revocation times, as a dict (live)."""

    __slots__ = ("table",)

    def __init__(self, table: PyKeyTable) -> None:
        self.table = table

    def get(self, key: bytes, default: _D | None = None, /) -> int | _D | None:
        value = self.table.get(key)
        return default if value is None or value is self.table._marker else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def __getitem__(self, key: bytes) -> int:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __len__(self) -> int:
        return self.table.n_revoked

    def __iter__(self) -> Iterator[bytes]:
        marker = self.table._marker
        return (key for key, value in self.table._values.items() if value is not marker)

    def __or__(self, other: Iterable[bytes]) -> set[bytes]:
        return {*self, *other}

    def __ror__(self, other: Iterable[bytes]) -> set[bytes]:
        return {*other, *self}

    def keys(self) -> PyRevokedKeys:
        return self


def new_table(compiled: bool | None = None) -> KeyTable:
    """An empty table answering `ACTIVE` for active keys: compiled when `compiled` (default:
    `USE_EXTENSION`), else the reference."""
    if USE_EXTENSION if compiled is None else compiled:
        if not BUILT:
            raise RuntimeError("the compiled key table (depositwatch._keytable) is not built")
        return _keytable.KeyTable(ACTIVE)
    return PyKeyTable(ACTIVE)
