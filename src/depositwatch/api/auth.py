"""Bearer tokens: resolved once from the secrets mechanism, kept only as SHA-256 digests, compared in
constant time against every configured token (no early exit that would tell which one came close)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from depositwatch.config import ApiToken

MAX_TOKEN = 4096  # longer Authorization values are refused before hashing


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: a token's name and its scopes."""

    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """The audit log's actor: `token:<name>`."""
        return f"token:{self.name}"


class TokenSet:
    """The configured tokens, by digest."""

    def __init__(self, tokens: Sequence[tuple[Principal, bytes]]) -> None:
        self._tokens = list(tokens)

    @classmethod
    def from_config(cls, tokens: Sequence[ApiToken]) -> TokenSet:
        """Read every token's secret now (ConfigError names the one that is missing)."""
        found = []
        for token in tokens:
            value = token.secret.resolve().get_secret_value().encode()
            found.append((Principal(token.name, frozenset(token.scopes)), hashlib.sha256(value).digest()))
        return cls(found)

    def authenticate(self, header: str | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <token>` header, or None."""
        if not header or len(header) > MAX_TOKEN:
            return None
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        digest = hashlib.sha256(presented.strip().encode()).digest()
        match = None
        for principal, expected in self._tokens:
            if hmac.compare_digest(digest, expected):
                match = principal
        return match
