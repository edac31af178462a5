"""Popularity: ranked lists are reused until their counter changes, and never stale."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.popularity import PopularityConfig, PopularityIndex


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2", "r3", "r4", "r5"]),
            st.sampled_from(["pasta", "soup", None]),
            st.integers(0, 10_000),
            st.booleans(),  # read the lists after this event
        ),
        max_size=40,
    )
)
def test_ranked_lists_are_always_the_current_top_lists(
    events: list[tuple[str, str | None, int, bool]],
) -> None:
    index = PopularityIndex(PopularityConfig(half_life_ms=5_000, max_items_per_category=3))
    for item, category, t_ms, read in events:
        index.observe(item, "recipe", category, t_ms, weight=1.0)
        if read:
            for category_read in ("pasta", "soup"):
                assert index.ranked("recipe", category_read, 4) == index.top_in_category(
                    "recipe", category_read, 4
                )
            assert index.ranked("recipe", None, 4) == index.top_overall("recipe", 4)
            assert index.ranked("recipe", None, 2) == index.top_overall("recipe", 2)


def test_an_untouched_list_is_the_same_object_from_batch_to_batch() -> None:
    index = PopularityIndex(PopularityConfig())
    index.observe("r1", "recipe", "pasta", 0, 1.0)
    index.observe("r2", "recipe", "soup", 0, 1.0)
    pasta, soup = index.ranked("recipe", "pasta", 5), index.ranked("recipe", "soup", 5)
    index.observe("r3", "recipe", "soup", 1, 1.0)
    assert index.ranked("recipe", "pasta", 5) is pasta
    assert index.ranked("recipe", "soup", 5) is not soup
    assert [item for item, _ in index.ranked("recipe", "soup", 5)] == ["r3", "r2"]
