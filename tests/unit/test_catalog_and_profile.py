"""Catalog validation, sessionised profiles and the banner slate built by the slice."""

from __future__ import annotations

import pytest

from processors.catalog import (
    Catalog,
    CatalogBanner,
    CatalogItem,
    catalog_key,
    decode_catalog_record,
    encode_catalog_record,
)
from processors.events import Click, Impression, PageView
from processors.pipeline import SliceConfig, SliceProcessor
from processors.profile import current_interests, profile_of
from processors.user_state import UserState, UserStateConfig, apply_event

MINUTE = 60_000


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "invalid_json"),
        (b'{"kind":"coupon","id":"c1"}', "unknown_type"),
        (b'{"kind":"item","item_type":"recipe"}', "missing_field"),
        (b'{"kind":"item","id":"r1","item_type":"car"}', "invalid_field"),
        (b'{"kind":"banner","id":"b1","priority":"high"}', "invalid_field"),
        (b'{"kind":"banner","id":"b1","active_from":10,"active_to":5}', "invalid_field"),
        (b'{"kind":"banner","id":"b1","tags":["' + b"x" * 70_000 + b'"]}', "too_large"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_invalid_catalog_records_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    decoded = decode_catalog_record(raw)
    assert decoded.record is None and decoded.rejection is not None
    assert decoded.rejection.reason == reason and decoded.rejection.raw == raw


def test_catalog_round_trip_upsert_and_tombstone() -> None:
    banner = CatalogBanner(id="b1", categories=["pasta"], daily_cap=2, linked_items=["r1"])
    item = CatalogItem(id="r1", item_type="recipe", category="pasta", tags=["quick"])
    catalog = Catalog()
    for record in (banner, item):
        decoded = decode_catalog_record(encode_catalog_record(record))
        assert decoded.record == record
        catalog.apply(decoded.record)
    catalog.apply(CatalogBanner(id="b1", categories=["soup"]))  # a newer version replaces
    assert catalog.banners["b1"].categories == ("soup",) and len(catalog) == 2
    assert catalog.delete(catalog_key(item)) and not catalog.delete("item:r1")
    assert catalog_key(banner) == "banner:b1"


def _view(i: int, ts: int, category: str, **extra: object) -> PageView:
    return PageView(
        event_id=f"e{i}",
        ts=ts,
        user_id="u1",
        item_id=f"{category}-{i}",
        item_type="recipe",
        category=category,
        **extra,  # type: ignore[arg-type]
    )


def test_a_new_session_starts_a_fresh_session_interest_that_leads_the_blend() -> None:
    config = UserStateConfig()
    state = UserState(user_id="u1", partition=0)
    for i in range(20):
        apply_event(state, _view(i, i * MINUTE, "pasta", tags=["quick"]), config)
    apply_event(state, _view(99, 120 * MINUTE, "soup", country="fr"), config)  # 100 min later
    profile = profile_of(state)
    assert profile.sessions == 2 and profile.session_events == 1
    assert profile.session_categories == [("soup", 1.0)]
    assert profile.top_categories[0][0] == "pasta"  # long-term interest still pasta
    interests = current_interests(state)
    assert interests["soup"] == 1.0 > interests["pasta"] > 0.0
    assert profile.location == "fr" and profile.top_tags == [("quick", 1.0)]
    assert profile.session_tags == []  # the new session has no tags yet


def _banner_processor() -> SliceProcessor:
    processor = SliceProcessor(SliceConfig())
    processor.apply_catalog(CatalogBanner(id="pasta-b", categories=["pasta"], daily_cap=2))
    processor.apply_catalog(CatalogBanner(id="soup-b", categories=["soup"], linked_items=["r7"]))
    return processor


def test_banner_slate_follows_the_session_and_respects_the_daily_cap() -> None:
    processor = _banner_processor()
    states: dict[str, UserState] = {}
    now = 10 * MINUTE
    views = [(0, _view(i, i * 1000, "pasta")) for i in range(3)]
    result = processor.process_batch(views, states, now_ms=now)
    states.update(result.touched)
    slate = result.slates["u1"]["banners"]
    assert slate.items[0].id == "pasta-b"
    assert slate.items[0].remaining_today == 2 and "content match" in slate.items[0].reason
    shows = [
        (0, Impression(event_id=f"i{i}", ts=5000 + i, user_id="u1", item_id="pasta-b"))
        for i in range(2)
    ]
    result = processor.process_batch(shows, states, now_ms=now)
    states.update(result.touched)
    assert "pasta-b" not in [b.id for b in result.slates["u1"]["banners"].items]  # capped


def test_banner_ctr_is_learned_per_segment_from_impressions_and_clicks() -> None:
    processor = _banner_processor()
    context = {"device": "mobile", "plan": "free"}
    events = [
        (0, Impression(event_id=f"i{i}", ts=1000 + i, user_id=f"u{i}", item_id="soup-b", **context))
        for i in range(10)
    ] + [
        (
            0,
            Click(
                event_id="c1",
                ts=2000,
                user_id="u1",
                item_id="soup-b",
                item_type="banner",
                **context,
            ),
        )
    ]
    processor.process_batch(events, {}, now_ms=3000)
    config = processor.config.banners
    overall = (config.prior_clicks + 1) / (config.prior_impressions + 10)
    strength = config.segment_prior_strength
    alpha, beta = processor.ctr.posterior("soup-b", "mobile-free", config, now_ms=3000)
    assert alpha == pytest.approx(strength * overall + 1, rel=1e-3)
    assert alpha + beta == pytest.approx(strength + 10, rel=1e-3)
    # another segment has no data of its own: it starts from the banner's overall CTR
    alpha, beta = processor.ctr.posterior("soup-b", "desktop-free", config, 3000)
    assert alpha == pytest.approx(strength * overall, rel=1e-3)
    assert alpha + beta == pytest.approx(strength, rel=1e-3)


def test_replaying_a_batch_rebuilds_the_same_banner_slate() -> None:
    slates = []
    for _ in range(2):
        processor = _banner_processor()
        result = processor.process_batch([(0, _view(1, 1000, "soup"))], {}, now_ms=2000)
        slates.append(result.slates["u1"]["banners"])
    assert slates[0] == slates[1]


def test_banner_slates_follow_catalog_changes_between_batches() -> None:
    processor = _banner_processor()
    states: dict[str, UserState] = {}

    def banner_ids(i: int) -> set[str]:
        result = processor.process_batch([(0, _view(i, i * 1000, "pasta"))], states, 60_000)
        states.update(result.touched)
        return {item.id for item in result.slates["u1"]["banners"].items}

    assert banner_ids(0) == {"pasta-b", "soup-b"}
    processor.apply_catalog(None, key="banner:soup-b")  # a tombstone
    assert banner_ids(1) == {"pasta-b"}
    processor.apply_catalog(CatalogBanner(id="grill-b", categories=["grill"]))
    assert banner_ids(2) == {"pasta-b", "grill-b"}


def test_the_slice_builds_each_touched_users_profile_as_profile_of_does() -> None:
    from processors.simulator import SimulationConfig, TrafficModel

    model = TrafficModel(SimulationConfig(seed=5), start_ms=1_700_000_000_000)
    config = SliceConfig()
    processor = SliceProcessor(config)
    for record in model.catalog_records():
        processor.apply_catalog(record)
    stream = model.events()
    states: dict[str, UserState] = {}
    checked = 0
    for _ in range(6):
        batch = [(0, next(stream)) for _ in range(400)]
        result = processor.process_batch(batch, states, now_ms=1_700_000_000_000)
        assert result.profiles.keys() == result.touched.keys()
        threshold = config.loyalty.win_back_threshold
        for user_id, state in result.touched.items():
            assert result.profiles[user_id] == profile_of(state, win_back_threshold=threshold)
            checked += 1
        states.update(result.touched)
    assert checked > 500


def test_the_profiles_inlined_ranking_is_the_counters_normalised_top() -> None:
    # profile._normalised inlines DecayedCounter.normalised_top for speed: ties included,
    # they must rank alike, or the profile and the slates' categories would disagree
    from hypothesis import given
    from hypothesis import strategies as st

    from processors.decay import DecayedCounter
    from processors.profile import _normalised

    @given(
        st.lists(st.tuples(st.sampled_from("abcdefghij"), st.integers(0, 5)), max_size=40),
        st.integers(0, 8),
    )
    def check(adds: list[tuple[str, int]], top: int) -> None:
        counter = DecayedCounter(half_life_ms=1e9, max_keys=6)
        for key, t_ms in adds:
            counter.add(key, t_ms)  # equal times and keys: ties
        assert _normalised(counter, top) == counter.normalised_top(top)
        assert _normalised(None, top) == []

    check()
