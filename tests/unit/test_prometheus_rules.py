"""Alert rules and the Grafana dashboard stay valid and name only metrics we export:
`promtool check rules`, `promtool test rules` and `promtool check config` where the Debian
`prometheus` package is installed (skipped otherwise)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.metrics import CollectorMetrics, Metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "appetence.json"
PROMTOOL = shutil.which("promtool")
METRIC = re.compile(r"\b(appetence_[a-z0-9_]+)")


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    CollectorMetrics(registry)
    names = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.add(family.name)
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_every_metric_in_the_dashboard_and_the_alerts_is_exported() -> None:
    exported = exported_names()
    used = {name for expr in dashboard_exprs() + rule_exprs() for name in METRIC.findall(expr)}
    assert len(used) >= 15
    assert used <= exported, used - exported


def test_the_dashboard_covers_what_ops_watch() -> None:
    exprs = " ".join(dashboard_exprs())
    for needed in ("appetence_events_consumed_total", "appetence_events_rejected_total",
                   "appetence_consumer_lag_messages", "appetence_event_to_redis_seconds_bucket",
                   "appetence_redis_writes_total", "appetence_last_batch_timestamp_seconds",
                   "appetence_loyalty_roc_auc", "appetence_users_in_state"):  # fmt: skip
        assert needed in exprs
    titles = [panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(titles) == len(set(titles))


def test_every_alert_has_a_runbook_section_in_operations_md() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert f"### {rule['alert']}" in operations, rule["alert"]
        assert rule["annotations"]["runbook"].endswith(f"#{rule['alert'].lower()}")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    for argv in (
        [PROMTOOL, "check", "rules", "alerts.yml"],
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        [PROMTOOL, "check", "config", "prometheus.yml"],
    ):
        done = subprocess.run(argv, cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
