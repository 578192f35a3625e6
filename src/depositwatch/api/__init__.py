"""The address book's HTTP API (`[api]`, docs/api.md): bearer tokens with scopes, JSON in and out."""

from __future__ import annotations

from depositwatch.api.app import ApiContext, build_app, serve, start_api
from depositwatch.api.auth import TokenSet

__all__ = ["ApiContext", "TokenSet", "build_app", "serve", "start_api"]
