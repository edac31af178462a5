"""Co-occurrence model: symmetry, bounds, indices, and the next-click evaluator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel, _VoteArena
from processors.evaluation import evaluate_next_click
from processors.ranking import largest
from processors.slate_kernel import bridge_votes

sessions = st.lists(
    st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=12), min_size=1, max_size=20
)


def learn(model: CooccurrenceModel, data: list[list[str]]) -> None:
    for session in data:
        for position, item in enumerate(session):
            model.learn_one(session[:position], item)


def learn_visits(model: CooccurrenceModel, data: list[tuple[str, list[str]]]) -> None:
    """Each (visitor, session)'s clicks, learned with the visitor's id."""
    for visitor, session in data:
        for position, item in enumerate(session):
            model.learn_one(session[:position], item, session_id=visitor)


@settings(max_examples=150, deadline=None)
@given(sessions)
def test_symmetric_counts_stay_symmetric(data: list[list[str]]) -> None:
    model = CooccurrenceModel(CooccurrenceConfig(max_neighbours=100))
    learn(model, data)
    for a, row in model.pairs.items():
        for b, count in row.items():
            assert model.pairs[b][a] == count
            assert model.similarity(a, b, "cosine") == pytest.approx(
                model.similarity(b, a, "cosine")
            )
            assert model.similarity(a, b, "llr") >= 0.0


@settings(max_examples=100, deadline=None)
@given(sessions, st.randoms(use_true_random=False))
def test_session_order_does_not_change_counts(data: list[list[str]], rnd: object) -> None:
    first = CooccurrenceModel(CooccurrenceConfig(max_neighbours=100))
    learn(first, data)
    shuffled = list(data)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    second = CooccurrenceModel(CooccurrenceConfig(max_neighbours=100))
    learn(second, shuffled)
    assert first.pairs == second.pairs and first.item_counts == second.item_counts
    for a, row in first.rules.items():
        for b, value in row.items():
            assert math.isclose(second.rules[a][b], value)


def test_pruning_keeps_the_top_m_neighbours() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(max_neighbours=5, steps=1))
    for n in range(1, 40):
        for _ in range(n):
            model.learn_one(["hub"], f"i{n}")
    assert len(model.rules["hub"]) <= 10
    strongest = sorted(model.rules["hub"], key=model.rules["hub"].__getitem__)[-5:]
    assert set(strongest) == {f"i{n}" for n in range(35, 40)}


def test_rules_are_directional_and_weighted_by_distance() -> None:
    model = CooccurrenceModel(CooccurrenceConfig())
    learn(model, [["a", "b", "c"]])
    assert model.rules["a"] == {"b": 1.0, "c": 0.5}
    assert "a" not in model.rules.get("c", {})


def test_similarity_indices_follow_their_definitions() -> None:
    model = CooccurrenceModel(CooccurrenceConfig())
    learn(model, [["a", "b"], ["a", "b"], ["a", "c"], ["d"]])
    assert model.similarity("a", "b", "count") == 2
    assert model.similarity("a", "b", "jaccard") == pytest.approx(2 / (3 + 2 - 2))
    assert model.similarity("a", "b", "cosine") == pytest.approx(2 / math.sqrt(3 * 2))
    assert model.similarity("a", "b", "lift") == pytest.approx(2 * 7 / (3 * 2))  # 7 clicks
    assert model.similarity("a", "d", "llr") == 0.0


def test_cold_sessions_fall_back_to_popular_items() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(revisit_slots=0))
    learn(model, [["a", "b"], ["b"], ["b", "c"]])
    assert [item for item, _ in model.predict_one(["unknown"], k=2)] == ["b", "a"]


def test_items_the_session_viewed_keep_places_at_the_end_of_the_list() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(revisit_slots=2))
    history = [["a", "b"], ["a", "b"], ["a", "c"], ["x"], ["y"]] + [[f"p{i}"] * 3 for i in range(9)]
    learn(model, history)
    ranked = [item for item, _ in model.predict_one(["x", "y", "a"], k=8)]
    # without slots: b, c (a's votes), then popular fill a, b... ; the two most recent
    # session items that did not rank take the last two places
    assert ranked[:2] == ["b", "c"] and ranked[-2:] == ["y", "x"]
    no_slots = CooccurrenceModel(CooccurrenceConfig(revisit_slots=0))
    learn(no_slots, history)
    assert not {"x", "y"} & {item for item, _ in no_slots.predict_one(["x", "y", "a"], k=8)}


def test_streaming_mode_learns_test_clicks_after_predicting_them() -> None:
    train = [["a", "b"]]
    test = [["x", "y"], ["x", "y"]]
    static = evaluate_next_click(CooccurrenceModel(CooccurrenceConfig()), train, test, k=1)
    streaming = evaluate_next_click(
        CooccurrenceModel(CooccurrenceConfig()), train, test, k=1, streaming=True
    )
    assert static.hits == 0
    assert streaming.hits == 1  # only the second session can profit from the first


RSC15 = Path(__file__).resolve().parents[3] / "shared" / "data" / "rsc15-100k"


@pytest.mark.skipif(not RSC15.exists(), reason="shared/data/rsc15-100k not present")
def test_rsc15_next_click_beats_association_rules() -> None:
    from stream.datasets import read_session_rec

    train = read_session_rec(RSC15 / "train_full.tsv")
    test = read_session_rec(RSC15 / "test.tsv")
    result = evaluate_next_click(
        CooccurrenceModel(CooccurrenceConfig()), train, test, k=20, streaming=True
    )
    assert result.targets == 10_152
    # Reference on these files (shared/data/README.md): AR 0.6340 / 0.3279.
    assert result.hit_rate > 0.634 and result.mrr > 0.3279


def test_time_decay_lets_newer_evidence_win() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(half_life_ms=1000.0))
    for t in range(3):  # old habit: a -> b, three times
        model.learn_one(["a"], "b", ts_ms=float(t))
    model.learn_one(["a"], "c", ts_ms=5000.0)  # one new a -> c, five half-lives later
    assert model.predict_one(["a"], k=2)[0][0] == "c"
    undecayed = CooccurrenceModel(CooccurrenceConfig())
    for t in range(3):
        undecayed.learn_one(["a"], "b", ts_ms=float(t))
    undecayed.learn_one(["a"], "c", ts_ms=5000.0)
    assert undecayed.predict_one(["a"], k=2)[0][0] == "b"


def test_rare_items_are_dropped_beyond_the_item_cap() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(max_items=10))
    for i in range(100):
        model.learn_one(["hub"], f"i{i}")
    assert len(model.item_counts) <= 20
    assert len(model.rules) <= 20 and len(model.pairs) <= 20


def test_session_knn_votes_come_from_visitors_of_the_session_items() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(session_knn_weight=1.0, half_life_ms=None))
    for sid, session in {"s1": ["a", "b", "z"], "s2": ["a", "b", "y"], "s3": ["q", "r"]}.items():
        for position, item in enumerate(session):
            model.learn_one(session[:position], item, session_id=sid)
    votes = model.session_knn_votes(["a", "b"])
    assert votes["z"] == votes["y"] > 0 and "q" not in votes
    assert model.covisits["a"]["z"] == model.covisits["z"]["a"] == 1.0
    assert model.covisits["a"]["a"] == 2.0  # a's visitors
    assert list(model.sessions["s3"]) == ["q", "r"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6), max_size=12),
    st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=5),
)
def test_session_knn_votes_equal_scoring_every_visitor(
    visits: list[list[str]], session: list[str]
) -> None:
    """The materialised co-visitation lists give what session-kNN without a top-N cut
    gives: every past visitor, weighted by the position weights of the session's last 3
    items it viewed, votes for each item it viewed."""
    config = CooccurrenceConfig(
        half_life_ms=None, neighbour_cap=1e9, vote_refresh=0.0, max_visitor_items=100
    )
    model = CooccurrenceModel(config)
    for visitor, items in enumerate(visits):
        for position, item in enumerate(items):
            model.learn_one(items[:position], item, session_id=f"v{visitor}")
    weights: dict[str, float] = {}
    for places_back, item in enumerate(reversed(session[-3:])):
        weights.setdefault(item, math.exp(-places_back))
    expected: dict[str, float] = {}
    for items in visits:
        similarity = sum(w for item, w in weights.items() if item in items)
        for item in set(items) if similarity else ():
            expected[item] = expected.get(item, 0.0) + similarity
    votes = model.session_knn_votes(session)
    assert votes.keys() == expected.keys()
    for item, vote in votes.items():
        assert math.isclose(vote, expected[item], rel_tol=1e-9)


def test_a_popular_items_visitor_votes_are_capped() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(half_life_ms=None, neighbour_cap=10.0))
    for visitor in range(100):
        model.learn_one([], "hot", session_id=f"h{visitor}")
        model.learn_one(["hot"], "x" if visitor % 2 else "y", session_id=f"h{visitor}")
    model.learn_one([], "rare", session_id="r")
    model.learn_one(["rare"], "z", session_id="r")
    hot = model.visitor_votes("hot")
    assert dict(hot)["hot"] == 10.0 and dict(hot)["x"] == 5.0  # shares of 10, not of 100
    assert dict(model.visitor_votes("rare"))["z"] == 1.0


def test_vote_lists_are_rebuilt_once_the_item_has_grown_by_the_refresh_share() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(half_life_ms=None, vote_refresh=0.5))
    for _ in range(4):
        model.learn_one([], "a")
        model.learn_one(["a"], "b")
    assert model.vote_lists("a")[0] == {"b": 1.1}  # rule 1 + 0.1 x cosine 1
    model.learn_one([], "a")
    model.learn_one(["a"], "c")  # a: 4 -> 5 clicks, within the refresh share
    assert "c" not in model.vote_lists("a")[0]  # stale
    model.learn_one([], "a")  # 6 = 4 x 1.5: still within
    assert "c" not in model.vote_lists("a")[0]
    model.learn_one([], "a")  # 7 > 6: rebuilt
    assert "c" in model.vote_lists("a")[0]


def test_session_memory_is_bounded() -> None:
    model = CooccurrenceModel(
        CooccurrenceConfig(session_knn_weight=1.0, max_sessions=10, max_neighbours=10)
    )
    for sid in range(100):
        model.learn_one([], "hot", session_id=f"s{sid}")
        model.learn_one(["hot"], f"item{sid}", session_id=f"s{sid}")
    assert len(model.sessions) <= 11
    assert len(model.covisits["hot"]) <= 20


def test_visitor_memory_keeps_the_latest_items_and_the_most_recently_active_visitors() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(max_sessions=3, max_visitor_items=4))
    for i in range(10):
        model.learn_one([], f"i{i}", session_id="loyal")
    assert list(model.sessions["loyal"]) == ["i6", "i7", "i8", "i9"]
    model.learn_one([], "x", session_id="v1")
    model.learn_one([], "x", session_id="v2")
    model.learn_one([], "i9", session_id="loyal")  # active again: not the one forgotten
    model.learn_one([], "x", session_id="v3")
    assert set(model.sessions) == {"v2", "loyal", "v3"}
    assert model.size() >= sum(len(items) for items in model.sessions.values())


@settings(deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.integers(0, 7), st.integers(0, 9)),  # visitor views item
            st.tuples(st.just(-1), st.integers(0, 7)),  # forget visitor
        ),
        max_size=120,
    )
)
def test_the_remembered_visitor_items_count_is_what_the_visitors_hold(
    steps: list[tuple[int, int]],
) -> None:
    """The size gauge's count of visitor items, kept as visitors come, are capped, evicted
    and forgotten, always equals the items they hold."""
    model = CooccurrenceModel(CooccurrenceConfig(max_sessions=4, max_visitor_items=3))
    for visitor, item in steps:
        if visitor < 0:
            model.forget_visitors(lambda v, gone=f"v{item}": v == gone)
        else:
            model.learn_one([], f"i{item}", session_id=f"v{visitor}")
        held = sum(len(items) for items in model.sessions.values())
        assert model.remembered_visitor_items == held


def test_the_second_hop_reaches_what_follows_the_candidates() -> None:
    history = [["a", "b"], ["a", "b"], ["b", "c"], ["x", "y"]]
    one_hop = CooccurrenceModel(CooccurrenceConfig(bridge_weight=0.0))
    two_hops = CooccurrenceModel(CooccurrenceConfig(bridge_weight=1.0))
    learn(one_hop, history)
    learn(two_hops, history)
    assert "c" not in one_hop.candidates(["a"])
    sources = two_hops.vote_sources(["a"])
    scores = two_hops.candidates(["a"], sources)
    assert scores["c"] > 0.0 and "y" not in scores
    assert sources.strongest("c") is None and sources.bridge("c") == "b"
    assert sources.strongest("b") == "a"


@settings(max_examples=150, deadline=None)
@given(sessions, st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6))
def test_the_second_hop_keeps_the_first_hops_head_in_order(
    data: list[list[str]], session: list[str]
) -> None:
    keep = 3
    one_hop = CooccurrenceModel(CooccurrenceConfig(bridge_weight=0.0))
    two_hops = CooccurrenceModel(CooccurrenceConfig(bridge_weight=2.0, bridge_keep=keep))
    learn(one_hop, data)
    learn(two_hops, data)
    first, second = one_hop.candidates(session), two_hops.candidates(session)
    assert set(first) <= set(second)

    def best(scores: dict[str, float], n: int) -> list[str]:
        return sorted(scores, key=lambda item: (-scores[item], item))[:n]

    head = best(first, keep)
    # the same first-hop scores in the same order (which of two tied items is kept is free;
    # two scores an ulp apart can tie once lifted: lift + score rounds them together)
    assert [first.get(item) for item in best(second, len(head))] == pytest.approx(
        [first[i] for i in head], rel=1e-12, abs=0.0
    )


visited = st.lists(
    st.tuples(st.sampled_from("uvw"), st.lists(st.sampled_from("abcdefgh"), max_size=8)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    visited,
    st.lists(st.lists(st.sampled_from("abcdefghz"), max_size=6), min_size=1, max_size=8),
    st.integers(0, 4),
    st.integers(0, 4),
    st.sampled_from([0.0, 1.0]),
)
def test_candidates_many_equals_candidates_one_session_at_a_time(
    data: list[tuple[str, list[str]]],
    batch: list[list[str]],
    bridge_items: int,
    bridge_keep: int,
    knn_weight: float,
) -> None:
    # A small alphabet makes tied scores common: bridges must be chosen as the dict path
    # chooses them (first met), and sums must be added in the same order (bit for bit).
    model = CooccurrenceModel(
        CooccurrenceConfig(
            bridge_items=bridge_items,
            bridge_keep=bridge_keep,
            session_knn_weight=knn_weight,
            votes_per_item=3,
            bridge_votes=2,
        )
    )
    learn_visits(model, data)
    many = model.candidates_many(batch)
    for position, session in enumerate(batch):
        sources = model.vote_sources(session)
        assert many.scores_of(position, model.item_names) == model.candidates(session, sources)
        bridges = many.with_bridges(position, model).bridges
        assert [(b, w) for b, w, _ in bridges] == [(b, w) for b, w, _ in sources.bridges]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            visited,
            st.lists(st.lists(st.sampled_from("abcdefghz"), max_size=6), min_size=1, max_size=5),
        ),
        min_size=2,
        max_size=6,
    ),
    st.sampled_from([0.0, 0.1, 1.0]),
    st.sampled_from([0, 1 << 16]),
    st.sampled_from([None, 3]),
)
def test_the_vote_arena_kept_across_batches_serves_what_candidates_reads(
    batches: list[tuple[list[tuple[str, list[str]]], list[list[str]]]],
    vote_refresh: float,
    compact_after: int,
    max_items: int | None,
) -> None:
    """Learning between batches outgrows some items' lists (their rows are dropped and made
    again), items never clicked have rows for one batch only, dropped rows are compacted
    away (``compact_after`` 0: every batch), rare items are dropped (``max_items``): each
    batch's candidates still equal ``candidates`` bit for bit."""
    model = CooccurrenceModel(
        CooccurrenceConfig(
            bridge_items=2,
            bridge_keep=1,
            session_knn_weight=1.0,
            votes_per_item=3,
            bridge_votes=2,
            vote_refresh=vote_refresh,
            max_items=max_items or 100_000,
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_VoteArena, "compact_after_entries", compact_after)
        for data, batch in batches:
            learn_visits(model, data)
            many = model.candidates_many(batch)
            for position, session in enumerate(batch):
                expected = model.candidates(session)
                assert many.scores_of(position, model.item_names) == expected


def test_the_item_index_is_rebuilt_past_its_cap_and_the_scores_stay() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(max_items=10))
    learn(model, [["a", "b", "c"], ["a", "b", "d"], ["b", "c", "a"]])
    before = model.candidates_many([["a", "b"]]).scores_of(0, model.item_names)
    for n in range(5_000):  # what a long run of other items leaves in the index
        model.item_index[f"old{n}"] = len(model.item_names)
        model.item_names.append(f"old{n}")
    after = model.candidates_many([["a", "b"]])
    assert len(model.item_names) < 100
    assert after.scores_of(0, model.item_names) == before == model.candidates(["a", "b"])


def passed_on_by_definition(
    lists: tuple[dict[str, float], ...], limit: int
) -> list[tuple[str, float]]:
    """What a bridge passes on (``CooccurrenceConfig.bridge_votes``), as a dict sum."""
    summed: dict[str, float] = {}
    for votes in lists:
        if votes:
            peak = max(votes.values())
            for candidate, vote in votes.items():
                summed[candidate] = summed.get(candidate, 0.0) + vote / peak
    return largest(summed.items(), limit)


# up to 60 distinct items with few distinct votes: many ties, past insertion-sort sizes
vote_maps = st.dictionaries(
    st.sampled_from([f"i{n}" for n in range(60)]),
    st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0, 1e-3]),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(vote_maps, vote_maps, st.integers(0, 50))
def test_the_bridge_kernel_sums_and_ranks_as_the_dicts_do(
    rules: dict[str, float], visitors: dict[str, float], limit: int
) -> None:
    """Ties (the values repeat) keep the order met; an item in both lists sums its shares."""
    names = sorted(set(rules) | set(visitors), key=lambda name: (name * 7)[::-1])
    index = {name: at for at, name in enumerate(names)}
    items = np.array([index[name] for name in [*rules, *visitors]], dtype=np.int64)
    votes = np.array([*rules.values(), *visitors.values()], dtype=np.float64)
    scratch = np.full(len(names) + 1, -1, dtype=np.int64)
    chosen, shares = bridge_votes(items, votes, len(rules), limit, scratch)
    got = list(zip([names[at] for at in chosen.tolist()], shares.tolist(), strict=True))
    assert got == passed_on_by_definition((rules, visitors), limit)
    assert (scratch == -1).all()  # left clean for the next call


@settings(max_examples=100, deadline=None)
@given(visited)
def test_every_items_materialised_lists_and_arrays_agree(
    data: list[tuple[str, list[str]]],
) -> None:
    """The bridge votes are the definition's over the item's rule and visitor votes, and the
    arrays the vote arena copies hold the same three lists over the item index."""
    model = CooccurrenceModel(
        CooccurrenceConfig(votes_per_item=4, neighbour_votes_per_item=3, bridge_votes=3)
    )
    learn_visits(model, data)
    for item in sorted(model.item_counts):
        model._vote_lists.pop(item, None)  # built now, with its arrays
        built, (candidates, votes, (a, b, c, d)) = model.vote_arrays(item)
        _, rules, visitors, bridges = built.lists(model.item_names)
        assert list(bridges.items()) == passed_on_by_definition((rules, visitors), 3)
        names = [model.item_names[at] for at in candidates.tolist()]
        for kind, start, end in ((rules, a, b), (visitors, b, c), (bridges, c, d)):
            assert list(zip(names[start:end], votes[start:end].tolist(), strict=True)) == list(
                kind.items()
            )
        cached = model.vote_arrays(item)  # from the cached lists: the same arrays
        assert cached[0] is built
        assert cached[1][0].tolist() == candidates.tolist()
        assert cached[1][1].tolist() == votes.tolist() and cached[1][2] == (a, b, c, d)


@settings(max_examples=80, deadline=None)
@given(
    sessions,
    st.lists(st.sampled_from("abcdefgh"), max_size=12),
    st.sampled_from([(5, 1.0, 0.3), (2, 1.0, 0.3), (5, None, 0.3), (0, 1.0, 0.0), (1, 2.0, 0.3)]),
)
def test_a_sessions_window_decides_its_candidates_and_sources(
    data: list[list[str]],
    session: list[str],
    shape: tuple[int, float | None, float],
) -> None:
    """``session_window``: the session's last items that far back give the same candidates
    (bit for bit) and vote sources as the whole session; None when the neighbour weights
    depend on the session's length."""
    recent_items, position_decay, knn_weight = shape
    model = CooccurrenceModel(
        CooccurrenceConfig(
            recent_items=recent_items,
            session_knn_position_decay=position_decay,
            session_knn_weight=knn_weight,
        )
    )
    learn(model, data)
    learn_visits(model, [(f"v{at}", items) for at, items in enumerate(data)])
    window = model.session_window
    if position_decay is None and knn_weight > 0.0:
        assert window is None
        return
    assert window is not None and window >= 1
    tail = session[-window:]
    assert model.candidates(tail) == model.candidates(session)
    assert model.vote_sources(tail) == model.vote_sources(session)
