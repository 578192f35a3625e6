"""A real Prometheus (Debian's package) scraping a running daemon on loopback, with the scrape config of
docs/operations.md and the shipped rules: every dashboard query and every rule expression returns data.

Most alert conditions are false in a healthy daemon, so the rule expressions are queried twice: as
written, where they must return nothing (no alert on a healthy daemon), and with `bool` added to each of
their comparisons (`a > b` becomes `a > bool b`), which keeps every series and every vector match of the
expression but returns 0 or 1 instead of filtering: it returns data only when each series the rule reads
exists under the labels it joins on (a misspelt label or a `on (...)` that matches nothing returns
nothing, and fails the test).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from depositwatch.devnet import Anvil
from tests.daemon.test_daemon import (
    CHAIN_ID,
    REVOKED,
    Setup,
    book,
    free_port,
    leader_and_standby,
    pay,
    reap,
    setup,
    stop,
    wait_for,
    wait_until_async,
)
from tests.daemon.test_prometheus_rules import DASHBOARD, RULES, alert_names, doc_block
from tests.proof.faultproxy import Fault, FaultProxy
from tests.receivers import Receiver

__all__ = ["setup"]  # the daemon fixture: anvil, PostgreSQL, a webhook receiver

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.filterwarnings("ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"),
    pytest.mark.skipif(
        PROMETHEUS is None and os.environ.get("CI") != "true",
        reason="prometheus missing: scripts/install-system-tools.sh installs Debian's prometheus (CI fails instead)",
    ),
]

# Grafana's interval variables, as the dashboard would get them for a short range.
GRAFANA_INTERVAL = "1m"
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


def with_bool(expr: str) -> str:
    """`expr` with `bool` after every comparison operator outside label matchers and strings."""
    out: list[str] = []
    depth = 0  # inside {...}
    quote = ""
    i = 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                out.append(expr[i : i + 2])
                i += 2
                continue
            if char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and (match := _COMPARISON.match(expr, i)):
            out.append(match.group(1) + " bool")
            i = match.end()
            continue
        out.append(char)
        i += 1
    return "".join(out)


def test_with_bool_leaves_label_matchers_alone() -> None:
    """The rewrite touches comparisons only, not `=`, `=~`, `!=` inside braces or strings."""
    expr = 'a{job="x", state=~"a|b", s!="<"} > on (job) 2 * b{job!="y"} and c == 1'
    assert with_bool(expr) == 'a{job="x", state=~"a|b", s!="<"} > bool on (job) 2 * b{job!="y"} and c == bool 1'


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression with the template variables substituted) for every target."""
    model = json.loads(DASHBOARD.read_text())
    found = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$chain", "eth")
            expr = re.sub(r"\$__\w+", GRAFANA_INTERVAL, expr)
            assert "$" not in expr, (panel["title"], expr)
            found.append((panel["title"], expr))
    assert found
    return found


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as resp:
            body = await resp.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        result = (await self.get("/api/v1/query", query=expr))["result"]
        assert isinstance(result, list)
        return result

    async def ready(self) -> bool:
        try:
            async with self.http.get(f"{self.url}/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, targets: list[str], http: aiohttp.ClientSession) -> AsyncIterator[Prometheus]:
    """Prometheus on a free loopback port with the documented scrape config (targets and rule path
    replaced), a one-second scrape and evaluation interval, and a storage directory of its own."""
    assert PROMETHEUS is not None, "prometheus missing: run scripts/install-system-tools.sh"
    documented = doc_block("prometheus.yml", "yaml")
    config = documented.replace("/etc/prometheus/rules/depositwatch-rules.yml", str(RULES))
    config, replaced = re.subn(r"targets: \[.*?\]", f"targets: {json.dumps(targets)}", config)
    assert replaced == 1
    path = tmp / "prometheus.yml"
    path.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n" + config)
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    api = Prometheus(http, f"http://127.0.0.1:{port}")
    try:
        try:
            await wait_until_async(api.ready, lambda ok: ok is True, timeout=60)
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")) from None
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_every_dashboard_query_and_rule_returns_data(setup: Setup) -> None:
    """A daemon follows anvil and delivers one alert; Prometheus scrapes it with the documented config and
    loads the shipped rules; every panel query returns data, the `chain` variable lists the chain, every
    rule evaluates without error, returns data with `bool` comparisons and nothing as written."""
    daemon = await setup.start(setup.config())
    [txid] = await pay(setup.node, REVOKED, 1)
    await wait_for(lambda: txid in {r.json()["txid"] for r in setup.receiver.accepted}, what="the alert")
    target = daemon.http.removeprefix("http://")
    async with aiohttp.ClientSession() as http, prometheus(setup.tmp, [target], http) as prom:

        async def target_health() -> list[str]:
            return [t["health"] for t in (await prom.get("/api/v1/targets"))["activeTargets"]]

        await wait_until_async(target_health, lambda health: health == ["up"])

        async def delivered() -> list[dict[str, Any]]:
            return await prom.query('depositwatch_delivery_latency_seconds_count{job="depositwatch", sink="hook"} == 1')

        await wait_until_async(delivered, bool)  # the delivery is in Prometheus
        [bound] = await prom.query('depositwatch_max_commit_age_seconds{chain="eth"}')
        assert float(bound["value"][1]) == 300  # the EVM default of standby_max_commit_age, as configured
        chains = await prom.get("/api/v1/label/chain/values", **{"match[]": "depositwatch_chain_state"})
        assert chains == ["eth"]  # the dashboard's `chain` variable: label_values(depositwatch_chain_state, chain)

        empty = []
        for title, expr in dashboard_queries():
            try:
                await wait_until_async(lambda e=expr: prom.query(e), bool, timeout=20)  # type: ignore[misc]
            except AssertionError:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        async def rules() -> list[dict[str, Any]]:
            groups = (await prom.get("/api/v1/rules"))["groups"]
            return [rule for group in groups for rule in group["rules"]]

        await wait_until_async(rules, lambda found: bool(found) and all(r["health"] == "ok" for r in found))  # type: ignore[attr-defined]
        loaded = await rules()
        assert [r["name"] for r in loaded] == alert_names()
        empty = []
        for rule in loaded:
            assert not rule.get("lastError"), rule
            probe = with_bool(rule["query"])
            assert probe != rule["query"], rule["name"]
            try:
                await wait_until_async(lambda p=probe: prom.query(p), bool, timeout=20)  # type: ignore[misc]
            except AssertionError:
                empty.append(f"{rule['name']}: {probe}")
            assert await prom.query(rule["query"]) == [], f"{rule['name']} holds on a healthy daemon"
        assert not empty, "rule expressions (with bool comparisons) without data:\n" + "\n".join(empty)
    assert await stop(daemon) == 0


async def test_alerts_go_pending_on_the_instances_they_name(tmp_path: Path, pg_url: str) -> None:
    """A leader and a standby on a chain with a block a second and `standby_max_commit_age = 10` (a margin
    for a loaded machine): healthy, no alert is pending; the leader's node fails: Prometheus has
    DepositwatchChainDown pending for the leader, DepositwatchChainBehind for the leader (its newest block
    ages past twice the bound) and DepositwatchLeaderStalled for the standby (no commit within the bound);
    the node back, they clear. The alerts stay pending (their `for` is minutes): the test waits on the
    rule state, not on the clock."""
    async with (
        Anvil(chain_id=CHAIN_ID, block_time=1) as node,
        Receiver() as receiver,
        FaultProxy(node.http_url) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await book(pg_url, tmp_path)
        s = Setup(tmp_path, node, pg_url, receiver, [])
        try:
            leader, standby = await leader_and_standby(s, proxy.url, standby_max_commit_age=10)
            targets = [leader.http.removeprefix("http://"), standby.http.removeprefix("http://")]
            async with prometheus(tmp_path, targets, http) as prom:

                async def active() -> dict[str, set[str]]:
                    """Pending or firing alerts: name to the instances (or chains) they name."""
                    found: dict[str, set[str]] = {}
                    for alert in (await prom.get("/api/v1/alerts"))["alerts"]:
                        labels = alert["labels"]
                        found.setdefault(labels["alertname"], set()).add(labels.get("instance", labels.get("chain")))
                    return found

                async def scraped() -> list[dict[str, Any]]:
                    return await prom.query('count(up{job="depositwatch"} == 1) == 2')

                async def evaluated_since(start: datetime) -> bool:
                    """Every rule evaluated after `start`."""
                    groups = (await prom.get("/api/v1/rules"))["groups"]
                    return all(datetime.fromisoformat(r["lastEvaluation"]) > start for g in groups for r in g["rules"])

                await wait_until_async(scraped, bool)  # both instances scraped: no rule sees only one of them
                since = datetime.now(UTC)
                await wait_until_async(lambda: evaluated_since(since), lambda ok: ok is True)

                async def leaders() -> list[dict[str, Any]]:
                    return await prom.query('max by (chain) (depositwatch_leader{job="depositwatch"}) == 1')

                await wait_until_async(leaders, bool)  # DepositwatchNoLeader's condition is false: one leads
                assert await active() == {}, "an alert on a healthy pair"

                proxy.set(Fault("status", status=503))  # the leader's node fails: no more commits
                leader_at, standby_at = targets

                def raised(alerts: object) -> bool:
                    assert isinstance(alerts, dict)
                    return (
                        leader_at in alerts.get("DepositwatchChainDown", set())
                        and leader_at in alerts.get("DepositwatchChainBehind", set())
                        and standby_at in alerts.get("DepositwatchLeaderStalled", set())
                    )

                # The node's failure shows once the client's retries are spent, then at the next scrape and
                # rule evaluation: about 25 s on a quiet machine; a loaded one took over 60.
                await wait_until_async(active, raised, timeout=120)
                alerts = await active()
                assert alerts["DepositwatchChainDown"] == {leader_at}  # the standby's chain state is standby
                assert alerts["DepositwatchChainBehind"] == {leader_at}  # only the leader's block age counts
                assert alerts["DepositwatchLeaderStalled"] == {standby_at}  # only a standby judges its leader
                assert "DepositwatchNoLeader" not in alerts  # the leader keeps its lease while its node is down

                proxy.clear()  # the node is back: the leader commits, every alert clears
                await wait_until_async(active, lambda alerts: alerts == {}, timeout=120)
            assert await stop(standby) == 0
            assert await stop(leader) == 0
        finally:
            reap(s.started)
