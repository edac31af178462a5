"""The co-occurrence tables as arrays (``processors.row_kernel``) against their definition:
the dict of dicts the model kept before, learned and read as it did, bit for bit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from processors.ranking import largest
from processors.row_kernel import RowTable, bump, learn_clicks, space_for

Table = dict[str, dict[str, float]]


def dict_bump(table: Table, a: str, b: str, amount: float, keep: int) -> None:
    """The definition: ``table[a][b] += amount``; a row past ``2 * keep`` entries keeps its
    ``keep`` largest."""
    row = table.get(a)
    if row is None:
        row = table[a] = {}
    row[b] = row.get(b, 0.0) + amount
    if len(row) > 2 * keep:
        table[a] = dict(largest(row.items(), keep))


class DictModel:
    """The tables as the model kept them before the arrays: learning and the vote lists."""

    def __init__(self, config: CooccurrenceConfig) -> None:
        self.config = config
        self.rules: Table = {}
        self.pairs: Table = {}
        self.covisits: Table = {}
        self.item_counts: dict[str, float] = {}
        self.sessions: dict[str, tuple[str, ...]] = {}
        self.latest_weight = 1.0
        self.landmark: float | None = None

    def weight(self, ts_ms: float | None) -> float:
        """The model's forward decay, copied rather than called: the arrays must apply what
        was learned before a rescale at the old scale, and only an independent copy of the
        dict version's order (bump, then rescale everything) can show that they do."""
        half_life = self.config.half_life_ms
        if half_life is None or ts_ms is None:
            return 1.0
        if self.landmark is None:
            self.landmark = ts_ms
        exponent = (ts_ms - self.landmark) / half_life
        if exponent > 200.0:
            factor = 2.0**-exponent
            self.latest_weight *= factor
            for table in (self.rules, self.pairs, self.covisits):
                for row in table.values():
                    for key in row:
                        row[key] *= factor
            self.item_counts = {k: v * factor for k, v in self.item_counts.items()}
            self.landmark = ts_ms
            exponent = 0.0
        weight = float(2.0**exponent)
        self.latest_weight = max(self.latest_weight, weight)
        return weight

    def learn_one(self, before: Sequence[str], item: str, ts_ms: float, visitor: str) -> None:
        config, keep = self.config, self.config.max_neighbours
        weight = self.weight(ts_ms)
        items = self.sessions.pop(visitor, ())
        if item not in items:
            for earlier in items:
                dict_bump(self.covisits, earlier, item, weight, keep)
                dict_bump(self.covisits, item, earlier, weight, keep)
            dict_bump(self.covisits, item, item, weight, keep)
            items = (*items, item)[-config.max_visitor_items :]
        self.sessions[visitor] = items
        self.item_counts[item] = self.item_counts.get(item, 0.0) + weight
        window = before[-config.steps :]
        for distance, previous in enumerate(reversed(window), start=1):
            dict_bump(self.rules, previous, item, 1.0 / distance * weight, keep)
            if previous == item:
                continue
            dict_bump(self.pairs, previous, item, weight, keep)
            dict_bump(self.pairs, item, previous, weight, keep)
        if len(self.item_counts) > 2 * config.max_items:  # the rarest items' rows go
            kept = dict(largest(self.item_counts.items(), config.max_items))
            self.item_counts = kept
            for table in (self.rules, self.pairs, self.covisits):
                for gone in [row for row in table if row not in kept]:
                    del table[gone]

    def votes(self, item: str, limit: int) -> list[tuple[str, float]]:
        out: dict[str, float] = {}
        row = self.rules.get(item)
        if row and max(row.values()) > 0.0:  # a row decayed to nothing votes for nothing
            peak = max(row.values())
            for candidate, value in row.items():
                out[candidate] = value / peak
        weight = self.config.symmetric_weight
        pairs = self.pairs.get(item)
        if weight > 0.0 and pairs:
            counts = self.item_counts
            sims = {b: both / math.sqrt(counts.get(b, 0.0) or 1e-9) for b, both in pairs.items()}
            peak = max(sims.values())
            for candidate, value in sims.items() if peak > 0.0 else ():
                out[candidate] = out.get(candidate, 0.0) + weight * value / peak
        return largest(out.items(), limit)

    def visitor_votes(self, item: str) -> list[tuple[str, float]]:
        row = self.covisits.get(item)
        if not row:
            return []
        visitors = row.get(item) or max(row.values())
        if visitors <= 0.0:
            return []
        factor = min(visitors / self.latest_weight, self.config.neighbour_cap) / visitors
        top = largest(row.items(), self.config.neighbour_votes_per_item)
        return [(candidate, count * factor) for candidate, count in top]


clicks = st.lists(
    st.tuples(
        st.sampled_from("uvwxy"),  # the visitor
        st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"),  # the item
        st.integers(0, 3),  # how far back the session goes
        st.sampled_from([0, 1, 60_000, 3_600_000, 400 * 72 * 3_600_000]),  # time step
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(
    clicks,
    st.sampled_from([1, 2, 3, 12, 100]),
    st.sampled_from([0.0, 0.1]),
    st.sampled_from([None, 72 * 3_600_000]),  # without decay, many values tie
    st.sampled_from([3, 8, 100_000]),  # few: the rarest items' rows are dropped
)
def test_the_array_tables_learn_and_vote_as_the_dicts_did(
    data: list[tuple[str, str, int, int]],
    keep: int,
    symmetric: float,
    half_life: int | None,
    max_items: int,
) -> None:
    """Rows (their order too: it decides ties), cut rows, rows of dropped rare items,
    rescaled time decay, rule votes, visitor votes and the materialised lists, against the
    dict version, exactly."""
    config = CooccurrenceConfig(
        max_neighbours=keep,
        symmetric_weight=symmetric,
        votes_per_item=4,
        neighbour_votes_per_item=3,
        max_visitor_items=30,
        vote_refresh=0.0,
        half_life_ms=half_life,
        max_items=max_items,
    )
    model, reference = CooccurrenceModel(config), DictModel(config)
    history: dict[str, list[str]] = {}
    ts = 1_000
    for visitor, item, back, step in data:
        ts += step
        seen = history.setdefault(visitor, [])
        before = seen[-back:] if back else []
        model.learn_one(before, item, ts, session_id=visitor)
        reference.learn_one(before, item, ts, visitor)
        seen.append(item)
    for table, expected in (
        (model.rules, reference.rules),
        (model.pairs, reference.pairs),
        (model.covisits, reference.covisits),
    ):
        assert {a: list(row.items()) for a, row in table.items()} == {
            a: list(row.items()) for a, row in expected.items()
        }
    assert model.item_counts == reference.item_counts
    for item in [*reference.item_counts, "never-seen"]:
        assert model.votes(item, 4) == reference.votes(item, 4)
        assert model.visitor_votes(item) == reference.visitor_votes(item)
        rules, visitors = model.vote_lists(item)
        assert list(rules.items()) == reference.votes(item, 4)
        assert list(visitors.items()) == reference.visitor_votes(item)


def test_a_row_moves_when_full_and_the_pool_is_compacted() -> None:
    """Growing rows leave garbage behind; compaction keeps every row and its order."""
    table = RowTable()
    table.ensure_rows(4)
    expected: Table = {}
    for step in range(200):
        row, col = step % 4, (step * 7) % 13
        table.ensure_space(64)
        bump(table.arrays(), row, col, 1.0 + step % 3, 5)
        dict_bump(expected, str(row), str(col), 1.0 + step % 3, 5)
    assert int(table.meta[1]) > 0  # rows moved
    before = [table.row(row) for row in range(4)]
    table.compact(1 << 10)
    assert [table.row(row) for row in range(4)] == before
    assert int(table.meta[1]) == 0 and int(table.meta[0]) == table.entries()
    for row in range(4):
        cols, vals = table.row(row)
        assert list(zip(map(str, cols), vals, strict=True)) == list(expected[str(row)].items())


def test_the_index_is_renumbered_keeping_what_is_referenced() -> None:
    """Past its limit the index keeps only the items something refers to; rows, columns,
    counts and cached vote lists follow the new numbering, so nothing a slate reads moves."""
    model = CooccurrenceModel(CooccurrenceConfig(max_items=1_000))
    for at in range(3):
        model.learn_one(["hub"] if at else [], f"kept{at}", session_id="v")
    before = {item: model.vote_lists(item) for item in ("hub", "kept1")}
    rules_before = {a: dict(row) for a, row in model.rules.items()}
    for at in range(4_100):  # only met (candidates), never learned: nothing refers to them
        model.intern(f"met{at}")
    generation = model.index_generation
    model.candidates_many([["hub"]])
    assert model.index_generation == generation + 1
    assert len(model.item_index) < 10
    assert {a: dict(row) for a, row in model.rules.items()} == rules_before
    assert {item: model.vote_lists(item) for item in ("hub", "kept1")} == before
    positions = np.array([model.item_index[name] for name in model.item_names])
    assert positions.tolist() == list(range(len(model.item_names)))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from([0.5, 1.0, 2.0])), min_size=40, max_size=400
    )
)
def test_a_long_row_is_cut_as_the_dict_was(bumps: list[tuple[int, float]]) -> None:
    """Rows cut past 2 * keep = 24 entries, values with many ties: the cut keeps the order
    they were added in among equals (numba's quicksort would not, past 16 entries)."""
    table = RowTable()
    table.ensure_rows(1)
    expected: Table = {}
    for col, amount in bumps:
        table.ensure_space(64)
        bump(table.arrays(), 0, col, amount, 12)
        dict_bump(expected, "row", str(col), amount, 12)
    cols, vals = table.row(0)
    assert list(zip(map(str, cols), vals, strict=True)) == list(expected.get("row", {}).items())


def test_learning_stops_where_the_pool_is_full_and_resumes_there() -> None:
    """``learn_clicks`` learns no click it might not have room for; resumed after the pool
    grew, the rows are those of learning everything in one go."""
    windows = np.array([0, 1, 2, 1, 2, 3, 2, 3, 4] * 20, dtype=np.int64)
    ends = np.arange(3, len(windows) + 1, 3, dtype=np.int64)
    items = np.array([(5 + at) % 9 for at in range(len(ends))], dtype=np.int64)
    weights = np.linspace(1.0, 2.0, len(ends))
    keep = 50

    def tables() -> tuple[RowTable, RowTable]:
        rules, pairs = RowTable(), RowTable()
        for table in (rules, pairs):
            table.ensure_rows(9)
            table.cols, table.vals = np.zeros(16, np.int64), np.zeros(16)  # a small pool
        return rules, pairs

    whole = tables()
    whole[0].ensure_space(len(ends) * space_for(3, keep))
    whole[1].ensure_space(len(ends) * space_for(6, keep))
    args = (windows, ends, items, weights, keep)
    assert learn_clicks(whole[0].arrays(), whole[1].arrays(), *args, 0) == len(ends)
    parts = tables()
    done, calls = 0, 0
    while done < len(ends):
        parts[0].ensure_space(space_for(3, keep))
        parts[1].ensure_space(space_for(6, keep))
        done = learn_clicks(parts[0].arrays(), parts[1].arrays(), *args, done)
        calls += 1
    assert calls > 1  # it stopped for room at least once
    for row in range(9):
        assert parts[0].row(row) == whole[0].row(row)
        assert parts[1].row(row) == whole[1].row(row)
