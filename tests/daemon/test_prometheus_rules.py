"""deploy/: the alerting rules pass their promtool unit tests (a firing and a quiet case for each alert),
the dashboard is a well-formed Grafana model reading only series the daemon exports, and the install
steps of docs/operations.md run as written (with /etc/prometheus moved under a temporary root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from depositwatch.metrics import Metrics

CHECKOUT = Path(__file__).resolve().parents[2]
RULES = CHECKOUT / "deploy" / "prometheus" / "depositwatch-rules.yml"
RULE_TESTS = CHECKOUT / "deploy" / "prometheus" / "depositwatch-rules.test.yml"
DASHBOARD = CHECKOUT / "deploy" / "grafana" / "depositwatch-dashboard.json"
DOC = CHECKOUT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="promtool missing: scripts/install-system-tools.sh installs Debian's prometheus (CI fails instead)",
)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def exported_names() -> set[str]:
    """Every series name the daemon's registry defines (counters with _total, histograms with their parts),
    labelled or not, whether or not a sample exists yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in Metrics().registry.collect() for suffix in suffixes[family.type]}


def series_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(depositwatch_\w+)", expr))


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def doc_block(marker: str, lang: str) -> str:
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```{lang}\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None, f"no {marker!r} block in {DOC.name}"
    return match.group(1)


def run_promtool(*args: str, cwd: Path = CHECKOUT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool missing: run scripts/install-system-tools.sh"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_rules_pass_their_unit_tests() -> None:
    """`promtool check rules` and `promtool test rules` both succeed on the shipped files."""
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(alert_names())} rules found" in checked.stdout
    tested = run_promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one alert's expected label changed does."""
    shutil.copy(RULES, tmp_path / RULES.name)
    expected = "{severity: critical, job: depositwatch, chain: eth}"
    broken = RULE_TESTS.read_text().replace(expected, expected.replace("critical", "warning"), 1)
    assert broken != RULE_TESTS.read_text()
    (tmp_path / RULE_TESTS.name).write_text(broken)
    tested = run_promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert tested.returncode != 0
    assert "FAILED" in tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert of the rule file appears in a test case that expects it and in one that expects nothing."""
    names = alert_names()
    assert len(names) == len(set(names)) >= 6
    cases = re.split(r"\n  - name: ", RULE_TESTS.read_text())[1:]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for name, expected in re.findall(
            r"alertname: (\w+)\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time:|\Z)", case, re.DOTALL
        ):
            (quiet if expected.strip() == "[]" else firing).add(name)
    assert firing == set(names), set(names) ^ firing
    assert quiet == set(names), set(names) ^ quiet
    required = {
        "DepositwatchChainBehind",
        "DepositwatchChainDown",
        "DepositwatchDeadAlerts",
        "DepositwatchOutboxGrowing",
        "DepositwatchNoLeader",
        "DepositwatchLeaderStalled",
    }
    assert required <= set(names)


def test_rules_and_dashboard_read_only_exported_series() -> None:
    """A misspelt series would make a rule silently never fire: every name must be one the daemon exports."""
    exported = exported_names()
    in_rules = series_names(RULES.read_text())
    in_dashboard = series_names(DASHBOARD.read_text())
    assert in_rules and in_dashboard
    assert in_rules <= exported, in_rules - exported
    assert in_dashboard <= exported, in_dashboard - exported


def test_dashboard_is_a_grafana_model_with_the_promised_panels() -> None:
    """Schema 39, a datasource variable every query uses, a `chain` variable from label_values, unique ids,
    panels with targets and expressions, and panels for height, lag, block age, matches, latency, outbox."""
    model = dashboard()
    assert model["schemaVersion"] >= 39
    assert model["uid"] and model["title"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    chain = variables["chain"]
    assert chain["type"] == "query"
    assert chain["definition"] == chain["query"]["query"] == "label_values(depositwatch_chain_state, chain)"
    assert chain["datasource"]["uid"] == "${datasource}"
    panels = model["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs: list[str] = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip(), panel["title"]
            exprs.append(target["expr"])
    read = set().union(*(series_names(e) for e in exprs))
    for name in (
        "depositwatch_node_height",
        "depositwatch_processed_height",
        "depositwatch_lag_blocks",
        "depositwatch_block_age_seconds",
        "depositwatch_matches_total",
        "depositwatch_delivery_latency_seconds_bucket",
        "depositwatch_outbox_messages",
    ):
        assert name in read, name
    assert any("by (chain, kind)" in e for e in exprs), "matches by kind"


@needs_promtool
def test_documented_rule_install_runs_as_written(tmp_path: Path) -> None:
    """docs/operations.md's `prometheus` block, with /etc/prometheus under a temporary root and the
    documented prometheus.yml in it: the rules land there unchanged, the config checks, Prometheus reloads."""
    root = tmp_path / "root"
    etc = root / "etc" / "prometheus"
    etc.mkdir(parents=True)
    (etc / "prometheus.yml").write_text(doc_block("prometheus.yml", "yaml").replace("/etc/prometheus", str(etc)))
    script = doc_block("walk: prometheus", "sh").replace("/etc/prometheus", str(etc))
    shims = f'systemctl() {{ echo "$*" >> {root}/systemctl.log; }}\n'
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + shims + script],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (etc / "rules" / RULES.name).read_bytes() == RULES.read_bytes()
    assert f"{len(alert_names())} rules found" in done.stdout
    assert (root / "systemctl.log").read_text().splitlines() == ["reload prometheus"]


def test_the_series_the_rules_join_on_exist_from_the_start() -> None:
    """Before the first lease attempt each chain reports `depositwatch_leader` 0 (so DepositwatchNoLeader
    sees a cluster where no instance took the lease) and its bound in seconds, beside its block age."""
    metrics = Metrics()
    metrics.prepare(["eth", "btc"], ["hook"])
    metrics.set_bounds("eth", 300.0)
    metrics.set_bounds("btc", 7200.0)
    text = metrics.render().decode()
    assert 'depositwatch_leader{chain="eth"} 0.0' in text
    assert 'depositwatch_leader{chain="btc"} 0.0' in text
    assert 'depositwatch_max_commit_age_seconds{chain="eth"} 300.0' in text
    assert 'depositwatch_max_commit_age_seconds{chain="btc"} 7200.0' in text
