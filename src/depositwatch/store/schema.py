"""Schema migrations: the packaged SQL files, in version order, and their statements for each dialect.

`SqlStore.migrate` applies what a database lacks, one migration a transaction.
"""

from __future__ import annotations

from importlib import resources

from depositwatch.store.base import SchemaError

SQLITE_ONLY = "{SQLITE_ONLY}"  # a statement starting with it runs on SQLite only
_TYPES = {
    "sqlite": {"{BLOB}": "BLOB", "{SERIAL}": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"{BLOB}": "BYTEA", "{SERIAL}": "BIGSERIAL PRIMARY KEY"},
}


def migrations() -> list[tuple[int, str]]:
    """The packaged migrations, as (version, SQL) in order."""
    folder = resources.files("depositwatch.store").joinpath("migrations")
    return sorted(
        (int(item.name.split("_", 1)[0]), item.read_text()) for item in folder.iterdir() if item.name.endswith(".sql")
    )


def statements(sql: str, dialect: str) -> list[str]:
    """The statements of a migration, split on the semicolons outside string literals, quoted names
    and comments (a `;` or `--` inside `'...'` stays part of its statement); comments are dropped, and
    a statement that starts with `{SQLITE_ONLY}` is kept for SQLite only."""
    for token, replacement in _TYPES[dialect].items():
        sql = sql.replace(token, replacement)
    statements: list[str] = []
    current: list[str] = []
    i, size = 0, len(sql)
    while i < size:
        char = sql[i]
        if char in "'\"":  # a literal or quoted name runs to its closing quote; a doubled quote escapes
            end = i + 1
            while True:
                end = sql.find(char, end)
                if end < 0:
                    raise SchemaError(f"migration text has an unterminated {char} quote")
                if sql[end + 1 : end + 2] == char:
                    end += 2
                    continue
                break
            current.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = size if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SchemaError("migration text has an unterminated /* comment")
            current.append(" ")
            i = end + 2
        elif char == ";":
            statements.append("".join(current).strip())
            current = []
            i += 1
        else:
            current.append(char)
            i += 1
    statements.append("".join(current).strip())
    return _for_dialect(statements, dialect)


def _for_dialect(statements: list[str], dialect: str) -> list[str]:
    """The non-empty statements, those marked `{SQLITE_ONLY}` only for SQLite (unmarked there)."""
    kept = []
    for statement in statements:
        if not statement.startswith(SQLITE_ONLY):
            kept.append(statement)
        elif dialect == "sqlite":
            kept.append(statement.removeprefix(SQLITE_ONLY).strip())
    return [statement for statement in kept if statement]
