"""The routes of the HTTP API under /api/v1, and its listener.

GET routes need the `read` scope, POST routes `write`; only the OpenAPI document is served without a
token. Every change goes through the store's own all-or-nothing operations, audited as `token:<name>`,
and bumps the book's version, so the daemon's registry reloads it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import structlog
from aiohttp import web

from depositwatch.addressbook import (
    CSV_COLUMNS,
    BadRows,
    ChainDirectory,
    parse_chain_trees,
    read_address_list,
    read_import_rows,
)
from depositwatch.addresses import AddressError
from depositwatch.api.auth import Principal, TokenSet
from depositwatch.api.errors import ApiError, Handler, errors_middleware, invalid
from depositwatch.api.records import address_record, alert_record, audit_record
from depositwatch.config import Config, parse_listen
from depositwatch.jsonutil import dumps, loads
from depositwatch.models import AddressStatus
from depositwatch.store import ImportRejected, SqlStore, StoreError
from depositwatch.store.base import ChainPolicy, RevokeResult
from depositwatch.timeutil import iso, now, parse_timestamp

log = structlog.get_logger("depositwatch.api")

PREFIX = "/api/v1"
OPENAPI = f"{PREFIX}/openapi.json"
CLOCK_SKEW = 300  # seconds a revocation time may lie ahead of this host's clock
MAX_PAGE = 1000
MAX_TEXT = 512
ALERT_STATUSES = ("new", "pending", "delivered", "dead", "unrouted")

HealthCheck = Callable[[], Awaitable[tuple[dict[str, Any], bool]]]


@dataclass(slots=True)
class ApiContext:
    """What the handlers need: the store, the chains, the tokens, the limits and two daemon hooks."""

    store: SqlStore
    directory: ChainDirectory
    tokens: TokenSet
    health: HealthCheck
    policies: Mapping[str, ChainPolicy] = field(default_factory=dict)
    max_body: int = 4 * 1024**2
    max_batch: int = 10_000
    on_change: Callable[[], None] = lambda: None


CONTEXT = web.AppKey("context", ApiContext)
PRINCIPAL = "principal"


def openapi_document() -> dict[str, Any]:
    """The checked-in OpenAPI 3.1 document."""
    doc: dict[str, Any] = loads(resources.files("depositwatch.api").joinpath("openapi.json").read_bytes())
    return doc


def build_app(context: ApiContext) -> web.Application:
    """The aiohttp application: error and auth middleware, body size limit, every route."""
    app = web.Application(
        client_max_size=context.max_body, middlewares=[errors_middleware(context.max_body), _auth_middleware]
    )
    app[CONTEXT] = context
    app.router.add_get(OPENAPI, _openapi)
    app.router.add_get(f"{PREFIX}/health", _health)
    app.router.add_get(f"{PREFIX}/addresses", _list_addresses)
    app.router.add_post(f"{PREFIX}/addresses", _add_addresses)
    app.router.add_post(f"{PREFIX}/addresses/revoke", _revoke)
    app.router.add_post(f"{PREFIX}/addresses/reinstate", _reinstate)
    app.router.add_get(f"{PREFIX}/addresses/{{chain}}/{{address}}/history", _history)
    app.router.add_get(f"{PREFIX}/alerts", _list_alerts)
    app.router.add_get(f"{PREFIX}/alerts/{{id}}", _show_alert)
    return app


async def start_api(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Listen on host:port (OSError when it cannot); the runner and the address actually bound."""
    runner = web.AppRunner(app, access_log=None)  # an access log would be one more place for a header
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []
    return runner, (sockets[0].getsockname()[:2] if sockets else (host, port))


async def serve(
    config: Config, store: SqlStore, health: HealthCheck, on_change: Callable[[], None]
) -> tuple[web.AppRunner, tuple[str, int]]:
    """The daemon's API as its config says: tokens read now, chains and alert policies from the config."""
    from depositwatch.pipeline import make_policy

    assert config.api is not None
    context = ApiContext(
        store=store,
        directory=ChainDirectory.from_config(config),
        tokens=TokenSet.from_config(config.api.tokens),
        health=health,
        policies={c.name: make_policy(c, config.alerts) for c in config.chains},
        max_body=config.api.max_body_bytes,
        max_batch=config.api.max_batch,
        on_change=on_change,
    )
    host, port = parse_listen(config.api.listen)
    runner, address = await start_api(build_app(context), host, port)
    log.info("api listening", address=f"{address[0]}:{address[1]}", tokens=len(config.api.tokens))
    return runner, address


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 without a valid bearer token, 403 without the route's scope (read for GET, write for POST)."""
    if request.path == OPENAPI:
        return await handler(request)
    principal = request.app[CONTEXT].tokens.authenticate(request.headers.get("Authorization"))
    if principal is None:
        raise ApiError(401, "unauthorized", "a valid bearer token is needed (Authorization: Bearer TOKEN)")
    scope = "read" if request.method in ("GET", "HEAD") else "write"
    if scope not in principal.scopes:
        raise ApiError(403, "forbidden", f"token {principal.name!r} lacks the {scope!r} scope")
    request[PRINCIPAL] = principal
    return await handler(request)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=dumps(body), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (the size limit applies while it is read)."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send JSON with Content-Type: application/json")
    raw = await request.read()
    try:
        body = loads(raw)
    except ValueError as exc:
        raise invalid(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def _text(body: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"{key} is required", key)
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise invalid(f"{key} must be a string of at most {MAX_TEXT} characters", key)
    return value


def _limit(request: web.Request, default: int) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise invalid(f"limit must be a whole number from 1 to {MAX_PAGE}", "limit")
    return int(text)


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise invalid(f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}", extra[0])


def _actor(request: web.Request) -> str:
    principal: Principal = request[PRINCIPAL]
    return principal.actor


# routes ---------------------------------------------------------------------------------------------


async def _openapi(_: web.Request) -> web.Response:
    return _json(openapi_document())


async def _health(request: web.Request) -> web.Response:
    body, healthy = await request.app[CONTEXT].health()
    return _json(body, 200 if healthy else 503)


async def _list_addresses(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    status = request.query.get("status")
    if status is not None and status not in ("active", "revoked"):
        raise invalid("status must be active or revoked", "status")
    limit = _limit(request, 100)
    after = _decode_cursor(request.query["after"]) if "after" in request.query else None
    entries = await ctx.store.audit.book_page(
        chain=request.query.get("chain"),
        status=AddressStatus(status) if status else None,
        owner=request.query.get("owner"),
        after=after,
        limit=limit,
    )
    following = _encode_cursor(entries[-1].chain, entries[-1].address) if len(entries) == limit else None
    return _json({"addresses": [address_record(e) for e in entries], "next": following})


def _encode_cursor(chain: str, address: str) -> str:
    return base64.urlsafe_b64encode(dumps([chain, address]).encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[str, str]:
    try:
        if len(text) > 2048:
            raise ValueError
        value = loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ValueError
    except (ValueError, binascii.Error):
        raise invalid("after is not a cursor this API gave out (the previous page's `next`)", "after") from None
    return value[0], value[1]


async def _add_addresses(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = await _body(request)
    items = body.get("addresses", [body])
    if "addresses" in body:
        _only(body, {"addresses"})
    if not isinstance(items, list) or not items:
        raise invalid("addresses must be a non-empty array of address objects", "addresses")
    if len(items) > ctx.max_batch:
        raise ApiError(413, "too_large", f"at most {ctx.max_batch} addresses per request", "addresses")
    batch = "addresses" in body

    def where(index: int) -> str:
        return f"addresses[{index}]" if batch else ""

    rows: list[dict[str, str]] = []
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        try:
            rows.append(_row(item))
        except ApiError as exc:
            problems.append((f"{where(index)}.{exc.where}".strip("."), exc.message))
    if problems:
        raise _rejected(problems)
    try:
        entries = read_import_rows(rows, ctx.directory, source="request")
    except BadRows as exc:
        raise _rejected([(where(line - 1) or "", reason) for line, reason in exc.problems]) from None
    try:
        result = await ctx.store.import_addresses(entries, actor=_actor(request), action="add")
    except ImportRejected as exc:
        found = [(where(line - 1) or "", reason) for line, reason in exc.problems]
        status, code = (409, "conflict") if any("revoked" in r for _, r in found) else (400, "invalid")
        raise ApiError(status, code, f"{len(found)} address(es) refused; nothing was added", None, found) from None
    ctx.on_change()
    counts = {"inserted": result.inserted, "updated": result.updated, "unchanged": result.unchanged}
    return _json({**counts, "addresses": [_display(e.chain, e.address, e.status) for _, e in entries]}, 201)


def _display(chain: str, address: str, status: AddressStatus) -> dict[str, str]:
    return {"chain": chain, "address": address, "status": str(status)}


def _row(item: Any) -> dict[str, str]:
    """One address object as the CSV import's columns; `status` defaults to active."""
    if not isinstance(item, dict):
        raise invalid("must be an object", "")
    _only(item, set(CSV_COLUMNS))
    row = {}
    for column in CSV_COLUMNS:
        value = item.get(column)
        if column == "revoked_at" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{column} must be a string", column)
        if value is not None:
            row[column] = value
    for column in ("chain", "address"):
        if not row.get(column):
            raise invalid(f"{column} is required", column)
    row.setdefault("status", "active")
    return row


def _rejected(problems: list[tuple[str, str]]) -> ApiError:
    first_where, first = problems[0]
    message = f"{len(problems)} bad address(es), nothing was stored; first: {first}"
    return ApiError(400, "invalid", message, first_where or None, problems)


def _chains(ctx: ApiContext, selector: str) -> list[str]:
    try:
        return ctx.directory.expand(selector)
    except ValueError as exc:
        raise invalid(str(exc), "chain") from None


def _address_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value.strip()) <= 200


def _keys(ctx: ApiContext, body: Mapping[str, Any], chains: list[str]) -> list[bytes]:
    items = body.get("addresses")
    if not isinstance(items, list) or not items or not all(_address_text(a) for a in items):
        raise invalid("addresses must be a non-empty array of address strings", "addresses")
    if len(items) > ctx.max_batch:
        raise ApiError(413, "too_large", f"at most {ctx.max_batch} addresses per request", "addresses")
    try:
        return read_address_list([a.replace("#", " ") for a in items], chains, ctx.directory, source="addresses")
    except BadRows as exc:
        found = [(f"addresses[{line - 1}]", reason) for line, reason in exc.problems]
        raise _rejected(found) from None


async def _revoke(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = await _body(request)
    _only(body, {"chain", "addresses", "owner", "tree", "at", "reason"})
    chosen = [k for k in ("addresses", "owner", "tree") if k in body]
    if len(chosen) != 1:
        raise invalid("give exactly one of addresses (a list), owner or tree (a descriptor)", "addresses")
    chains = _chains(ctx, _text(body, "chain") or "")
    reason = _text(body, "reason") or ""
    if not reason.strip():
        raise invalid("reason must say why", "reason")
    at = _revocation_time(body.get("at"))
    if chosen == ["tree"]:
        return await _revoke_tree(request, ctx, body, chains, at, reason)
    keys = _keys(ctx, body, chains) if chosen == ["addresses"] else None
    owner = _text(body, "owner") if keys is None else None
    if keys is None and not owner:
        raise invalid("owner must not be empty", "owner")
    policies = {name: policy for name, policy in ctx.policies.items() if name in chains}
    try:
        result = await ctx.store.revoke(chains, keys, at, reason, policies, actor=_actor(request), owner=owner)
    except StoreError as exc:
        raise ApiError(409, "conflict", str(exc), "addresses") from None
    ctx.on_change()
    return _revoked(result, at)


def _revoked(result: RevokeResult, at: int) -> web.Response:
    """The answer to a revocation (by address or by key tree)."""
    return _json(
        {
            "revoked": result.revoked,
            "already_revoked": result.already_revoked,
            "retro_alerts": result.retro,
            "revoked_at": iso(at),
        }
    )


async def _revoke_tree(
    request: web.Request, ctx: ApiContext, body: dict[str, Any], chains: list[str], at: int, reason: str
) -> web.Response:
    """Revoke every address of the key tree(s) a descriptor names on the chains: all or none."""
    text = _text(body, "tree") or ""
    named: list[tuple[str, str]] = []
    for chain in chains:
        try:
            named += [(chain, tree.descriptor) for tree in parse_chain_trees(ctx.directory, chain, text)]
        except (AddressError, ValueError) as exc:  # a key tree's errors never carry key material
            raise invalid(f"{chain}: {exc}", "tree") from None
    policies = {name: policy for name, policy in ctx.policies.items() if name in chains}
    try:
        result = await ctx.store.trees.revoke(named, at, reason, policies, actor=_actor(request))
    except StoreError as exc:
        raise ApiError(409, "conflict", str(exc), "tree") from None
    ctx.on_change()
    return _revoked(result, at)


def _revocation_time(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid("at is required: when the keys may have leaked (ISO 8601 with a zone, or unix seconds)", "at")
    try:
        at = value if isinstance(value, int) else parse_timestamp(value)
    except ValueError as exc:
        raise invalid(str(exc), "at") from None
    if not 0 <= at <= now() + CLOCK_SKEW:
        raise invalid("at must not lie in the future: a revocation dates a leak that has happened", "at")
    return at


async def _reinstate(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = await _body(request)
    _only(body, {"chain", "addresses", "reason"})
    chain = _text(body, "chain") or ""
    if chain not in ctx.directory.chains:
        raise invalid(f"chain must be one configured chain, not {chain!r}", "chain")
    reason = _text(body, "reason", required=False)
    if reason is None or not reason.strip():
        raise invalid("reason is required: why the key is trusted again", "reason")
    keys = _keys(ctx, body, [chain])
    try:
        entries = await ctx.store.audit.reinstate(chain, keys, reason, actor=_actor(request))
    except StoreError as exc:
        raise ApiError(409, "conflict", str(exc), "addresses") from None
    ctx.on_change()
    return _json({"reinstated": len(entries), "addresses": [_display(e.chain, e.address, e.status) for e in entries]})


async def _history(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    chain, text = request.match_info["chain"], request.match_info["address"]
    try:
        address = ctx.directory.parse(chain, text).address
    except (AddressError, ValueError) as exc:
        raise invalid(str(exc), "address") from None
    records = await ctx.store.audit.address_history([(chain, address)])
    return _json({"chain": chain, "address": address, "history": [audit_record(r) for r in records]})


async def _list_alerts(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    status = request.query.get("status")
    if status is not None and status not in ALERT_STATUSES:
        raise invalid(f"status must be one of {', '.join(ALERT_STATUSES)}", "status")
    before_text = request.query.get("before")
    if before_text is not None and (not before_text.isdigit() or len(before_text) > 18):
        raise invalid("before must be an outbox sequence number", "before")
    limit = _limit(request, 50)
    messages = await ctx.store.audit.alerts_page(
        status=status,
        kind=request.query.get("kind"),
        chain=request.query.get("chain"),
        before=int(before_text) if before_text is not None else None,
        limit=limit,
    )
    following = messages[-1].seq if len(messages) == limit else None
    return _json({"alerts": [alert_record(m) for m in messages], "next": following})


async def _show_alert(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    wanted = request.match_info["id"]
    if len(wanted) > 200:
        raise invalid("not an alert id or outbox sequence number", "id")
    messages = await ctx.store.outbox.find(wanted)
    if not messages:
        raise ApiError(404, "not_found", f"no alert with id or outbox seq {wanted!r}", "id")
    found = [alert_record(m, await ctx.store.outbox.deliveries(m.seq)) for m in messages]
    return _json({"id": wanted, "messages": found})
