"""The benchmark's own measurements are sound (not their numbers: those live in
docs/benchmarks.md, never in tests)."""

from __future__ import annotations

import json

import msgspec

from processors import cooccurrence, slate_kernel
from processors.events import PageView
from stream.benchmark import (
    BACKGROUND_CORE_SHARE,
    HALF_RATE_BUSY_LIMIT,
    SHARED_USER_ID,
    SLATE_KERNELS,
    _envelopes,
    _events,
    _model,
    added_population,
    bench_batch_cost,
    bench_slate_kernels,
    bench_slice,
    least_squares_slope,
    paced_stream,
    profile_slice,
    timed_kernels,
    users_per_event,
    with_shared_user,
)
from stream.topics import partition_for


def test_the_profile_names_processor_functions_with_shares_of_the_slice() -> None:
    profile = profile_slice(_events(400), batch_size=100, top=8)
    assert 0 < len(profile) <= 8
    assert profile[0]["function"].endswith("process_batch")
    assert all(0 < entry["share_of_slice"] <= 1 for entry in profile)
    shares = [entry["share_of_slice"] for entry in profile]
    assert shares == sorted(shares, reverse=True)


def test_the_slice_stage_counts_users_and_their_state_size() -> None:
    result = bench_slice(_events(300), batch_size=100)
    assert result["users"] > 10 and result["user_state_bytes_per_user"] > 100
    assert result["slice_apply_microseconds_per_event"] > 0
    assert result["slice_apply_microseconds_per_event_with_shared_user"] > 0
    assert result["slice_events_per_second_with_shared_user"] > 0


def test_the_shared_user_run_moves_every_fifth_event_to_one_user_and_keeps_the_rest() -> None:
    events = _events(50)
    shared = with_shared_user(events)
    assert [e.user_id == SHARED_USER_ID for e in shared] == [i % 5 == 0 for i in range(50)]
    assert [msgspec.structs.replace(e, user_id="x") for e in shared] == [
        msgspec.structs.replace(e, user_id="x") for e in events
    ]


def test_the_batch_cost_is_measured_per_size_after_the_same_warm_up() -> None:
    """Each size is timed over the same events after the same warm-up; larger batches
    coalesce more of a user's events (fewer touched users per event), which is what the fit
    separates from the per-event cost."""
    result = bench_batch_cost(_events(900), sizes=(10, 300), warm_up=300, measured=600)
    small, large = result["batch_cost_points"]
    assert (small["events_per_batch"], large["events_per_batch"]) == (10, 300)
    assert 0 < large["touched_users_per_event"] < small["touched_users_per_event"] <= 1
    assert small["microseconds_per_event"] > 0 and large["microseconds_per_event"] > 0
    for point in (small, large):  # the slice and its output make up the whole
        parts = point["slice_microseconds_per_event"] + point["output_microseconds_per_event"]
        assert point["slice_microseconds_per_event"] > 0 < point["output_microseconds_per_event"]
        assert abs(parts - point["microseconds_per_event"]) <= 0.15
    assert (result["batch_cost_warm_up_events"], result["batch_cost_measured_events"]) == (300, 600)
    assert set(result) >= {
        "batch_cost_per_event_microseconds",
        "batch_cost_per_touched_user_microseconds",
        "batch_cost_per_batch_milliseconds",
    }
    # the latency target's terms, with the drain taken as the largest batch measured: the
    # per-user budget is below the fitted cost exactly when the worker is predicted too busy
    assert result["batch_cost_drain_batch_events"] == 300
    busy = result["batch_cost_half_rate_busy_predicted"]
    budget = result["batch_cost_per_user_budget_microseconds"]
    assert busy > BACKGROUND_CORE_SHARE and budget >= 0.0
    fitted_per_user = result["batch_cost_per_touched_user_microseconds"]
    assert (budget < fitted_per_user) == (busy > HALF_RATE_BUSY_LIMIT)


def test_the_slate_kernels_are_timed_inside_the_slates_phase_and_then_unwrapped() -> None:
    """Every kernel the slates call is timed at every size (a renamed kernel would read 0),
    their sum is part of the slates phase, itself part of the slice; afterwards the modules
    hold the kernels themselves again."""
    originals = [getattr(slate_kernel, name) for name in SLATE_KERNELS]
    result = bench_slate_kernels(_events(2_000), sizes=(20, 300), warm_up=600, per_size=600)
    by_size = result["slate_kernels_per_touched_user_microseconds"]
    assert list(by_size) == ["20", "300"]
    for point in by_size.values():
        assert all(point[name] > 0 for name in SLATE_KERNELS)
        assert abs(point["all_kernels"] - sum(point[name] for name in SLATE_KERNELS)) <= 0.5
        assert point["all_kernels"] <= point["slates_phase"] + 1.0
        assert point["slates_phase"] <= point["slice"] + 0.1
    assert [getattr(slate_kernel, name) for name in SLATE_KERNELS] == originals
    assert cooccurrence.first_hop is slate_kernel.first_hop


def test_the_kernel_timing_restores_the_kernels_when_the_timed_code_fails() -> None:
    spent: dict[str, float] = {}
    original = slate_kernel.write_slates
    try:
        with timed_kernels(spent):
            assert slate_kernel.write_slates is not original
            raise RuntimeError("the timed code failed")
    except RuntimeError:
        pass
    assert slate_kernel.write_slates is original


def test_a_batch_size_above_the_events_measured_is_reported_as_what_was_timed() -> None:
    """A short run measures fewer events than the largest size: that point is one batch of
    all the measured events, labelled so, and sizes that come to the same are timed once."""
    result = bench_batch_cost(_events(900), sizes=(10, 5_000, 20_000), warm_up=300, measured=600)
    assert [point["events_per_batch"] for point in result["batch_cost_points"]] == [10, 600]


def test_envelopes_keep_each_users_events_on_their_partition_in_order() -> None:
    events = _events(500)
    seen = []
    for partition, value in _envelopes(events, partitions=4, size=7):
        for event in json.loads(value):
            assert partition_for(event["user_id"], 4) == partition
            seen.append(event["event_id"])
    assert sorted(seen) == sorted(e.event_id for e in events)


def test_an_added_population_replays_the_sessions_under_new_users_and_event_ids() -> None:
    template = _events(300)
    first, second = added_population(template, 1), added_population(template, 2)
    users = {e.user_id for e in template}
    for clones in (first, second):
        assert users.isdisjoint(e.user_id for e in clones)
        assert len({e.user_id for e in clones}) == len(users)  # one new user per user
        assert {e.event_id for e in template}.isdisjoint(e.event_id for e in clones)
        assert [(e.type, e.item_id, e.ts) for e in clones] == [
            (e.type, e.item_id, e.ts) for e in template
        ]
    assert {e.user_id for e in first}.isdisjoint(e.user_id for e in second)


def test_the_item_tables_are_measured_per_item_from_a_small_and_a_large_catalog() -> None:
    from stream.benchmark import bench_item_tables

    results = bench_item_tables(6_000, catalogs=(300, 1_200))
    small, large = results["item_scale_rss_growth_bytes"]
    assert small > 0 and large > 0  # each fresh process grew by what the slice keeps
    assert all(entries > 0 for entries in results["item_scale_cooccurrence_entries"])
    assert results["item_tables_bytes_per_item"] == round((large - small) / 900)
    per_10k = results["item_tables_bytes_per_item"] * 10_000 / 2**20
    assert abs(results["item_tables_mib_per_10k_items"] - per_10k) <= 0.1


def test_users_per_event_counts_each_batchs_distinct_users() -> None:
    views = [PageView(event_id=str(i), ts=i, user_id=u) for i, u in enumerate("aabacc")]
    assert users_per_event(views, 2) == 4 / 6  # (a) (b a) (c): a pair of one user counts once
    assert users_per_event(views, 3) == 4 / 6  # (a b) (a c)
    assert users_per_event(views, 6) == 3 / 6
    assert users_per_event(views, 1) == 1.0


def test_a_paced_stream_passes_event_time_at_the_pace_and_spreads_users_over_batches() -> None:
    events, rate = paced_stream(6_000, 2_000.0)
    assert len(events) == 6_000
    assert 1_800 <= rate <= 2_200  # within the one correction's 10%
    span = (events[-1].ts - events[0].ts) / 1000
    assert abs(len(events) / span - rate) < 1e-6 * rate
    # the bench's catalog and apart from every other stream's users and events
    catalog = {record.id for record in _model().catalog_records()}  # items and banners
    assert {e.item_id for e in events if e.item_id} <= catalog
    assert all(e.user_id.startswith("rt0-") and e.event_id.startswith("rt0-") for e in events)
    again, _ = paced_stream(100, 2_000.0, number=1)  # another population, the same sessions
    assert [e.user_id for e in again] == [e.user_id.replace("rt0-", "rt1-") for e in events[:100]]
    # the preloaded drain's stream packs each visitor's session into a batch: far fewer users
    default = _events(6_000)
    assert users_per_event(events, 2_000) > 2 * users_per_event(default, 2_000)


def test_the_fitted_slope_weighs_every_reading() -> None:
    assert least_squares_slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]) == 2.0
    # an outlier inside the run barely moves the fit: (0,0) (1,10) (2,2) (3,3) fit 0.1
    assert abs(least_squares_slope([0, 1, 2, 3], [0.0, 10.0, 2.0, 3.0]) - 0.1) < 1e-12
    assert least_squares_slope([4], [1.0]) == 0.0
    assert least_squares_slope([5, 5], [1.0, 2.0]) == 0.0
