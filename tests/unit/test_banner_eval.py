"""Closed-loop banner evaluation: same traffic for every policy, caps never broken, the dead
banner never clicked after its drop, the report counts what was logged."""

from __future__ import annotations

import dataclasses

from processors.banner_eval import BannerEvalConfig, evaluate_banners
from processors.banner_report import ctr_report, wilson
from processors.cooccurrence import CooccurrenceConfig
from processors.pipeline import SliceConfig


def test_policies_share_the_traffic_and_respect_caps() -> None:
    config = BannerEvalConfig(seed=3, hours=1.0, users_per_minute=3.0, dead_banner_at_hours=0.5)
    slice_config = SliceConfig(cooccurrence=CooccurrenceConfig(session_knn_weight=0.0))
    results = evaluate_banners(config, slice_config)
    placements = {result.placements for result in results.values()}
    assert len(placements) == 1 and placements.pop() > 50
    for result in results.values():
        assert result.cap_violations == 0
        assert result.impressions + result.unfilled_slots == config.slots * result.placements
        assert result.oracle_expected_clicks >= result.expected_clicks
    live = results["live"]
    assert len(live.log) == live.impressions and sum(r.clicked for r in live.log) == live.clicks
    dead_at = config.start_ms + 30 * 60_000
    after_drop = [r for r in live.log if r.banner_id == live.dead_banner and r.ts >= dead_at]
    assert not any(r.clicked for r in after_drop)
    report = ctr_report((r.ts, r.banner_id, r.position, r.clicked) for r in live.log)
    assert sum(row.impressions for row in report["position"]) == live.impressions
    assert [row.key for row in report["position"]] == ["0", "1"]
    summary = live.summary(config.bucket_minutes * 60_000)
    assert summary["dead_banner"] == live.dead_banner and summary["cap_violations"] == 0


def test_a_tighter_cap_is_still_respected() -> None:
    config = BannerEvalConfig(seed=4, hours=0.5, users_per_minute=3.0, slots=5)
    results = evaluate_banners(config, SliceConfig(), policies=("live",))
    assert results["live"].cap_violations == 0 and results["live"].impressions > 0
    assert dataclasses.asdict(config)["slots"] == 5


def test_wilson_interval_brackets_the_rate() -> None:
    low, high = wilson(5, 100)
    assert 0.0 < low < 0.05 < high < 0.12
    assert wilson(0, 0) == (0.0, 0.0)
