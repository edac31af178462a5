"""Per-user state: dedup, bounded history, monotonic replay-stable version, codec."""

from __future__ import annotations

import random
import uuid

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.events import Click, PageView
from processors.user_state import (
    HASHED_ID_LENGTH,
    UserState,
    UserStateConfig,
    apply_event,
    decode_user_state,
    dedup_key,
    dedup_slack,
    encode_user_state,
    segment_of,
)
from state.records import pack_user_state

CONFIG = UserStateConfig(history_size=5, dedup_max_ids=8, dedup_window_ms=10_000)


def click(i: int, ts: int, item: str = "r1", category: str = "pasta") -> Click:
    return Click(
        event_id=f"e{i}", ts=ts, user_id="u", item_id=item, item_type="recipe", category=category
    )


def test_history_is_bounded_and_keeps_the_newest() -> None:
    state = UserState(user_id="u", partition=0)
    for i in range(20):
        apply_event(state, click(i, 1000 + i, item=f"r{i}"), CONFIG)
    assert [item.item_id for item in state.recent] == [f"r{i}" for i in range(15, 20)]


def test_dedup_memory_is_bounded() -> None:
    state = UserState(user_id="u", partition=0)
    for i in range(100):
        apply_event(state, click(i, 1000 + i * 1000), CONFIG)
    assert len(state.seen_event_ids) <= 2 * CONFIG.dedup_max_ids


def test_a_user_past_the_dedup_cap_keeps_the_newest_ids_and_is_pruned_once_per_slack() -> None:
    """A user sending more ids than the window holds (a bot, a shared anonymous id): every
    one of the newest ``dedup_max_ids`` ids is still a duplicate after each event, the window
    never holds more than ``dedup_slack`` extra, and it is rebuilt once per ``dedup_slack``
    events, not on every event (each rebuild sorts the whole window)."""
    state = UserState(user_id="u", partition=0)
    cap, slack = CONFIG.dedup_max_ids, dedup_slack(CONFIG.dedup_max_ids)
    rebuilds, window = 0, state.seen_event_ids
    events = [click(i, 1_000 + i) for i in range(100)]  # all inside the 10 s window
    for at, event in enumerate(events):
        assert apply_event(state, event, CONFIG)
        assert len(state.seen_event_ids) <= cap + slack
        rebuilds += state.seen_event_ids is not window
        window = state.seen_event_ids
        for newest in events[max(0, at + 1 - cap) : at + 1]:
            assert dedup_key(newest.event_id) in state.seen_event_ids
    assert rebuilds == (100 - cap) // (slack + 1)


def uuid_click(i: int) -> Click:
    """A click whose id is a (seeded) random UUID, as a website's SDK would send."""
    event_id = str(uuid.UUID(int=random.Random(i).getrandbits(128), version=4))
    return Click(event_id=event_id, ts=1_000 + i, user_id="u", item_id="r1", item_type="recipe")


def test_long_event_ids_are_held_as_a_hash_and_still_deduplicate() -> None:
    state = UserState(user_id="u", partition=0)
    assert apply_event(state, click(1, 1_000), CONFIG)  # "e1": short, held as itself
    assert apply_event(state, uuid_click(2), CONFIG)
    assert set(state.seen_event_ids) == {"e1", dedup_key(uuid_click(2).event_id)}
    assert isinstance(dedup_key(uuid_click(2).event_id), int)
    assert len(uuid_click(2).event_id) > HASHED_ID_LENGTH
    version = state.version
    assert not apply_event(state, uuid_click(2), CONFIG)  # redelivered: a duplicate
    assert not apply_event(decode_user_state(encode_user_state(state)), uuid_click(2), CONFIG)
    assert state.version == version


def test_a_record_holding_a_long_id_itself_still_deduplicates_it() -> None:
    """States written before long ids were hashed hold them as strings."""
    event = uuid_click(3)
    state = UserState(user_id="u", partition=0, seen_event_ids={event.event_id: event.ts})
    assert not apply_event(decode_user_state(encode_user_state(state)), event, CONFIG)


def test_hashed_ids_make_the_state_record_smaller() -> None:
    config = UserStateConfig()
    state = UserState(user_id="u", partition=0)
    for i in range(40):
        apply_event(state, uuid_click(i), config)
    as_strings = msgspec.structs.replace(
        state, seen_event_ids={uuid_click(i).event_id: 1_000 + i for i in range(40)}
    )
    # ~14 bytes less per id, compressed (678 against 1,226 bytes here)
    assert len(pack_user_state(state)) < len(pack_user_state(as_strings)) - 40 * 10


def test_late_event_still_advances_the_version() -> None:
    state = UserState(user_id="u", partition=0)
    apply_event(state, click(1, 5000), CONFIG)
    first = state.version
    apply_event(state, click(2, 4000), CONFIG)
    assert state.version > first
    assert state.max_ts == 5000


def test_sessions_split_on_the_inactivity_gap() -> None:
    state = UserState(user_id="u", partition=0)
    gap = CONFIG.session_gap_ms
    for i, ts in enumerate([0, 60_000, 60_000 + gap + 1, 60_000 + 2 * gap + 2]):
        apply_event(state, PageView(event_id=f"p{i}", ts=ts + 1, user_id="u"), CONFIG)
    assert state.sessions == 3


event_times = st.lists(st.integers(min_value=1, max_value=10**7), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(event_times, st.randoms(use_true_random=False))
def test_version_never_decreases_and_replays_change_nothing(times: list[int], rnd: object) -> None:
    events = [click(i, ts) for i, ts in enumerate(times)]
    state = UserState(user_id="u", partition=0)
    versions = []
    for event in events:
        apply_event(state, event, UserStateConfig())
        versions.append(state.version)
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)  # strictly increasing: every event is visible
    snapshot = encode_user_state(state)
    replay = list(events)
    rnd.shuffle(replay)  # type: ignore[attr-defined]
    for event in replay:
        assert apply_event(state, event, UserStateConfig()) is False
    assert encode_user_state(state) == snapshot


@settings(max_examples=100, deadline=None)
@given(event_times)
def test_codec_round_trips(times: list[int]) -> None:
    state = UserState(user_id="u", partition=3)
    for i, ts in enumerate(times):
        apply_event(state, click(i, ts, item=f"r{i % 7}", category=f"c{i % 3}"), CONFIG)
    assert decode_user_state(encode_user_state(state)) == state


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([None, "mobile", "desktop", "", "a-b"]),
    st.sampled_from([None, "free", "pro"]),
    st.sampled_from(["chrome", None]),
    st.sampled_from(
        [("device", "plan"), ("plan",), ("device", "browser", "plan"), ("plan", "unknown"), ()]
    ),
)
def test_segment_of_joins_the_fields_as_the_plain_formula(
    device: str | None, plan: str | None, browser: str | None, fields: tuple[str, ...]
) -> None:
    """The cached getters and strings give what ``"-".join(...)`` over ``getattr`` gives,
    fields unknown to events and empty strings included; a list field is joined, not kept."""
    event = PageView(
        event_id="e", ts=0, user_id="u", device=device, plan=plan, browser=browser, tags=["x"]
    )
    plain = "-".join(str(getattr(event, name, None) or "na") for name in fields)
    assert segment_of(event, fields) == plain
    assert segment_of(event, ("tags", "plan")) == f"['x']-{plan or 'na'}"
