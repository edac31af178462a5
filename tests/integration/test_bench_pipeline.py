"""`appetence bench`'s pipeline stage runs against its own embedded broker and Redis and
reports what docs/benchmarks.md quotes: the drain against the ceiling, latency, batch size
and busy share at each live rate asked for, and the drain of traffic paced like a site's.
Numbers are not asserted (they belong in docs/benchmarks.md), only that each is measured
from the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.benchmark import bench_pipeline
from stream.metrics import LATENCY_BUCKETS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_pipeline_bench_measures_the_drain_and_each_live_rate(tmp_path: Path) -> None:
    results = bench_pipeline(
        2_000,
        1,
        tmp_path,
        latency_seconds=2.0,
        live_rates=(150,),
        paced=1_000,
        live_record_events=1,
    )
    assert results["pipeline_events"] == 2_000
    assert 0 < results["pipeline_events_per_second"] < results["ceiling_events_per_second"]
    # the CPU over the drain: the worker's per event, and a share of its core that its wall
    # clock allows (10 ms ticks and helper threads: a little slack); the broker's and Redis's
    assert results["worker_cpu_microseconds_per_event"] > 0
    assert 0 < results["worker_cpu_share_of_drain"] <= 1.5
    assert results["broker_and_redis_cpu_share_of_drain"] >= 0
    for prefix in ("latency", "latency_quarter", "live_150", "paced_half"):
        assert results[f"{prefix}_events"] > 0
        assert results[f"{prefix}_p99_seconds_upper_bound"] in (*LATENCY_BUCKETS, float("inf"))
        assert (
            results[f"{prefix}_p50_seconds_upper_bound"]
            <= results[f"{prefix}_p99_seconds_upper_bound"]
        )
        # the wait before a batch's handling is part of event->Redis, never more
        assert (
            results[f"{prefix}_wait_p99_seconds_upper_bound"]
            <= results[f"{prefix}_p99_seconds_upper_bound"]
        )
        assert results[f"{prefix}_events_per_batch"] > 0
        assert results[f"{prefix}_ms_per_batch"] > 0
        assert results[f"{prefix}_busy_share"] > 0
    assert results["live_150_offered_events_per_second"] == 150.0
    assert results["live_150_events"] == 300
    # the --live-rates offers in a record per event; the half and quarter rates in envelopes
    assert results["live_150_records"] == 300
    assert 0 < results["latency_records"] < results["latency_events"]
    # memory per added user, and how much the item-level tables grew alongside
    populations = len(results["rss_bytes_per_added_user"])
    assert populations == len(results["item_table_entries_per_added_user"]) >= 1
    # (entries can fall: a co-occurrence row past its bound is pruned to its top half)
    assert all(isinstance(e, float) for e in results["item_table_entries_per_added_user"])
    assert results["added_users_per_population"] > 0
    assert isinstance(results["fitted_rss_bytes_per_active_user"], int)
    # the paced drain: its own events, drained, spread over more users per event
    assert results["paced_events"] == 1_000
    assert results["paced_pipeline_events_per_second"] > 0
    assert results["paced_worker_cpu_microseconds_per_event"] > 0
    assert results["paced_mean_events_per_batch"] > 0
    assert results["paced_users_per_event"] > results["drain_users_per_event"]
    # latency at half its rate, offered live paced alike
    half = max(50.0, results["paced_pipeline_events_per_second"] / 2)
    assert abs(results["paced_half_offered_events_per_second"] - half) <= 0.1  # (rounded)
