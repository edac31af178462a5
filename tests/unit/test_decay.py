"""Forward-decayed counters: order independence, decay, bounds, rescaling."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.decay import DecayedCounter

updates = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.integers(min_value=0, max_value=10**6)),
    min_size=1,
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(updates, st.randoms(use_true_random=False))
def test_order_does_not_change_scores(pairs: list[tuple[str, int]], rnd: object) -> None:
    first = DecayedCounter(half_life_ms=10_000, max_keys=100)
    for key, t in pairs:
        first.add(key, t)
    shuffled = list(pairs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    second = DecayedCounter(half_life_ms=10_000, max_keys=100)
    for key, t in shuffled:
        second.add(key, t)
    query = max(t for _, t in pairs)
    for key in "abcdef":
        assert math.isclose(
            first.value_at(key, query), second.value_at(key, query), rel_tol=1e-9, abs_tol=1e-12
        )


def test_half_life_halves_the_score() -> None:
    counter = DecayedCounter(half_life_ms=1000, max_keys=10)
    counter.add("a", 0)
    assert math.isclose(counter.value_at("a", 1000), 0.5)
    assert math.isclose(counter.value_at("a", 3000), 0.125)


def test_size_is_bounded_and_keeps_the_strongest() -> None:
    counter = DecayedCounter(half_life_ms=1e12, max_keys=10)
    for i in range(1000):
        for _ in range(i % 50):
            counter.add(f"k{i}", 0)
    assert len(counter) <= 20
    assert counter.top(1)[0][0] in {f"k{i}" for i in range(49, 1000, 50)}


def test_rescaling_keeps_relative_order_over_long_spans() -> None:
    counter = DecayedCounter(half_life_ms=1000, max_keys=10)
    counter.add("old", 0, amount=1000.0)
    counter.add("new", 10**6)  # 1000 half-lives later: forces a rescale
    assert counter.top(1)[0][0] == "new"
    assert all(math.isfinite(v) for v in counter.scores.values())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from("abcdefgh"), max_size=6),
            st.sampled_from([0, 1, 500, 10**6, 3 * 10**6]),
            st.sampled_from([0.5, 1.0, 2.0]),
        ),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_add_many_is_adding_each_key_in_turn(
    events: list[tuple[list[str], int, float]], max_keys: int
) -> None:
    """The same scores, in the same order (what ties and prunes follow), through rescales
    (10^6 ms is 1,000 half-lives) and prunes (``max_keys`` 1-4 for up to 8 keys)."""
    one_by_one = DecayedCounter(half_life_ms=1000, max_keys=max_keys)
    together = DecayedCounter(half_life_ms=1000, max_keys=max_keys)
    for keys, t, amount in events:
        for key in keys:
            one_by_one.add(key, t, amount)
        together.add_many(keys, t, amount)
        assert list(together.scores.items()) == list(one_by_one.scores.items())
        assert together.landmark_ms == one_by_one.landmark_ms
