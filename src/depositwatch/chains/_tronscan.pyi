from collections.abc import Callable, Container, Sequence
from typing import Any, TypeAlias

_Fields: TypeAlias = tuple[int, bytes, bytes | None, bytes | None, int, bytes | None, bytes]

def fields(raw: bytes, /) -> _Fields | None: ...
def transaction(raw_hex: str, signature_hex: str, tail: bytes, /) -> tuple[str, bytes, _Fields] | None: ...
def usual(tails: dict[str, tuple[bytes, bool, bool]], tx: Any, /) -> tuple[str, bytes, tuple[_Fields, bool]] | None: ...
def logs(
    info: Any, trc20: dict[bytes, Any], watch: Container[bytes] | None, revoked: Container[bytes] | None, /
) -> list[tuple[int, bytes, bytes, bytes, bytes, bool]] | None: ...
def merkle_root(leaves: Sequence[bytes], /) -> bytes | None: ...
def transfers(
    txs: dict[str, tuple[_Fields, bool]],
    infos: Any,
    height: int,
    trc20: dict[bytes, Any],
    watch: Container[bytes] | None,
    revoked: Container[bytes] | None,
    internal: bool,
    /,
) -> list[tuple[Any, ...]] | None: ...
def transactions(
    tails: dict[str, tuple[bytes, bool, bool]],
    items: list[Any],
    checked: Callable[[Any, int, int], tuple[str, bytes, tuple[_Fields, bool]]],
    height: int,
    /,
) -> tuple[dict[str, tuple[_Fields, bool]], list[bytes]] | None: ...
