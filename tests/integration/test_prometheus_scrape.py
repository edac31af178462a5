"""A real Prometheus (Debian's `prometheus`, skipped where absent) scrapes a running worker
and collector on loopback with the shipped alert rules loaded: the throughput and latency
series exist and are non-zero, and every metric the Grafana dashboard queries is exported."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis

from stream.embedded import free_port, spawn, wait_for_port
from stream.live import scrape

from .conftest import WorkerHandle
from .test_collector import event, post, start_collector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")


def query(base: str, expr: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        reply = json.loads(response.read())
    assert reply["status"] == "success", reply
    return reply["data"]["result"]  # type: ignore[no-any-return]


def urlopen_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def wait_until_ready(base: str, seconds: float) -> None:
    """Prometheus listens before its TSDB has opened and answers 503 until then."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # HTTPError 503 and connection errors alike
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def value(base: str, expr: str) -> float:
    result = query(base, expr)
    return float(result[0]["value"][1]) if result else 0.0  # type: ignore[index]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package) not installed")
def test_prometheus_scrapes_throughput_and_latency_and_the_dashboard_metrics_exist(
    worker: WorkerHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    worker.start()
    collector, collector_proc = start_collector(worker, tmp_path)
    collector_target = collector.removeprefix("http://")
    port = free_port()
    (tmp_path / "alerts.yml").write_text((ROOT / "deploy/prometheus/alerts.yml").read_text())
    (tmp_path / "prometheus.yml").write_text(
        f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [alerts.yml]
scrape_configs:
  - job_name: appetence-worker
    static_configs: [{{targets: ["127.0.0.1:{worker.web_port}"]}}]
  - job_name: appetence-collector
    static_configs: [{{targets: ["{collector_target}"]}}]
"""
    )
    prometheus = spawn(
        "prometheus",
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        tmp_path / "prometheus.log",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 30, prometheus.popen)
        wait_until_ready(base, 60)
        deadline = time.monotonic() + 90
        sent = 0
        while time.monotonic() < deadline:
            batch = [event(f"p{sent + i}", f"p{sent + i}", f"r{i % 7}") for i in range(20)]
            assert post(f"{collector}/v1/events", json.dumps(batch).encode())[0] == 202
            sent += len(batch)
            throughput = value(base, "sum(rate(appetence_events_consumed_total[15s]))")
            p99 = value(
                base,
                "histogram_quantile(0.99, sum by (le) "
                "(rate(appetence_event_to_redis_seconds_bucket[15s])))",
            )
            accepted = value(base, "sum(appetence_collector_events_total{result='accepted'})")
            # both targets up at their last scrape (one scrape timing out on a loaded machine
            # reads 0 until the next)
            up = value(base, 'min(up{job=~"appetence-.*"})')
            if throughput > 0 and p99 > 0 and accepted > 0 and up == 1.0:
                break
            time.sleep(1)
        assert throughput > 0, "no throughput series in Prometheus"
        assert p99 > 0, "no latency series in Prometheus"
        assert accepted > 0
        assert up == 1.0
        alert_count = (ROOT / "deploy/prometheus/alerts.yml").read_text().count("- alert: ")
        assert alert_count >= 8
        deadline = time.monotonic() + 15  # a rule's health is "unknown" until evaluated
        while True:
            with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as response:
                rules = json.loads(response.read())["data"]["groups"][0]["rules"]
            healthy = len(rules) == alert_count and all(rule["health"] == "ok" for rule in rules)
            if healthy or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert healthy, [(rule["name"], rule["health"]) for rule in rules]

        # A labelled family with no child yet (the loyalty AUC before the learner has a
        # window) is declared (# TYPE) but has no sample: declared counts as exported.
        texts = [urlopen_text(worker.metrics_url), urlopen_text(f"{collector}/metrics")]
        declared = {name for text in texts for name in re.findall(r"^# TYPE (\S+)", text, re.M)}
        sampled = set(scrape(worker.metrics_url)) | set(scrape(f"{collector}/metrics"))
        exported = declared | sampled
        panels = json.loads((ROOT / "deploy/grafana/dashboards/appetence.json").read_text())
        used = {name for panel in panels["panels"] for target in panel["targets"]
                for name in re.findall(r"\b(appetence_[a-z0-9_]+)", target["expr"])}  # fmt: skip
        assert used and used <= exported, used - exported
        # And Prometheus holds a series of each, once its next scrapes (1 s apart) have seen
        # it: a gauge set by the worker's 2 s timer may have appeared after the last one.
        missing = sorted(used & sampled)
        deadline = time.monotonic() + 15
        while missing and time.monotonic() < deadline:
            missing = [name for name in missing if not query(base, f"count({name})")]
            time.sleep(0.5 if missing else 0)
        assert not missing, missing
    finally:
        prometheus.stop()
        collector_proc.stop()
