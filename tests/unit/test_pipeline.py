"""The slice: coalescing, exclusion of seen items, fallbacks, replay idempotence."""

from __future__ import annotations

import pytest

from processors.events import Click, Impression, PageView
from processors.pipeline import SliceConfig, SliceProcessor
from processors.simulator import SimulationConfig, TrafficModel
from processors.user_state import UserState


def test_one_slate_per_user_per_batch_reflecting_the_whole_batch() -> None:
    processor = SliceProcessor(SliceConfig())
    events = [
        Click(
            event_id=f"e{i}",
            ts=1000 + i,
            user_id="u1",
            item_id=f"r{i}",
            item_type="recipe",
            category="pasta",
        )
        for i in range(30)
    ]
    result = processor.process_batch([(2, e) for e in events], {}, now_ms=5000)
    assert list(result.slates) == ["u1"]
    assert result.touched["u1"].partition == 2
    assert result.slates["u1"]["recipes"].version == result.touched["u1"].version
    assert result.applied_by_type["click"] == 30


def test_slate_excludes_seen_items_and_follows_interest() -> None:
    processor = SliceProcessor(SliceConfig())
    others = [
        Click(
            event_id=f"o{i}",
            ts=1000,
            user_id=f"x{i}",
            item_id=item,
            item_type="recipe",
            category=category,
        )
        for i, (item, category) in enumerate(
            [("p1", "pasta"), ("p2", "pasta"), ("p2", "pasta"), ("s1", "soup"), ("s1", "soup")]
        )
    ]
    states: dict[str, UserState] = {}
    processor.process_batch([(0, e) for e in others], states, now_ms=2000)
    mine = Click(
        event_id="m1", ts=1500, user_id="me", item_id="p1", item_type="recipe", category="pasta"
    )
    slate = processor.process_batch([(0, mine)], states, now_ms=2000).slates["me"]["recipes"]
    ids = [item.id for item in slate.items]
    assert "p1" not in ids  # seen
    assert ids[0] == "p2"  # popular in the user's category beats globally popular s1
    assert slate.items[0].reason == "popular in pasta"
    assert "s1" in ids and slate.items[ids.index("s1")].reason == "trending now"


def test_banner_and_page_events_do_not_enter_recipe_history() -> None:
    processor = SliceProcessor(SliceConfig())
    events = [
        Impression(event_id="i1", ts=1000, user_id="u", item_id="b1"),
        PageView(event_id="p1", ts=1001, user_id="u", item_id="home", item_type="page"),
    ]
    result = processor.process_batch([(0, e) for e in events], {}, now_ms=2000)
    assert result.touched["u"].recent == []
    assert result.touched["u"].events_applied == 2


def test_replaying_a_batch_touches_nobody() -> None:
    model = TrafficModel(SimulationConfig(seed=5), start_ms=0)
    events = [e for _, e in zip(range(2000), model.events(), strict=False)]
    processor = SliceProcessor(SliceConfig())
    states: dict[str, UserState] = {}
    first = processor.process_batch([(0, e) for e in events], states, now_ms=10**9)
    states.update(first.touched)
    again = processor.process_batch([(0, e) for e in events], states, now_ms=10**9)
    assert again.touched == {} and again.slates == {}
    assert again.duplicates == len(events)


def test_batching_does_not_change_final_versions() -> None:
    model = TrafficModel(SimulationConfig(seed=9), start_ms=0)
    events = [e for _, e in zip(range(3000), model.events(), strict=False)]

    def final_versions(batch_size: int) -> dict[str, int]:
        processor = SliceProcessor(SliceConfig())
        states: dict[str, UserState] = {}
        for i in range(0, len(events), batch_size):
            chunk = [(0, e) for e in events[i : i + batch_size]]
            states.update(processor.process_batch(chunk, states, now_ms=10**9).touched)
        return {u: s.version for u, s in states.items()}

    assert final_versions(1) == final_versions(97) == final_versions(3000)


def _recipe_click(event_id: str, user: str, item: str, ts: int) -> Click:
    return Click(
        event_id=event_id, ts=ts, user_id=user, item_id=item, item_type="recipe", category="c"
    )


def _slate_after_neighbour_visits(scope: str) -> list[tuple[str, str]]:
    from processors.recommend import AssemblyConfig

    processor = SliceProcessor(SliceConfig(assembly=AssemblyConfig(neighbour_scope=scope)))  # type: ignore[arg-type]
    hour = 3_600_000
    # "a" viewed r1, then r9 in a later session: no co-occurrence window links them.
    history = [_recipe_click("a1", "a", "r1", 0), _recipe_click("a2", "a", "r9", 2 * hour)]
    history += [_recipe_click(f"p{i}", f"x{i}", "pop", hour) for i in range(5)]
    states: dict[str, UserState] = {}
    processor.process_batch([(0, e) for e in history], states, now_ms=3 * hour)
    mine = _recipe_click("m1", "me", "r1", 3 * hour)
    slate = processor.process_batch([(0, mine)], states, now_ms=3 * hour).slates["me"]["recipes"]
    return [(item.id, item.reason) for item in slate.items]


def test_user_neighbours_recommend_what_a_co_visitor_viewed_in_another_session() -> None:
    slate = _slate_after_neighbour_visits("user")
    assert slate[0] == ("r9", "visitors who viewed r1 also viewed it")


def test_session_neighbours_only_link_items_of_one_session() -> None:
    assert "r9" not in [item for item, _ in _slate_after_neighbour_visits("session")[:1]]


def test_scoring_loyalty_once_per_user_per_batch_equals_scoring_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slice scores a user's loyalty for their last event of the batch only (and for an
    earlier one when a later event needs it: a new session, a late event). With trained
    models (so scores move with every feature), the states, served scores and resolved
    labels equal those of scoring every event."""
    import msgspec

    import processors.pipeline as pipeline
    from processors.loyalty import LoyaltyConfig, context_of, observe, signals_of

    # Sessions end after 20 s of silence and returns are due within a minute, so the
    # simulator's minutes of traffic resolve labels (a return, a new session, an expiry).
    config = SliceConfig(
        loyalty=LoyaltyConfig(
            session_gap_ms=20_000, return_horizon_ms=60_000, recency_checkpoints_hours=(0,)
        )
    )
    model = TrafficModel(SimulationConfig(seed=3), start_ms=0)
    events = [e for _, e in zip(range(6000), model.events(), strict=False)]
    warmup, rest = events[:2000], events[2000:]
    trainer = SliceProcessor(config)
    states: dict[str, UserState] = {}
    examples = []
    for i in range(0, len(warmup), 500):
        result = trainer.process_batch([(0, e) for e in warmup[i : i + 500]], states, 10**12)
        states.update(result.touched)
        examples += result.resolved
    assert len(examples) > 100

    def run(every_event: bool) -> tuple[dict[str, bytes], list[bytes]]:
        if every_event:  # the reference: observe scores each event itself, as it did before
            monkeypatch.setattr(pipeline, "score", lambda *_: None)
            monkeypatch.setattr(
                pipeline,
                "observe_event",
                lambda state, event, config, models: observe(
                    state, event.ts, context_of(event), signals_of(event), config, models
                ),
            )
        processor = SliceProcessor(config)
        for example in examples:
            processor.loyalty.learn(example)
        user_states = {u: msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=UserState)
                       for u, s in states.items()}  # fmt: skip
        resolved: list[bytes] = []
        for i in range(0, len(rest), 500):
            chunk = [(0, e) for e in rest[i : i + 500]]
            result = processor.process_batch(chunk, user_states, 10**12)
            user_states.update(result.touched)
            resolved += [msgspec.msgpack.encode(example) for example in result.resolved]
        monkeypatch.undo()
        loyalty = {u: msgspec.msgpack.encode(s.loyalty) for u, s in user_states.items()}
        return loyalty, resolved

    batched, every = run(every_event=False), run(every_event=True)
    assert batched[0] == every[0]
    assert batched[1] == every[1] and len(batched[1]) > 100
    scores = {msgspec.msgpack.decode(b)["return_probability"] for b in batched[0].values()}
    assert len(scores) > 10  # the trained models do score users differently


def test_a_clock_times_every_phase_once_per_batch_and_changes_no_result() -> None:
    """Given a clock, a batch reports the time of each of ``SLICE_PHASES`` (one lap each, in
    order); without one it reports none; the slates, profiles and states are the same."""
    from collections.abc import Callable

    import msgspec

    from processors.pipeline import SLICE_PHASES
    from processors.slates import encode_slate

    model = TrafficModel(SimulationConfig(seed=5), start_ms=0)
    events = [(0, e) for _, e in zip(range(1500), model.events(), strict=False)]

    def run(clock: Callable[[], float] | None) -> tuple[list[dict[str, float]], list[bytes]]:
        processor = SliceProcessor(SliceConfig())
        for record in model.catalog_records():
            processor.apply_catalog(record)
        states: dict[str, UserState] = {}
        phases, outputs = [], []
        for i in range(0, len(events), 500):
            result = processor.process_batch(events[i : i + 500], states, 10**12, clock)
            states.update(result.touched)
            phases.append(result.phase_seconds)
            outputs.append(
                msgspec.msgpack.encode(
                    (
                        {u: {k: encode_slate(s) for k, s in v.items()}
                         for u, v in result.slates.items()},
                        result.profiles,
                        result.touched,
                    )
                )
            )  # fmt: skip
        return phases, outputs

    ticks = iter(range(10**6))
    timed_phases, timed = run(lambda: float(next(ticks)))
    untimed_phases, untimed = run(None)
    assert timed == untimed
    assert untimed_phases == [{}, {}, {}]
    assert timed_phases == [dict.fromkeys(SLICE_PHASES, 1.0)] * 3
    assert any("banners" in slates for slates in msgspec.msgpack.decode(timed[-1])[0].values())


def test_the_next_click_models_learning_is_timed_as_its_own_phase() -> None:
    """The clicks the events queued are learned in the "learn" phase, right after "apply",
    not at the slates' first read of the model (whose time would then include it)."""
    from processors.pipeline import SLICE_PHASES

    model = TrafficModel(SimulationConfig(seed=5), start_ms=0)
    events = [(0, e) for _, e in zip(range(500), model.events(), strict=False)]
    processor = SliceProcessor(SliceConfig())
    pending: list[int] = []  # the model's queued clicks at each reading of the clock

    def clock() -> float:
        pending.append(processor.cooccurrence.pending_clicks())
        return float(len(pending))

    processor.process_batch(events, {}, 10**12, clock)
    at_lap = dict(zip(SLICE_PHASES, pending[1:], strict=True))  # the first reading: the start
    assert at_lap["apply"] > 0
    assert at_lap["learn"] == 0


def _reachable_structs_acyclic(root: object) -> list[object]:
    """Every msgspec struct reachable from ``root`` through struct fields, lists, tuples and
    dicts; fails if a path comes back to an object already on it (a reference cycle)."""
    import msgspec

    found: list[object] = []

    def visit(value: object, path: set[int]) -> None:
        if id(value) in path:
            raise AssertionError(f"a reference cycle through {type(value).__name__}")
        if isinstance(value, msgspec.Struct):
            found.append(value)
            children: list[object] = [getattr(value, f) for f in value.__struct_fields__]
        elif isinstance(value, list | tuple):
            children = list(value)
        elif isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        else:
            return
        path.add(id(value))
        for child in children:
            visit(child, path)
        path.discard(id(value))

    visit(root, set())
    return found


def test_user_states_profiles_and_labels_are_acyclic_and_not_tracked_by_the_collector() -> None:
    """The structs a batch makes per user (states and what they hold, profiles, resolved
    labels) are ``gc=False``: the cyclic collector neither tracks nor scans them (a gen-0
    collection scanned ~80,000 young objects per batch of site-paced traffic, ~100 ms each,
    docs/benchmarks.md). That is only sound while they hold no reference cycle: checked here
    on states that have been through sessions, loyalty labels and banner events."""
    import gc

    model = TrafficModel(SimulationConfig(seed=5), start_ms=0)
    events = [e for _, e in zip(range(4000), model.events(), strict=False)]
    processor = SliceProcessor(SliceConfig())
    for record in model.catalog_records():
        processor.apply_catalog(record)
    states: dict[str, UserState] = {}
    results = []
    for i in range(0, len(events), 500):
        chunk = [(0, e) for e in events[i : i + 500]]
        result = processor.process_batch(chunk, states, now_ms=10**12)
        states.update(result.touched)
        results.append(result)
    # an event 90 days on: the watermark passes every pending label's horizon (resolved)
    late = PageView(event_id="late", ts=events[-1].ts + 90 * 86_400_000, user_id="z", category="c")
    results.append(processor.process_batch([(0, late)], states, now_ms=10**12))
    states.update(results[-1].touched)
    structs = [s for state in states.values() for s in _reachable_structs_acyclic(state)]
    structs += [p for r in results for p in r.profiles.values()]
    structs += [e for r in results for e in r.resolved]
    kinds = {type(s).__name__ for s in structs}
    assert {"UserState", "LoyaltyState", "PendingLabel", "DecayedCounter", "RecentItem"} <= kinds
    assert {"Profile", "ResolvedExample"} <= kinds
    assert [type(s).__name__ for s in structs if gc.is_tracked(s)] == []
    for result in results:
        for profile in result.profiles.values():
            _reachable_structs_acyclic(profile)
