import heapq
from operator import itemgetter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from processors.ranking import largest, lexsort, rank_in_runs
from processors.slates import round_scores

# few distinct scores: many ties, which is where the two could part
scores = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, float("inf")])


@given(st.lists(st.tuples(st.integers(0, 30), scores), max_size=60), st.integers(0, 70))
def test_largest_is_heapq_nlargest_exactly_ties_included(pairs, n):
    assert largest(pairs, n) == heapq.nlargest(n, pairs, key=itemgetter(1))


def test_largest_keeps_input_order_among_equal_scores():
    pairs = [("c", 1.0), ("a", 2.0), ("b", 1.0), ("d", 2.0)]
    assert largest(pairs, 3) == [("a", 2.0), ("d", 2.0), ("c", 1.0)]


# keys as the slate path sorts them: groups, ids and positions (ints), scores (floats with
# many ties, signed zeros and infinities), and the odd wide, negative or NaN key
int_keys = st.integers(0, 40).flatmap(
    lambda n: st.lists(
        st.one_of(
            st.lists(st.integers(0, 5), min_size=n, max_size=n).map(
                lambda v: np.array(v, dtype=np.int64)
            ),
            st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n).map(
                lambda v: np.array(v, dtype=np.int64)
            ),
            st.lists(
                st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 1e-300, float("inf"), -float("inf")]),
                min_size=n,
                max_size=n,
            ).map(lambda v: np.array(v, dtype=np.float64)),
            st.lists(st.floats(allow_nan=True), min_size=n, max_size=n).map(
                lambda v: np.array(v, dtype=np.float64)
            ),
            st.lists(st.booleans(), min_size=n, max_size=n).map(lambda v: np.array(v)),
        ),
        min_size=1,
        max_size=4,
    )
)


@given(int_keys)
def test_lexsort_is_numpy_lexsort_exactly(keys):
    assert lexsort(keys).tolist() == np.lexsort(keys).tolist()


def test_lexsort_packs_the_slate_path_sorts_and_falls_back_when_codes_do_not_fit():
    rng = np.random.default_rng(7)
    group = np.sort(rng.integers(0, 512, 5_000))
    score = rng.integers(0, 50, 5_000) / 7.0  # many ties
    assert lexsort((-score, group)).tolist() == np.lexsort((-score, group)).tolist()
    wide = rng.integers(0, 2**31, 5_000)  # two 31-bit keys and the position: 75 bits
    keys = (wide, wide[::-1].copy(), rng.random(5_000))
    assert lexsort(keys).tolist() == np.lexsort(keys).tolist()


@given(st.lists(st.integers(0, 6), max_size=50))
def test_rank_in_runs_is_the_position_after_each_runs_first(values):
    keys = np.sort(np.array(values, dtype=np.int64))
    expected = np.arange(len(keys)) - np.searchsorted(keys, keys)
    assert rank_in_runs(keys).tolist() == expected.tolist()


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
