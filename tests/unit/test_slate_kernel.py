"""The compiled kernels: compiled by the warm-up, never again at run time; name keys."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import slate_kernel
from processors.pipeline import SliceProcessor, compile_kernels
from processors.ranking import NameOrder
from processors.simulator import SimulationConfig, TrafficModel
from stream.config import load_settings

#: The kernels the slice calls from Python (the others run inside them).
CALLED = ("popular_rows", "merge_rows", "strongest_voters", "first_hop", "second_hop")
CALLED += ("peak_per_session", "string_bounds", "write_slates")


def kernel_signatures() -> dict[str, int]:
    kernels = {name: getattr(slate_kernel, name) for name in CALLED}
    assert all(isinstance(k, numba.core.registry.CPUDispatcher) for k in kernels.values())
    return {name: len(kernel.signatures) for name, kernel in kernels.items()}


def test_the_warm_up_compiles_every_kernel_a_worker_runs() -> None:
    # A kernel the warm-up misses, or a call with other argument types (an int32 array, a
    # read-only one), would compile in the middle of a worker's batch: ~1-10 s.
    compile_kernels()
    warmed = kernel_signatures()
    assert all(count >= 1 for count in warmed.values()), warmed
    processor = SliceProcessor(load_settings().slice_config())
    model = TrafficModel(SimulationConfig(seed=3), start_ms=1_000_000)
    for record in model.catalog_records():
        processor.apply_catalog(record)
    events = [event for _, event in zip(range(3_000), model.events(), strict=False)]
    states: dict = {}
    for start in range(0, len(events), 300):
        batch = [(0, event) for event in events[start : start + 300]]
        result = processor.process_batch(batch, states, now_ms=events[-1].ts)
        states.update(result.touched)
        assert result.slates
    assert kernel_signatures() == warmed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcé", max_size=4), unique=True, max_size=40), st.data())
def test_name_keys_order_as_the_names_however_they_were_appended(
    names: list[str], data: st.DataObject
) -> None:
    order, held = NameOrder(), []
    cuts = sorted(data.draw(st.lists(st.integers(0, len(names)), max_size=6)))
    for cut in [*cuts, len(names)]:
        held += names[len(held) : cut]
        keys = order.keys(held, generation=0)
        assert sorted(range(len(held)), key=keys.__getitem__) == sorted(
            range(len(held)), key=held.__getitem__
        )


def test_a_gap_used_up_rebuilds_the_keys() -> None:
    order, names = NameOrder(), ["a", "z"]
    order.keys(names, generation=0)
    for step in range(60):  # each new name lands between the last one and "z": halving gaps
        names.append("y" * (step + 1))
        keys = order.keys(names, generation=0)
    assert list(np.argsort(keys)) == sorted(range(len(names)), key=names.__getitem__)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), max_size=120),  # ties are common
    st.integers(0, 50),
)
def test_the_top_rows_are_the_first_of_a_full_sort(scores: list[float], count: int) -> None:
    score = np.array(scores, dtype=np.float64)
    rank = np.random.default_rng(len(scores)).permutation(len(scores)).astype(np.int64)
    full = np.arange(len(scores), dtype=np.int64)
    slate_kernel.sort_rows(full, score, rank, np.empty(len(scores), dtype=np.int64))
    assert full.tolist() == sorted(range(len(scores)), key=lambda r: (-score[r], rank[r]))
    top = np.arange(len(scores), dtype=np.int64)[::-1].copy()
    slate_kernel.top_rows(top, score, rank, count, np.empty(len(scores), dtype=np.int64))
    assert top[:count].tolist() == full[:count].tolist()
    assert sorted(top.tolist()) == list(range(len(scores)))  # the rest kept, none lost


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]) | st.floats(0.0, 10.0), max_size=200),
    st.integers(-1, 80),
)
def test_the_largest_positions_are_the_head_of_a_stable_sort(
    values: list[float], limit: int
) -> None:
    """The vote lists' selection (``largest_positions``) is the stable sort's head it replaced:
    ``np.argsort(-values, kind="mergesort")[:limit]``, ties in position order."""
    array = np.array(values, dtype=np.float64)
    expected = np.argsort(-array, kind="mergesort")[: max(limit, 0)]
    assert slate_kernel.largest_positions(array, limit).tolist() == expected.tolist()
