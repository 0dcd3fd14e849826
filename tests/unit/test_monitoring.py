"""The alerts and the dashboard under deploy/ checked as promtool would check them: the rule file
is a well-formed PrometheusRule, every query parses as PromQL, and every metric a query names is
one the suite exports. The dashboard JSON loads as Grafana reads it."""

from __future__ import annotations

import importlib
import json
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from billing_devtools.services import SERVICES

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "monitoring"
PACKAGES = ("billing_common", *(package for _, _, package, *_ in SERVICES))
SEVERITIES = {"critical", "warning"}
# What the issue asked an SRE to be able to page on and graph, and what KEDA scales on.
REQUIRED = {
    "recurring_run_items",
    "recurring_run_due_items",
    "recurring_run_halted_gateways",
    "recurring_run_age_seconds",
    "recurring_run_duration_seconds_bucket",
    "recurring_work_backlog_items",
    "dunning_due_attempts_backlog",
    "dunning_due_attempts_backlog_age_seconds",
    "billing_events_queue_messages",
    "billing_outbox_lag_seconds",
    "grpc_client_handling_seconds_bucket",
    "grpc_client_handled_total",
    "billing_db_pool_connections",
    "billing_db_pool_max_connections",
    "billing_pacer_wait_seconds_bucket",
    "quota_checks_total",
    "quota_counter_cache_lookups_total",
    "quota_counters_drifted",
    "gateway_breaker_state",
}


@cache
def exported() -> frozenset[str]:
    """Every sample name the suite's code can export (its modules define them when imported)."""
    for package in PACKAGES:
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if ".testing" not in module.name:
                importlib.import_module(module.name)
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum"),
    }
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metrics an expression selects; it must parse as PromQL."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    return [
        rule | {"group": group["name"]} for group in document["spec"]["groups"] for rule in group["rules"]
    ]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return loaded


def panel_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_suite_exports_every_family_an_sre_pages_on() -> None:
    assert sorted(REQUIRED - exported()) == []


def test_the_rule_file_is_a_well_formed_prometheus_rule() -> None:
    document = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    groups = [group["name"] for group in document["spec"]["groups"]]
    assert len(groups) == len(set(groups))
    found = rules()
    alerts = [rule["alert"] for rule in found]
    assert len(alerts) == len(set(alerts))
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "group"}, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        promql_parser.parse_duration(rule["for"])


def test_the_alerts_the_issue_asked_for_are_there() -> None:
    watched = {name for rule in rules() for name in metric_names(rule["expr"])}
    assert {
        "recurring_run_items",  # a run stalled
        "recurring_run_halted_gateways",  # a run halted
        "billing_events_queue_messages",  # a dead-letter queue not empty
        "billing_outbox_lag_seconds",
        "gateway_breaker_state",
        "dunning_due_attempts_backlog_age_seconds",
        "quota_counters_drifted",  # usage ledger and counters apart
    } <= watched


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_every_alert_parses_and_names_only_exported_metrics(rule: dict[str, Any]) -> None:
    assert sorted(metric_names(rule["expr"]) - exported()) == []


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[t for t, _ in panel_queries()])
def test_every_dashboard_query_parses_and_names_only_exported_metrics(title: str, expr: str) -> None:
    assert sorted(metric_names(expr) - exported()) == []


def test_the_dashboard_loads_with_unique_panels_and_a_prometheus_data_source() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    [source] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${" + source["name"] + "}", panel["title"]
            assert panel["targets"], panel["title"]


def test_the_kustomization_ships_the_rules_and_the_dashboard() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file()
    [generator] = kustomization["configMapGenerator"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    for entry in generator["files"]:
        assert (MONITORING / entry.partition("=")[2]).is_file()
