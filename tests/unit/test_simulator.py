"""The traffic model: seeded, time-ordered, sessions apart, truth consistent with events."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import msgspec

from processors.simulator import (
    SESSION_GAP_MS,
    GroundTruth,
    SimulationConfig,
    TrafficModel,
    true_return_probability,
)
from stream.live import quantile


def sample(seed: int, n: int, days_between: float = 0.02) -> tuple[TrafficModel, list]:  # type: ignore[type-arg]
    config = SimulationConfig(
        seed=seed, users_per_minute=20, mean_days_between_sessions=days_between
    )
    model = TrafficModel(config, start_ms=0)
    return model, [e for _, e in zip(range(n), model.events(), strict=False)]


def test_sessions_of_a_user_are_at_least_the_gap_apart() -> None:
    _, events = sample(1, 20_000)
    by_session: dict[str, list[int]] = defaultdict(list)
    user_of: dict[str, str] = {}
    for event in events:
        assert event.session_id is not None
        by_session[event.session_id].append(event.ts)
        user_of[event.session_id] = event.user_id
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for session_id, times in by_session.items():
        spans[user_of[session_id]].append((min(times), max(times)))
    returning = 0
    for user_spans in spans.values():
        user_spans.sort()
        for (_, end), (start, _) in pairwise(user_spans):
            assert start - end >= SESSION_GAP_MS
            returning += 1
    assert returning > 10


def test_sequence_numbers_are_gapless_per_user() -> None:
    _, events = sample(2, 5_000)
    seqs: dict[str, list[int]] = defaultdict(list)
    for event in events:
        seqs[event.user_id].append(event.seq)
    for values in seqs.values():
        assert values == list(range(1, len(values) + 1))


def test_ground_truth_is_exportable_and_matches_the_events() -> None:
    model, events = sample(3, 3_000)
    truth = msgspec.json.decode(msgspec.json.encode(model.ground_truth()), type=GroundTruth)
    users = {u.user_id: u for u in truth.users}
    assert {e.user_id for e in events} <= set(users)
    for event in events[:200]:
        user = users[event.user_id]
        assert (event.device, event.plan) == (user.device, user.plan)
    banners = {b.banner_id for b in truth.banners}
    assert {e.item_id for e in events if e.type == "impression"} <= banners
    assert all(0 < p < 1 for b in truth.banners for p in b.ctr_by_segment.values())


def test_traits_drive_return_probability() -> None:
    premium = true_return_probability("desktop", "macos", "safari", "premium", "de")
    free = true_return_probability("mobile", "android", "chrome", "free", "us")
    assert premium > 0.7 > 0.3 > free


def test_histogram_quantile_reads_cumulative_buckets() -> None:
    cumulative = [(0.1, 50.0), (0.5, 90.0), (1.0, 99.0), (float("inf"), 100.0)]
    assert quantile(cumulative, 0.5) == 0.1
    assert quantile(cumulative, 0.9) == 0.5
    assert quantile(cumulative, 0.99) == 1.0
    assert quantile([], 0.5) is None
