import heapq
from operator import itemgetter

from hypothesis import given
from hypothesis import strategies as st

from processors.ranking import largest
from processors.slates import _ROUND_ONE_BY_ONE, round_scores

# few distinct scores: many ties, which is where the two could part
scores = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, float("inf")])


@given(st.lists(st.tuples(st.integers(0, 30), scores), max_size=60), st.integers(0, 70))
def test_largest_is_heapq_nlargest_exactly_ties_included(pairs, n):
    assert largest(pairs, n) == heapq.nlargest(n, pairs, key=itemgetter(1))


def test_largest_keeps_input_order_among_equal_scores():
    pairs = [("c", 1.0), ("a", 2.0), ("b", 1.0), ("d", 2.0)]
    assert largest(pairs, 3) == [("a", 2.0), ("d", 2.0), ("c", 1.0)]


# scores as slates carry them, plus the halves, large and non-finite values that must
# take ``round`` itself
slate_scores = st.one_of(
    st.floats(0.0, 10.0),
    st.integers(0, 10**7).map(lambda k: (k + 0.5) / 1e6),
    st.floats(allow_nan=False),
    st.sampled_from([0.0, -0.0, 5e-7, 2.5e-6, 1.0000005, 999.9999995, float("inf")]),
)


@given(st.lists(slate_scores, max_size=30))
def test_round_scores_is_round_to_six_decimals_exactly(scores):
    rounded = round_scores(scores)
    expected = [round(score, 6) for score in scores]
    assert [repr(x) for x in rounded] == [repr(x) for x in expected]  # -0.0 apart from 0.0


@given(st.lists(slate_scores, min_size=_ROUND_ONE_BY_ONE + 1, max_size=80))
def test_round_scores_over_arrays_is_round_to_six_decimals_exactly(scores):
    """Past ``_ROUND_ONE_BY_ONE`` scores the arrays do it (below it ``round`` itself)."""
    rounded = round_scores(scores)
    expected = [round(score, 6) for score in scores]
    assert [repr(x) for x in rounded] == [repr(x) for x in expected]


@given(st.lists(slate_scores, max_size=30), st.integers(0, 6))
def test_round_scores_is_round_to_any_decimals_exactly(scores, decimals):
    # the profile's weights are rounded to 4 decimals, halves included
    halves = [(k + 0.5) / 10**decimals for k in range(0, 10**decimals, max(1, 10**decimals // 7))]
    values = scores + halves
    rounded = round_scores(values, decimals)
    expected = [round(score, decimals) for score in values]
    assert [repr(x) for x in rounded] == [repr(x) for x in expected]
