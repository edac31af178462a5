"""Look-alike audiences: hold-out never learned, lift honest, representation tested."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from processors.audience_eval import simulate_audience
from processors.audiences import (
    AudienceConfig,
    AudienceLearner,
    Membership,
    benjamini_hochberg,
    decile_of,
    held_out,
    representation,
    two_proportion_p,
)
from processors.simulator import SimulationConfig


def population(n: int, seed: int) -> list[tuple[str, dict[str, float], bool]]:
    """Users with a vegan taste (the audience) and others."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        vegan = rng.random() < 0.1
        features = {
            "cat=vegan": rng.uniform(0.6, 1.0) if vegan else rng.uniform(0.0, 0.3),
            "cat=pasta": rng.uniform(0.0, 1.0),
            f"device={rng.choice(['mobile', 'desktop'])}": 1.0,
        }
        out.append((f"u{i}", features, vegan))
    return out


def test_held_out_seeds_are_never_learned_and_lift_comes_from_them_only() -> None:
    config = AudienceConfig(holdout_share=0.3)
    learner = AudienceLearner(config)
    users = population(3000, seed=1)
    for user, _, vegan in users:
        if vegan:
            learner.member_added("vegans", user)
    for user, features, _ in users:
        learner.observe(user, features)
    members = learner.membership.members["vegans"]
    trained = [u for u in members if not held_out("vegans", u, 0.3)]
    assert learner.models["vegans"].positives == len(trained)  # each trained seed seen once
    lift = learner.lift_table("vegans")
    held = sum(1 for u in members if held_out("vegans", u, 0.3))
    assert sum(r.responders for r in lift) == held > 0
    # the prospects exclude the trained seeds: deciles cover everyone else, equal counts
    assert sum(r.users for r in lift) == len(users) - len(trained)
    assert max(r.users for r in lift) - min(r.users for r in lift) <= 1
    assert lift[0].lift > 5 and lift[-1].responders == 0
    assert abs(lift[-1].cumulative_capture - 1.0) < 1e-9


def test_a_random_audience_has_no_lift() -> None:
    learner = AudienceLearner(AudienceConfig(holdout_share=0.5))
    rng = random.Random(3)
    users = population(3000, seed=2)
    for user, _, _ in users:
        if rng.random() < 0.1:  # seeds unrelated to any feature
            learner.member_added("random", user)
    for user, features, _ in users:
        learner.observe(user, features)
    assert learner.lift_table("random")[0].lift < 2.0


def test_representation_flags_the_defining_category_only() -> None:
    users = population(4000, seed=4)
    inside = [f for _, f, vegan in users if vegan]
    outside = [f for _, f, vegan in users if not vegan]
    rows = {r.feature: r for r in representation(inside, outside, AudienceConfig())}
    assert rows["cat=vegan"].q_value < 0.01 and rows["cat=vegan"].ratio > 2
    assert rows["cat=pasta"].q_value > 0.01


def test_membership_is_bounded() -> None:
    membership = Membership(max_audiences=1, max_members=2)
    assert membership.apply("a", "u1", add=True) and membership.apply("a", "u2", add=True)
    assert not membership.apply("a", "u3", add=True)  # audience full
    assert not membership.apply("b", "u1", add=True)  # too many audiences
    assert membership.apply("a", "u1", add=False) and membership.size() == 1
    assert membership.forget_user("u2") == 1 and membership.size() == 0


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30))
def test_bh_q_values_are_monotone_in_p_and_never_below_p(p_values: list[float]) -> None:
    q = benjamini_hochberg(p_values)
    for i, p in enumerate(p_values):
        assert p - 1e-12 <= q[i] <= 1.0
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    assert all(q[a] <= q[b] + 1e-12 for a, b in itertools.pairwise(order))


def test_two_proportion_test_and_deciles() -> None:
    assert two_proportion_p(10, 100, 10, 100) == 1.0
    assert two_proportion_p(50, 100, 10, 100) < 1e-6
    cuts = [0.9 - 0.1 * i for i in range(9)]
    assert [decile_of(s, cuts) for s in (0.95, 0.85, 0.05)] == [1, 2, 10]


def test_planted_audience_in_simulation_is_found() -> None:
    report = simulate_audience(AudienceConfig(), SimulationConfig(users_per_minute=20), hours=6)
    assert report["held_out_seeds"] > 20
    assert report["top_decile_lift"] > 3.0
    assert report["planted_over_represented_q_below_0_01"]
    assert report["other_categories_over_represented"] == []


def test_seed_records_and_api_tokens_are_validated() -> None:
    from processors.audiences import audience_update, parse_seed_record
    from stream.audience_api import authorized
    from stream.config import load_settings

    assert parse_seed_record(b"a/u1", b"1") == ("a", "u1", True)
    assert parse_seed_record(b"a/u1", None) == ("a", "u1", False)
    for bad in (None, b"", b"a/", b"/u1", b"\xff/u", b"a/" + b"x" * 200):
        assert parse_seed_record(bad, b"1") is None
    settings = load_settings(audience_api_token="a-token-of-16-chars-or-more")
    assert authorized(settings, "Bearer a-token-of-16-chars-or-more")
    for header in (None, "", "Bearer wrong", "a-token-of-16-chars-or-more"):
        assert not authorized(settings, header)
    assert not authorized(load_settings(), "Bearer anything")  # no token: endpoint off
    payload, moves = audience_update({}, {"a": (0.5, 4)})
    assert payload == {"a": {"score": 0.5, "decile": 4}} and moves == [("a", None, 4, 0.5)]
