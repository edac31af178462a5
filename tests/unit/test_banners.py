"""Banner ranking: the content rule, eligibility, and Thompson sampling in a closed loop."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.banners import (
    ALL_SEGMENTS,
    Banner,
    BannerConfig,
    BannerTable,
    BannerUsers,
    CtrStats,
    UserContext,
    content_match,
    eligible,
    rank_banners,
    rank_banners_many,
    recipe_overlap,
    relevance_lift,
)
from processors.profile import blended_interests

CONFIG = BannerConfig()


def test_content_match_follows_the_influencer_rule() -> None:
    user = UserContext(
        interests={"pasta": 1.0, "dessert": 1.0},
        tags=frozenset({"quick", "cheap", "vegan"}),
        location="Lyon",
    )
    banner = Banner(
        "b",
        categories=("pasta", "dessert", "grill"),
        tags=("quick", "vegan"),
        locations=("Lyon", "Paris"),
        engagement_rate=0.25,
    )
    assert content_match(banner, user, CONFIG) == 10 + 10 + 5 + 1 + 1 + 0.25
    # the category part follows the user's current interest
    fading = UserContext(interests={"pasta": 0.2})
    assert content_match(Banner("b", categories=("pasta",)), fading, CONFIG) == 2.0


def test_recipe_overlap_is_the_share_of_linked_items_in_the_slate() -> None:
    banner = Banner("b", linked_items=("r1", "r2", "r3", "r4"))
    assert recipe_overlap(banner, ["x", "r3", "r1"]) == (0.5, "r3")
    assert recipe_overlap(banner, ["x"]) == (0.0, None)
    assert recipe_overlap(Banner("plain"), ["r1"]) == (0.0, None)


def test_inactive_banners_are_not_ranked() -> None:
    catalog = [
        Banner("past", active_to_ms=1_000),
        Banner("future", active_from_ms=5_000),
        Banner("now", active_from_ms=1_000, active_to_ms=5_000),
    ]
    ranked = rank_banners(catalog, UserContext(), CtrStats(), CONFIG, random.Random(1), 2_000)
    assert [b.banner_id for b in ranked] == ["now"]


@given(
    caps=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=6),
    seen=st.lists(st.integers(min_value=0, max_value=5), min_size=6, max_size=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_a_banner_at_its_daily_cap_is_never_ranked(
    caps: list[int], seen: list[int], seed: int
) -> None:
    catalog = [Banner(f"b{i}", daily_cap=cap) for i, cap in enumerate(caps)]
    impressions = {f"b{i}": seen[i] for i in range(len(caps))}
    user = UserContext(impressions_today=impressions)
    ranked = rank_banners(catalog, user, CtrStats(), CONFIG, random.Random(seed), 0)
    for banner in ranked:
        cap = caps[int(banner.banner_id[1:])]
        assert impressions[banner.banner_id] < cap
    assert len(ranked) == min(CONFIG.size, sum(1 for i, cap in enumerate(caps) if seen[i] < cap))


def test_a_clicked_banner_is_demoted() -> None:
    catalog = [Banner("a", priority=3.0), Banner("b", priority=2.0)]
    config = BannerConfig(  # a prior so strong that every CTR sample is ~0.01
        exploration_share=0.0, prior_clicks=1e4, prior_impressions=1e6, segment_prior_strength=1e6
    )
    ranked = rank_banners(catalog, UserContext(), CtrStats(), config, random.Random(3), 0)
    assert [b.banner_id for b in ranked] == ["a", "b"]  # priority 3 beats 2 at equal CTR
    user = UserContext(clicked_today=frozenset({"a"}))
    ranked = rank_banners(catalog, user, CtrStats(), config, random.Random(3), 0)
    assert [b.banner_id for b in ranked] == ["b", "a"]


def _closed_loop(
    seconds: int, start_s: int, true_ctr: dict[str, float], stats: CtrStats, rng: random.Random
) -> dict[str, int]:
    """One visitor per simulated second sees the top banner; clicks are learned."""
    catalog = [Banner(banner_id) for banner_id in true_ctr]
    shown = dict.fromkeys(true_ctr, 0)
    for second in range(start_s, start_s + seconds):
        now = second * 1000
        top = rank_banners(catalog, UserContext(), stats, CONFIG, rng, now)[0].banner_id
        shown[top] += 1
        stats.learn_one(top, "all", clicked=False, ts_ms=now)
        if rng.random() < true_ctr[top]:
            stats.learn_one(top, "all", clicked=True, ts_ms=now)
    return shown


def test_thompson_sampling_finds_the_best_banner_and_drops_a_dead_one() -> None:
    rng = random.Random(42)
    stats = CtrStats(window_ms=30 * 60 * 1000)
    hour = 3600
    before = _closed_loop(4 * hour, 0, {"good": 0.08, "fair": 0.04, "bad": 0.01}, stats, rng)
    assert before["good"] > before["fair"] > before["bad"]
    assert before["good"] > 0.6 * 4 * hour
    # "good" stops converting: within an hour it must lose >= 90% of its traffic
    dead = {"good": 0.0, "fair": 0.04, "bad": 0.01}
    _closed_loop(hour, 4 * hour, dead, stats, rng)
    after = _closed_loop(hour, 5 * hour, dead, stats, rng)
    assert after["good"] / hour < 0.1 * before["good"] / (4 * hour)
    assert after["fair"] > after["bad"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["b1", "b2", "b3"]),
            st.sampled_from(["s1", "s2"]),
            st.booleans(),
            st.integers(0, 3_600_000),
            st.booleans(),
        ),
        max_size=60,
    ),
    st.sampled_from([3, 5, 100]),
)
def test_cached_posteriors_always_equal_freshly_computed_ones(
    steps: list[tuple[str, str, bool, int, bool]], max_keys: int
) -> None:
    """Every (banner, segment) posterior and window count served, after any banner learned
    (the others' kept) and windows were evicted for room (``max_keys`` 3 and 5), is what a
    new ``CtrStats`` taught the same impressions and clicks computes."""
    stats = CtrStats(window_ms=600_000, buckets=6, max_keys=max_keys)
    config = BannerConfig()
    learned: list[tuple[str, str, bool, int]] = []
    for banner, segment, clicked, ts, learn in steps:
        if learn:
            stats.learn_one(banner, segment, clicked, ts)
            learned.append((banner, segment, clicked, ts))
        fresh = CtrStats(window_ms=600_000, buckets=6, max_keys=max_keys)
        for step in learned:
            fresh.learn_one(*step)
        banners, segments = ["b3", "b1", "b2"], ["s2", ALL_SEGMENTS, "s1"]
        table = stats.posteriors(banners, segments, config, ts)  # segments x banners x 2
        assert table.shape == (3, 3, 2)
        for row, other_segment in enumerate(segments):
            for column, other_banner in enumerate(banners):
                expected = fresh._posterior(other_banner, other_segment, config, ts)
                assert tuple(table[row, column].tolist()) == expected
        for other_banner in ("b1", "b2", "b3"):
            for other_segment in ("s1", "s2", ALL_SEGMENTS):
                got = stats.posterior(other_banner, other_segment, config, ts)
                assert got == fresh._posterior(other_banner, other_segment, config, ts)
                assert stats.counts(other_banner, other_segment, ts) == fresh.counts(
                    other_banner, other_segment, ts
                )
        assert len(stats._window_counts) <= max_keys  # bounded as the windows are
    other = BannerConfig(segment_prior_strength=3.0)  # another config is never served stale
    assert stats.posterior("b1", "s1", other, 0) == stats._posterior("b1", "s1", other, 0)


_NAMES = st.sampled_from(["a", "b", "c", "d"])
_BANNERS = st.lists(
    st.builds(
        Banner,
        banner_id=st.text("xyz", min_size=1, max_size=3),
        categories=st.lists(_NAMES, max_size=3).map(tuple),
        tags=st.lists(_NAMES, max_size=3).map(tuple),
        locations=st.lists(_NAMES, max_size=2).map(tuple),
        linked_items=st.lists(_NAMES, max_size=3).map(tuple),
        active_from_ms=st.none() | st.integers(0, 2_000),
        active_to_ms=st.none() | st.integers(0, 2_000),
        daily_cap=st.none() | st.integers(0, 3),
        priority=st.floats(-5.0, 5.0),
        engagement_rate=st.floats(0.0, 1.0),
        win_back_only=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda banner: banner.banner_id,
)
_USERS = st.builds(
    UserContext,
    interests=st.dictionaries(_NAMES, st.floats(0.0, 1.0), max_size=3),
    tags=st.frozensets(_NAMES, max_size=3),
    location=st.none() | _NAMES,
    segment=st.sampled_from(["s1", "s2"]),
    slate_items=st.lists(_NAMES, max_size=5),
    impressions_today=st.dictionaries(st.text("xyz", min_size=1, max_size=3), st.integers(0, 4)),
    clicked_today=st.frozensets(st.text("xyz", min_size=1, max_size=3), max_size=2),
    win_back=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(banners=_BANNERS, users=st.lists(_USERS, min_size=1, max_size=4), seed=st.integers(0, 99))
def test_ranking_a_batch_at_once_follows_the_rules_of_one_banner_at_a_time(
    banners: list[Banner], users: list[UserContext], seed: int
) -> None:
    """The array ranker against the scalar rules: exactly the eligible banners, best first
    (ties by id), each with content_match, recipe_overlap and its score from its sample."""
    config = BannerConfig(size=len(banners) + 1, exploration_share=0.0)
    table = BannerTable(banners)
    by_id = {banner.banner_id: banner for banner in banners}
    now = 1_000
    rankings = rank_banners_many(table, users, CtrStats(), config, np.random.default_rng(seed), now)
    assert len(rankings) == len(users)
    for user, ranked in zip(users, rankings, strict=True):
        assert {b.banner_id for b in ranked} == {
            banner.banner_id for banner in banners if eligible(banner, user, now)
        }
        keys = [(-entry.score, entry.banner_id) for entry in ranked]
        assert keys == sorted(keys)
        for entry in ranked:
            banner = by_id[entry.banner_id]
            assert entry.content == pytest.approx(content_match(banner, user, config))
            overlap, via = recipe_overlap(banner, user.slate_items)
            assert (entry.recipe_overlap, entry.via_item) == (pytest.approx(overlap), via)
            lift = relevance_lift(entry.content, config) + config.recipe_weight * overlap
            expected = entry.ctr_sample * lift * 2.0 ** (banner.priority / 10.0)
            if banner.banner_id in user.clicked_today:
                expected *= config.clicked_demotion
            assert entry.score == pytest.approx(expected)
            assert 0.0 < entry.ctr_sample < 1.0


def _tops(names: list[str], weights: list[float]) -> list[tuple[str, float]]:
    """A normalised top list as ``profile.interest_tops`` makes one: distinct keys,
    strongest first, the first 1.0."""
    pairs = sorted(zip(dict.fromkeys(names), weights, strict=False), key=lambda p: -p[1])
    return [(key, weight / pairs[0][1]) for key, weight in pairs] if pairs else []


_TOPS = st.builds(
    _tops,
    st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=5),
    st.lists(st.floats(0.01, 1.0), min_size=5, max_size=5),
)


@settings(max_examples=150)
@given(
    banners=_BANNERS,
    users=st.lists(
        st.tuples(_TOPS, _TOPS, _TOPS, st.lists(st.lists(_NAMES, max_size=4), max_size=3)),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 99),
)
def test_users_given_as_columns_rank_exactly_as_their_user_contexts(
    banners: list[Banner],
    users: list[tuple[list[tuple[str, float]], ...]],
    seed: int,
) -> None:
    """``BannerUsers`` (what the slice gathers: the interests blended from the session's
    and the long-term tops as arrays, the slates' items slate by slate) ranks every user
    exactly as the ``UserContext`` holding ``blended_interests`` and the joined items does:
    the same banners, scores and explanations, to the bit."""
    columns = BannerUsers()
    contexts = []
    for position, (session, long_term, tags, slates) in enumerate(users):
        segment, location = ("s1", "s2")[position % 2], ("a", None)[position % 2]
        impressions, clicked = {"x": position}, ["y"] if position else []
        columns.session_categories.append(session)
        columns.categories.append(long_term)
        columns.tags.append(tags)
        columns.locations.append(location)
        columns.segments.append(segment)
        columns.slate_items.append(slates)
        columns.impressions_today.append(impressions)
        columns.clicked_today.append(clicked)
        columns.win_back.append(position % 3 == 0)
        contexts.append(
            UserContext(
                interests=blended_interests(session, long_term),
                tags=frozenset(tag for tag, _ in tags),
                location=location,
                segment=segment,
                slate_items=[item for ids in slates for item in ids],
                impressions_today=impressions,
                clicked_today=frozenset(clicked),
                win_back=position % 3 == 0,
            )
        )
    table, config = BannerTable(banners), BannerConfig(size=len(banners) + 1)
    by_columns = rank_banners_many(
        table, columns, CtrStats(), config, np.random.default_rng(seed), 1_000
    )
    by_contexts = rank_banners_many(
        table, contexts, CtrStats(), config, np.random.default_rng(seed), 1_000
    )
    assert by_columns == by_contexts
