import heapq
from operator import itemgetter

from hypothesis import given
from hypothesis import strategies as st

from processors.ranking import largest

# few distinct scores: many ties, which is where the two could part
scores = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, float("inf")])


@given(st.lists(st.tuples(st.integers(0, 30), scores), max_size=60), st.integers(0, 70))
def test_largest_is_heapq_nlargest_exactly_ties_included(pairs, n):
    assert largest(pairs, n) == heapq.nlargest(n, pairs, key=itemgetter(1))


def test_largest_keeps_input_order_among_equal_scores():
    pairs = [("c", 1.0), ("a", 2.0), ("b", 1.0), ("d", 2.0)]
    assert largest(pairs, 3) == [("a", 2.0), ("d", 2.0), ("c", 1.0)]
