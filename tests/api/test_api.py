"""The address book's HTTP API on the real daemon (a subprocess with anvil and a webhook receiver), over
real HTTP, on the embedded store and on PostgreSQL: tokens and scopes, all-or-nothing batches, size
limits, revocation the running registry sees at once, reinstatement, the audit trail, alerts and
health; every answer validated against the checked-in OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from depositwatch.cli import main
from depositwatch.config import parse_config
from depositwatch.store import open_store
from tests.api.test_api_openapi import check_answer
from tests.daemon.test_daemon import ACTIVE, REVOKED, Daemon, Setup, _setup, free_port, pay, stop, wait_for

WALLET_TOKEN = "wallet-token-3f9a1c0e5b7d42a8"
READER_TOKEN = "reader-token-8e2d6b1a4c9f0357"
NEW = ["0x" + f"{n:02x}" * 20 for n in (0x11, 0x22, 0x33)]


@dataclass
class Api:
    """A running daemon with its API, and a client session."""

    setup: Setup
    daemon: Daemon
    url: str
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, token: str | None = WALLET_TOKEN, **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs) as resp:
            text = await resp.text()
            body = json.loads(text) if resp.content_type == "application/json" else text
            check_answer(method, path, resp.status, body)
            return resp.status, body, dict(resp.headers)

    async def book(self, **query: str) -> dict[str, dict[str, Any]]:
        status, body, _ = await self.call("GET", "/api/v1/addresses", params={"limit": "1000", **query})
        assert status == 200
        return {e["address"].lower(): e for e in body["addresses"]}


def api_section(port: int, *, max_body: int = 65536, max_batch: int = 50) -> str:
    return (
        f'[api]\nlisten = "127.0.0.1:{port}"\nmax_body_bytes = {max_body}\nmax_batch = {max_batch}\n'
        '[[api.tokens]]\nname = "wallet"\nscopes = ["read", "write"]\nsecret = { env = "DW_API_WALLET" }\n'
        '[[api.tokens]]\nname = "reader"\nscopes = ["read"]\nsecret = { env = "DW_API_READER" }\n'
    )


@pytest.fixture
async def api(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    """The daemon with an [api] section, on either store."""
    monkeypatch.setenv("DW_API_WALLET", WALLET_TOKEN)  # the daemon inherits the environment
    monkeypatch.setenv("DW_API_READER", READER_TOKEN)
    async for s in _setup(tmp_path, store_url):
        port = free_port()
        config = s.config()
        config.write_text(config.read_text() + api_section(port))
        daemon = await s.start(config)
        async with aiohttp.ClientSession() as http:
            yield Api(s, daemon, f"http://127.0.0.1:{port}", http)
        assert await stop(daemon) == 0, daemon.output()


async def test_tokens_and_scopes(api: Api) -> None:
    """No token, a wrong one or another scheme: 401 with a JSON error and WWW-Authenticate; the read-only
    token reads but gets 403 on every change; the OpenAPI document needs no token; unknown routes and
    methods are JSON errors too."""
    for token in (None, "not-a-token", WALLET_TOKEN + "x", ""):
        status, body, headers = await api.call("GET", "/api/v1/addresses", token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized", body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await api.call(
        "GET", "/api/v1/addresses", token=None, headers={"Authorization": f"Basic {WALLET_TOKEN}"}
    )
    assert status == 401
    status, body, _ = await api.call("GET", "/api/v1/addresses", token=READER_TOKEN)
    assert status == 200 and {e["address"].lower() for e in body["addresses"]} == {REVOKED, ACTIVE}
    for path, payload in [
        ("/api/v1/addresses", {"chain": "eth", "address": NEW[0]}),
        ("/api/v1/addresses/revoke", {"chain": "eth", "addresses": [ACTIVE], "at": 1, "reason": "r"}),
        ("/api/v1/addresses/reinstate", {"chain": "eth", "addresses": [REVOKED], "reason": "r"}),
    ]:
        status, body, _ = await api.call("POST", path, token=READER_TOKEN, json=payload)
        assert status == 403 and body["error"]["code"] == "forbidden" and "'write'" in body["error"]["message"]
    assert set(await api.book()) == {REVOKED, ACTIVE}  # nothing changed
    status, body, _ = await api.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and body["openapi"].startswith("3.1")
    status, body, _ = await api.call("GET", "/api/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = await api.call("DELETE", "/api/v1/addresses")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body, _ = await api.call("GET", "/api/v1/health", token=READER_TOKEN)
    assert status in (200, 503) and body["chains"]["eth"]["state"] in ("following", "starting")


async def test_batches_are_all_or_nothing(api: Api) -> None:
    """A batch with any bad address, a repeat, or a revoked address made active stores nothing and names
    every problem by index; a good batch stores all; the batch and body limits answer 413."""
    good = [{"chain": "eth", "address": a, "label": f"dep-{i}", "owner": "cust-9"} for i, a in enumerate(NEW)]
    bad = [*good[:2], {"chain": "eth", "address": "0x1234"}, {"chain": "nochain", "address": NEW[2]}]
    status, body, _ = await api.call("POST", "/api/v1/addresses", json={"addresses": bad})
    assert status == 400 and body["error"]["code"] == "invalid"
    assert [p["where"] for p in body["error"]["problems"]] == ["addresses[2]", "addresses[3]"]
    assert "unknown chain 'nochain'" in body["error"]["problems"][1]["message"]
    status, body, _ = await api.call("POST", "/api/v1/addresses", json={"addresses": [*good, good[0]]})
    assert status == 400 and body["error"]["problems"][0]["where"] == "addresses[3]"
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses", json={"addresses": [*good, {"chain": "eth", "address": REVOKED}]}
    )
    assert (
        status == 409
        and body["error"]["code"] == "conflict"
        and "is revoked" in body["error"]["message"] + str(body["error"]["problems"])
    )
    status, body, _ = await api.call("POST", "/api/v1/addresses", json={"addresses": [{**good[0], "colour": "x"}]})
    assert status == 400 and body["error"]["problems"][0]["where"] == "addresses[0].colour"
    assert set(await api.book()) == {REVOKED, ACTIVE}  # none of the above stored anything

    status, body, _ = await api.call("POST", "/api/v1/addresses", json={"addresses": good})
    assert status == 201 and (body["inserted"], body["updated"], body["unchanged"]) == (3, 0, 0)
    status, body, _ = await api.call("POST", "/api/v1/addresses", json=good[0])  # one, not a batch: unchanged
    assert status == 201 and (body["inserted"], body["unchanged"]) == (0, 1)
    book = await api.book()
    assert {book[a]["status"] for a in NEW} == {"active"} and book[NEW[1]]["label"] == "dep-1"
    assert set(await api.book(owner="cust-9")) == set(NEW)

    many = [{"chain": "eth", "address": "0x" + f"{n:040x}"} for n in range(1, 52)]
    status, body, _ = await api.call("POST", "/api/v1/addresses", json={"addresses": many})
    assert status == 413 and body["error"]["code"] == "too_large" and "at most 50" in body["error"]["message"]
    status, body, _ = await api.call("POST", "/api/v1/addresses", json={"addresses": good, "pad": "x" * 70_000})
    assert status == 413 and "65536 bytes" in body["error"]["message"]
    status, body, _ = await api.call("POST", "/api/v1/addresses", data="chain=eth")
    assert status == 415
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "not JSON" in body["error"]["message"]
    assert len(await api.book()) == 5

    # paging walks the whole book in order, without repeats
    seen: list[str] = []
    after: str | None = None
    while True:
        query = {"limit": "2", **({"after": after} if after else {})}
        status, body, _ = await api.call("GET", "/api/v1/addresses", params=query)
        seen += [e["address"] for e in body["addresses"]]
        after = body["next"]
        if after is None:
            break
    assert len(seen) == 5 and seen == sorted(seen)
    status, body, _ = await api.call("GET", "/api/v1/addresses", params={"after": "garbage!"})
    assert status == 400 and body["error"]["where"] == "after"


async def test_revoke_is_seen_at_once_reinstate_and_history(api: Api) -> None:
    """An address added and then revoked through the API alerts on the next payment (the running
    registry took the change); reinstating needs a reason; the history shows each change by its token,
    and `addresses history` on the command line shows the same rows."""
    status, _, _ = await api.call("POST", "/api/v1/addresses", json={"chain": "eth", "address": NEW[0], "owner": "o1"})
    assert status == 201
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/revoke", json={"chain": "eth", "tree": "xpub...", "at": 1, "reason": "r"}
    )
    assert status == 400 and body["error"]["code"] == "invalid" and body["error"]["where"] == "tree"
    future = int(time.time()) + 3600
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/revoke", json={"chain": "eth", "addresses": [NEW[0]], "at": future, "reason": "r"}
    )
    assert status == 400 and body["error"]["where"] == "at"
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/revoke", json={"chain": "eth", "addresses": [NEW[0], NEW[1]], "at": 1, "reason": "r"}
    )
    assert status == 409 and "not in the book" in body["error"]["message"]
    at = int(time.time()) - 60
    status, body, _ = await api.call(
        "POST",
        "/api/v1/addresses/revoke",
        json={"chain": "eth", "addresses": [NEW[0].upper().replace("0X", "0x")], "at": at, "reason": "hot wallet"},
    )
    assert status == 200 and (body["revoked"], body["already_revoked"]) == (1, 0), body

    txids = await pay(api.setup.node, NEW[0], 1)

    def alerted() -> bool:
        return any(
            r.json()["txid"] == txids[0] and r.json()["kind"] == "revoked_incoming" for r in api.setup.receiver.accepted
        )

    await wait_for(alerted, what="the alert for the address revoked through the API")

    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/reinstate", json={"chain": "eth", "addresses": [NEW[0]]}
    )
    assert status == 400 and body["error"]["where"] == "reason"
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/reinstate", json={"chain": "eth", "addresses": [ACTIVE], "reason": "x"}
    )
    assert status == 409 and "not revoked" in body["error"]["message"]
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/reinstate", json={"chain": "eth", "addresses": [NEW[0]], "reason": "drill only"}
    )
    assert status == 200 and body["reinstated"] == 1
    assert (await api.book())[NEW[0]]["status"] == "active"

    # revoke by owner: every active address of the owner
    status, body, _ = await api.call(
        "POST", "/api/v1/addresses/revoke", json={"chain": "*", "owner": "o1", "at": at, "reason": "owner gone"}
    )
    assert status == 200 and body["revoked"] == 1
    assert (await api.book())[NEW[0]]["status"] == "revoked" and (await api.book())[ACTIVE]["status"] == "active"

    status, body, _ = await api.call("GET", f"/api/v1/addresses/eth/{NEW[0]}/history", token=READER_TOKEN)
    assert status == 200
    rows = body["history"]
    assert [(r["action"], r["actor"], r["reason"]) for r in rows] == [
        ("add", "token:wallet", ""),
        ("revoke", "token:wallet", "hot wallet"),
        ("reinstate", "token:wallet", "drill only"),
        ("revoke", "token:wallet", "owner gone"),
    ]
    assert rows[1]["detail"]["revoked_at"] == at and rows[2]["detail"]["previous_revoked_at"] == at
    status, body, _ = await api.call("GET", "/api/v1/addresses/eth/0x1234/history")
    assert status == 400 and body["error"]["where"] == "address"

    code = await asyncio.to_thread(
        main, ["addresses", "history", NEW[0], "--json", "--store", api.setup.store_url]
    )  # the command line reads the same log
    assert code == 0


async def test_alerts_and_health(api: Api) -> None:
    """Alerts list (filtered, paged) and show, with deliveries; health as /healthz gives it."""
    txids = await pay(api.setup.node, REVOKED, 2)
    await wait_for(lambda: len({r.json()["txid"] for r in api.setup.receiver.accepted} & set(txids)) == 2)
    status, body, _ = await api.call("GET", "/api/v1/alerts", token=READER_TOKEN, params={"kind": "revoked_incoming"})
    assert status == 200 and {a["payload"]["txid"] for a in body["alerts"]} >= set(txids)
    seqs = [a["seq"] for a in body["alerts"]]
    assert seqs == sorted(seqs, reverse=True)
    status, page, _ = await api.call("GET", "/api/v1/alerts", params={"limit": "1"})
    assert status == 200 and len(page["alerts"]) == 1 and page["next"] == page["alerts"][0]["seq"]
    status, rest, _ = await api.call("GET", "/api/v1/alerts", params={"before": str(page["next"])})
    assert all(a["seq"] < page["next"] for a in rest["alerts"])
    alert_id = body["alerts"][0]["alert_id"]
    status, shown, _ = await api.call("GET", f"/api/v1/alerts/{alert_id}")
    assert status == 200 and shown["messages"][0]["alert_id"] == alert_id
    await wait_for(lambda: bool(api.setup.receiver.accepted))
    status, missing, _ = await api.call("GET", "/api/v1/alerts/no-such-alert")
    assert status == 404 and missing["error"]["where"] == "id"
    status, body, _ = await api.call("GET", "/api/v1/alerts", params={"status": "bogus"})
    assert status == 400 and body["error"]["where"] == "status"
    async with api.http.get(f"{api.daemon.http}/healthz") as resp:
        healthz = await resp.json()
    status, body, _ = await api.call("GET", "/api/v1/health")
    assert set(body) == set(healthz) and set(body["chains"]) == {"eth"}


def test_the_audit_actor_of_the_command_line_is_the_unix_user() -> None:
    """`unix:<user>` is this process' user by its uid."""
    from depositwatch.store.audit import unix_actor

    assert unix_actor() == f"unix:{pwd.getpwuid(os.getuid()).pw_name}"


DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_documented_config_is_valid() -> None:
    """docs/api.md's [api] example is a valid configuration."""
    [block] = doc_blocks("toml")
    config = parse_config(tomllib.loads(block), "docs/api.md")
    assert config.api is not None and [t.name for t in config.api.tokens] == ["wallet", "soc-dashboard"]


async def test_the_documented_commands_run_as_written(api: Api) -> None:
    """Every shell block of docs/api.md, in order, with DW_API and DW_TOKEN set and the daemon's config:
    each succeeds, and together they leave the history the document describes."""
    env = {
        **os.environ,
        "DW_API": api.url,
        "DW_TOKEN": WALLET_TOKEN,
        "DEPOSITWATCH_CONFIG": str(api.daemon.config),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for block in doc_blocks("sh"):
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, (block, done.stdout.decode(), done.stderr.decode())
        assert done.stdout.strip(), block
    first, second = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", "0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359"
    histories = {}
    for address in (first, second):
        status, body, _ = await api.call("GET", f"/api/v1/addresses/eth/{address}/history")
        assert status == 200
        histories[address] = [(r["action"], r["actor"]) for r in body["history"]]
    user = f"unix:{pwd.getpwuid(os.getuid()).pw_name}"
    assert histories[first] == [("add", "token:wallet"), ("revoke", "token:wallet"), ("reinstate", "token:wallet")]
    assert histories[second] == [("add", "token:wallet"), ("revoke", "token:wallet"), ("reinstate", user)]
    assert {(await api.book())[a]["status"] for a in (first, second)} == {"active"}


TREE_XPUB = (
    "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
)
XPRV = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"


async def test_revoke_by_key_tree_is_all_or_nothing_and_audited(api: Api, tmp_path: Path) -> None:
    """A key tree imported on the command line is revoked through the API by its descriptor: every
    address of it at once, under the token's name in the audit log beside the import's row; a tree not in
    the book changes nothing (409), a private key is refused without being echoed, a read token is 403."""
    book = tmp_path / "trees.csv"
    book.write_text(f"chain,descriptor,range,status,owner\neth,{TREE_XPUB}/0/*,0-9,active,acct\n")
    code = await asyncio.to_thread(main, ["addresses", "import", str(book), "--store", api.setup.store_url])
    assert code == 0
    request = {"chain": "eth", "tree": f"{TREE_XPUB}/0/*", "at": 1_700_000_000, "reason": "account key leaked"}
    status, _, _ = await api.call("POST", "/api/v1/addresses/revoke", token=READER_TOKEN, json=request)
    assert status == 403
    other = {**request, "tree": f"{TREE_XPUB}/1/*"}
    status, body, _ = await api.call("POST", "/api/v1/addresses/revoke", json=other)
    assert status == 409 and body["error"]["where"] == "tree", body
    status, body, _ = await api.call("POST", "/api/v1/addresses/revoke", json={**request, "tree": XPRV})
    assert status == 400 and body["error"]["where"] == "tree" and XPRV[4:40] not in json.dumps(body)
    status, body, _ = await api.call("POST", "/api/v1/addresses/revoke", json=request)
    assert status == 200 and body["revoked"] == 1, body
    store = await open_store(api.setup.store_url)
    try:
        trees = await store.trees.entries(chain="eth")
        records = sorted(await store.audit.log(), key=lambda r: r.id)
    finally:
        await store.close()
    assert [(entry.status.value, entry.reason) for entry, _ in trees] == [("revoked", "account key leaked")]
    descriptor = trees[0][0].descriptor
    rows = [(r.action, r.actor.split(":")[0], r.detail.get("tree")) for r in records if r.address == descriptor]
    assert rows == [("import", "unix", True), ("revoke", "token", True)], rows
    revoke = next(r for r in records if r.address == descriptor and r.action == "revoke")
    assert revoke.actor == "token:wallet" and revoke.reason == "account key leaked" and revoke.owner == "acct"
