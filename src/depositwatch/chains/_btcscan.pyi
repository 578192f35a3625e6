from collections.abc import Collection, Container

def scan(
    buf: bytes,
    scripts: Container[bytes],
    outpoints: Collection[bytes],
    more_scripts: Container[bytes] | None,
    follow: Container[bytes] | None,
    verify_merkle: bool,
    /,
) -> tuple[int, list[tuple[int, bytes, int, int, bytes]], list[tuple[int, bytes, int, bytes, int]]] | None: ...
