"""The shipped Grafana dashboard and Prometheus rules: valid, and only real metric names.

Every PromQL expression in etc/grafana/momedod.json and etc/prometheus/momedod-rules.yml is
reduced to the metric names it selects, and each must be a series name that momedod exports
(derived from the registry in momedod/observability/metrics.py with an in-process daemon
running, so the store gauges and labelled children exist) or Prometheus' own ``up``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from support import Server

from momedod.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "etc" / "grafana" / "momedod.json"
RULES = ROOT / "etc" / "prometheus" / "momedod-rules.yml"

# Series Prometheus adds itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week", "deriv", "exp",
    "delta", "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log2", "log10",
    "max_over_time", "min_over_time", "minute", "month", "predict_linear",
    "quantile_over_time", "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt",
    "stddev_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}  # fmt: skip
PROMQL_AGGREGATIONS = {
    "avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
}  # fmt: skip
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}

# Metrics an operator must find on the dashboard (the list).
DASHBOARD_MUST_SHOW = {
    "momedod_connections",
    "momedod_listener_max_connections",
    "momedod_online_devices",
    "momedod_messages_accepted_total",
    "momedod_messages_delivered_total",
    "momedod_delivery_latency_seconds_bucket",
    "momedod_mailbox_entries",
    "momedod_mailbox_oldest_age_seconds",
    "momedod_tls_handshake_failures_total",
    "momedod_auth_failures_total",
    "momedod_frames_received_total",
    "momedod_frames_sent_total",
    "momedod_protocol_errors_total",
    "momedod_store_operation_duration_seconds_bucket",
    "momedod_store_commit_batch_size_bucket",
    "momedod_event_loop_lag_seconds",
    "momedod_certificate_expiry_timestamp_seconds",
    "momedod_state_dir_free_bytes",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "momedod_build_info",
}

REQUIRED_ALERTS = {
    "MomedodDown",
    "MomedodEventLoopLag",
    "MomedodMailboxBacklogGrowing",
    "MomedodHandshakeFailureSpike",
    "MomedodDiskNearlyFull",
    "MomedodCertificateExpiringSoon",
}


def promtool() -> str:
    """Path of promtool; a missing one fails in CI (CI=true) and skips elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool not found (Debian package 'prometheus')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}: .ci/run must install it")
        pytest.skip(msg)
    return path


# --- PromQL -------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana variables allowed)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals, e.g. in label matchers
    s = re.sub(r"'(?:\\.|[^'\\])*'", "''", s)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables outside brackets
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call:
            assert word in PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS, f"unknown function {word}"
        elif word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_metric_names_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (instance, le) (rate(x_bucket{job="$job",'
        'instance=~"$instance"}[$__rate_interval])))'
    ) == {"x_bucket"}
    assert metric_names("a_total / on (instance) group_left(version) b_info > 1e3") == {
        "a_total",
        "b_info",
    }
    assert metric_names("x - time() < 14 * 86400 and y offset 5m") == {"x", "y"}
    assert metric_names('sum(rate(c_total{reason!="a b"}[5m])) by (job) > 5') == {"c_total"}


# --- the exported names -------------------------------------------------------------------


def exported_series_names() -> set[str]:
    """Series names momedod exports, from its registry (families by type, plus samples)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture
async def exported(server: Server) -> set[str]:
    """Names with an in-process daemon running: its first store refresh sets the gauges."""
    with trio.fail_after(10):
        while "momedod_state_dir_free_bytes" not in (names := exported_series_names()):
            await trio.sleep(0.05)
    return names | PROMETHEUS_SERIES


# --- the dashboard ------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))  # rows, collapsed or not
    return out


def dashboard_exprs(d: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(d["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    inputs = {i["name"]: i for i in d["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert d["id"] is None and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    for v in variables.values():
        assert v["datasource"]["uid"] == "${DS_PROMETHEUS}"
    # No datasource other than the input may be referenced (an import would break on it).
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {d["uid"]}
    assert uids <= {"${DS_PROMETHEUS}", "-- Grafana --"}, uids


def test_every_panel_has_a_title_and_queries() -> None:
    panels = all_panels(dashboard()["panels"])
    assert len([p for p in panels if p["type"] != "row"]) >= 20
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        assert p.get("title"), p
        if p["type"] == "row":
            continue
        assert p.get("description"), f"{p['title']}: no description"
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], f"{p['title']}: no targets"
        assert "unit" in p["fieldConfig"]["defaults"], f"{p['title']}: no unit"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"].strip(), p["title"]
            # Panels follow the job/instance selection (except aggregates over time()).
            if metric_names(t["expr"]):
                assert '$job"' in t["expr"] and "$instance" in t["expr"], t["expr"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dashboard()["panels"]):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


async def test_dashboard_queries_use_exported_metrics(exported: set[str]) -> None:
    d = dashboard()
    used: set[str] = set()
    for expr in dashboard_exprs(d):
        names = metric_names(expr)
        assert names <= exported, f"unknown metric(s) {names - exported} in {expr!r}"
        used |= names
    for v in d["templating"]["list"]:
        m = re.match(r"label_values\(\s*([A-Za-z_:][\w:]*)", v["query"]["query"])
        assert m and m.group(1) in exported, v["query"]
    assert used >= DASHBOARD_MUST_SHOW, DASHBOARD_MUST_SHOW - used


# --- the rules ----------------------------------------------------------------------------


def parse_rules(text: str) -> list[dict[str, str]]:
    """The alerting rules of the (block-style) rules file: alert, expr, for, labels, ...

    A deliberately small reader for this file's layout (PyYAML is not a dependency);
    the tests compare its rule count with promtool's.
    """
    rules: list[dict[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        m = re.match(r"^(\s*)(- )?(\w+):\s*(.*)$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        key, value = m.group(3), m.group(4)
        if value in (">-", ">", "|", "|-"):
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i].strip())
                i += 1
            value = (" " if value.startswith(">") else "\n").join(b for b in block if b)
        elif len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key == "alert":
            rules.append({})
        if rules:  # keys before the first rule (groups, name) are not wanted
            rules[-1][key] = value
    return rules


def test_rules_pass_promtool() -> None:
    res = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    m = re.search(r"(\d+) rules found", res.stdout)
    assert m and int(m.group(1)) == len(parse_rules(RULES.read_text()))


def test_rules_cover_the_required_alerts() -> None:
    rules = parse_rules(RULES.read_text())
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)
    for r in rules:
        assert re.fullmatch(r"\d+[smh]", r.get("for", "")), f"{r['alert']}: no for:"
        assert r.get("severity") in ("critical", "warning"), r["alert"]
        assert r.get("summary") and r.get("description"), r["alert"]
        assert 'job="momedod"' in r["expr"], r["alert"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["MomedodDown"]["expr"] == 'up{job="momedod"} == 0'
    assert "14 * 86400" in by_name["MomedodCertificateExpiringSoon"]["expr"]


async def test_rules_use_exported_metrics(exported: set[str]) -> None:
    for r in parse_rules(RULES.read_text()):
        names = metric_names(r["expr"])
        assert names, r["alert"]
        assert names <= exported, f"{r['alert']}: unknown metric(s) {names - exported}"


def without_annotations(text: str) -> str:
    """The rules with their annotations removed (promtool compares them verbatim)."""
    out, skip_deeper_than = [], -1
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than >= 0 and (not line.strip() or indent > skip_deeper_than):
            continue
        skip_deeper_than = -1
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


# (alert, input series, evaluation time, whether it fires); one-minute samples from t=0.
# time() in a promtool test is the evaluation time in seconds since the epoch.
ALERT_CASES = [
    ("MomedodDown", {"up": "1 1 0x10"}, "3m", False),  # down, but not yet for 2m
    ("MomedodDown", {"up": "1 1 0x10"}, "5m", True),
    ("MomedodDown", {"up": "1x10"}, "5m", False),
    ("MomedodEventLoopLag", {"momedod_event_loop_lag_seconds": "0.001 0.9x10"}, "4m", True),
    ("MomedodEventLoopLag", {"momedod_event_loop_lag_seconds": "0.001 0.3x10"}, "4m", False),
    (
        "MomedodMailboxBacklogGrowing",
        {
            "momedod_mailbox_entries": "100+10x300",
            "momedod_mailbox_oldest_age_seconds": "200000x300",
        },
        "3h",
        True,
    ),
    (  # growing, but everything is collected within the day: devices are just offline
        "MomedodMailboxBacklogGrowing",
        {"momedod_mailbox_entries": "100+10x300", "momedod_mailbox_oldest_age_seconds": "3600x300"},
        "3h",
        False,
    ),
    (  # old entries of a device that is gone, but no growth: expiry will take them
        "MomedodMailboxBacklogGrowing",
        {"momedod_mailbox_entries": "100x300", "momedod_mailbox_oldest_age_seconds": "200000x300"},
        "3h",
        False,
    ),
    (
        "MomedodHandshakeFailureSpike",
        {"momedod_tls_handshake_failures_total": "0+600x20"},
        "15m",
        True,
    ),
    (
        "MomedodHandshakeFailureSpike",
        {"momedod_tls_handshake_failures_total": "0+60x20"},
        "15m",
        False,
    ),
    ("MomedodAuthFailureSpike", {"momedod_auth_failures_total": "0+120x30"}, "20m", True),
    ("MomedodAuthFailureSpike", {"momedod_auth_failures_total": "0+30x30"}, "20m", False),
    (
        "MomedodDiskNearlyFull",
        {"momedod_state_dir_free_bytes": "5x20", "momedod_state_dir_size_bytes": "100x20"},
        "15m",
        True,
    ),
    (
        "MomedodDiskNearlyFull",
        {"momedod_state_dir_free_bytes": "30x20", "momedod_state_dir_size_bytes": "100x20"},
        "15m",
        False,
    ),
    (
        "MomedodCertificateExpiringSoon",
        {"momedod_certificate_expiry_timestamp_seconds": f"{10 * 86400}x200"},
        "2h",
        True,
    ),
    (
        "MomedodCertificateExpiringSoon",
        {"momedod_certificate_expiry_timestamp_seconds": f"{30 * 86400}x200"},
        "2h",
        False,
    ),
]


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(without_annotations(RULES.read_text()))
    assert {c[0] for c in ALERT_CASES} == {r["alert"] for r in parse_rules(RULES.read_text())}
    severity = {r["alert"]: r["severity"] for r in parse_rules(RULES.read_text())}
    target = {"job": "momedod", "instance": "pi.example:9479"}
    tests = []
    for alert, series, at, fires in ALERT_CASES:
        labels = dict(target)
        if alert == "MomedodCertificateExpiringSoon":
            labels["listener"] = "0.0.0.0:7443"
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        expected = [{"exp_labels": {**labels, "severity": severity[alert]}}] if fires else []
        tests.append(
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"{name}{{{selector}}}", "values": values}
                    for name, values in series.items()
                ],
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
            }
        )
    spec = tmp_path / "tests.yml"  # JSON is YAML
    spec.write_text(
        json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests})
    )
    res = subprocess.run(
        [promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, with the Grafana variables filled in as Grafana would."""
    grafana = {"$__rate_interval": "1m", "$job": "momedod", "$instance": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs(dashboard())):
        for var, val in grafana.items():
            expr = expr.replace(var, val)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    spec = tmp_path / "queries.yml"  # JSON is YAML
    spec.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(
        [promtool(), "check", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout
