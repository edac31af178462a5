"""The worker's user-state store: encoded in memory, in-flight states visible, changelog kept.

The changelog writer and reader here are in-memory stand-ins for our own two protocols; the
integration tests (crash-resume, rebalance, forget) run the store against the real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from processors.events import Click
from processors.user_state import UserState, UserStateConfig, apply_event, encode_user_state
from state import records
from state.records import ZSTD_MAGIC, pack_user_state, unpack_user_state
from state.tables import MARKER_KEY, PARTITION_SLOTS, UserStateStore, _where

TOPIC = "test-user-state-changelog"


@dataclass
class Record:
    key: bytes | None
    value: bytes | None


class Changelog:
    """Appends what the store sends; replays a partition as a reader would."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[Record]] = {}

    def send(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.partitions.setdefault(partition, []).append(Record(key, value))

    async def send_many(self, records: Sequence[tuple[bytes, bytes | None, int]]) -> None:
        for key, value, partition in records:
            self.send(key, value, partition)

    async def send_and_wait_offset(self, key: bytes, value: bytes, partition: int) -> int:
        self.send(key, value, partition)
        return len(self.partitions[partition]) - 1

    async def read_partition(self, topic: str, partition: int, until_offset: int) -> list[Any]:
        assert topic == TOPIC
        return self.partitions.get(partition, [])[: until_offset + 1]


def _state(user_id: str, partition: int, *clicks: tuple[str, int]) -> UserState:
    state = UserState(user_id=user_id, partition=partition)
    for n, (item, ts) in enumerate(clicks):
        click = Click(event_id=f"{user_id}-{n}", ts=ts, user_id=user_id, item_id=item,
                      item_type="recipe", category="pasta")  # fmt: skip
        assert apply_event(state, click, UserStateConfig())
    return state


def _store(changelog: Changelog) -> UserStateStore:
    return UserStateStore(TOPIC, changelog, changelog)


def test_persisted_states_read_back_equal_and_are_on_the_changelog() -> None:
    changelog = Changelog()
    store = _store(changelog)
    alice, bob = _state("alice", 0, ("r1", 1_000)), _state("bob", 1, ("r2", 2_000))
    asyncio.run(store.persist({"alice": alice, "bob": bob}))
    assert len(store) == 2 and store.partitions == {0, 1}
    read = store.get("alice")
    assert read == alice and read is not alice  # decoded from the held record
    assert store.get("carol") is None
    assert dict(store.items([1])) == {"bob": bob}
    assert sorted(store.user_ids()) == ["alice", "bob"]
    records = changelog.partitions[0]
    assert records[-1].key == b"alice" and records[-1].value is not None
    assert unpack_user_state(records[-1].value) == alice
    assert store.bytes_held == sum(
        len(r.value or b"") for p in (0, 1) for r in changelog.partitions[p]
    )


def test_records_packed_ahead_are_what_is_persisted() -> None:
    """The handler packs a batch's records while Redis runs its writes, then persists the
    users still to persist with them: the same changelog and held records as packing at
    persist time; a user missing from the packed records (not packed ahead) is packed then,
    and a packed user no longer persisted (a forget request won) is not sent."""
    alice, bob = _state("alice", 0, ("r1", 1_000)), _state("bob", 1, ("r2", 2_000))
    carol = _state("carol", 0, ("r3", 3_000))
    plain, ahead = Changelog(), Changelog()
    asyncio.run(_store(plain).persist({"alice": alice, "bob": bob}))
    store = _store(ahead)
    packed = store.pack({"alice": alice, "carol": carol})
    asyncio.run(store.persist({"alice": alice, "bob": bob}, packed))
    assert ahead.partitions == plain.partitions
    assert store.get("alice") == alice and store.get("bob") == bob
    assert store.get("carol") is None and len(store) == 2
    # the packed record is the one sent and held, not packed again
    later = _state("alice", 0, ("r1", 1_000), ("r4", 4_000))
    asyncio.run(store.persist({"alice": alice}, store.pack({"alice": later})))
    assert unpack_user_state(ahead.partitions[0][-1].value or b"") == later == store.get("alice")


def test_a_held_state_is_what_every_reader_sees_until_it_is_persisted() -> None:
    store = _store(Changelog())
    asyncio.run(store.persist({"alice": _state("alice", 0, ("r1", 1_000))}))
    newer = _state("alice", 0, ("r1", 1_000), ("r2", 2_000))
    store.hold({"alice": newer})
    assert store.get("alice") is newer
    assert dict(store.items())["alice"] is newer
    newer.segment = "changed while in flight"
    asyncio.run(store.persist({"alice": newer}))
    read = store.get("alice")
    assert read is not newer and read == newer


def test_forget_drops_held_and_in_flight_state_with_a_tombstone() -> None:
    changelog = Changelog()
    store = _store(changelog)
    asyncio.run(store.persist({"alice": _state("alice", 0, ("r1", 1_000))}))
    store.hold({"alice": _state("alice", 0, ("r1", 1_000), ("r2", 2_000))})
    assert store.forget("alice", partition=0)
    assert store.get("alice") is None and len(store) == 0 and store.bytes_held == 0
    assert changelog.partitions[0][-1] == Record(b"alice", None)
    assert not store.forget("nobody", partition=5)  # partition not held: no tombstone
    assert 5 not in changelog.partitions


def test_evicting_idle_users_spares_the_active_and_the_in_flight() -> None:
    changelog = Changelog()
    store = _store(changelog)
    asyncio.run(
        store.persist(
            {
                "idle": _state("idle", 0, ("r1", 1_000)),
                "busy": _state("busy", 0, ("r1", 1_000)),
                "active": _state("active", 0, ("r1", 9_000)),
            }
        )
    )
    store.hold({"busy": _state("busy", 0, ("r1", 1_000))})
    assert store.evict_idle(older_than_ms=5_000, limit=10) == 1
    assert store.get("idle") is None
    assert store.get("busy") is not None and store.get("active") is not None
    assert changelog.partitions[0][-1] == Record(b"idle", None)


@given(
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.integers(1, 7),
    st.integers(1, 5),
    st.sets(st.integers(0, 39), max_size=5),
)
def test_a_sweep_in_parts_evicts_each_idle_user_and_spares_the_rest(
    idle: list[bool], scan: int, limit: int, forgotten: set[int]
) -> None:
    """``scan`` users per call, going on where the last call stopped: one pass evicts every
    idle user it started with, exactly once, however often the ``limit`` cut a call short
    (users forgotten meanwhile are skipped; a user that came after the pass started waits
    for the next one), and no active user."""
    changelog = Changelog()
    store = _store(changelog)
    names = [f"u{n}" for n in range(len(idle))]
    asyncio.run(
        store.persist(
            {
                name: _state(name, n % 3, ("r1", 1_000 if old else 9_000))
                for n, (name, old) in enumerate(zip(names, idle, strict=True))
            }
        )
    )
    assert store.evict_idle(older_than_ms=5_000, limit=limit, scan=scan) <= min(limit, scan)
    gone = {names[n] for n in forgotten if n < len(names)}
    for name in gone:
        store.forget(name, int(name[1:]) % 3)
    asyncio.run(store.persist({"late": _state("late", 0, ("r1", 1_000))}))  # after the start
    expected = {name for name, old in zip(names, idle, strict=True) if not old}
    for _ in range(2 * len(names) + 2):
        waiting = {name for name in names if store.get(name) is not None} - expected
        store.evict_idle(older_than_ms=5_000, limit=limit, scan=scan)
        if store.get("late") is None:  # the second pass: the first evicted every idle user
            assert not waiting - {"late"}
            break
    assert {name for name in names if store.get(name) is not None} == expected - gone
    assert store.get("late") is None  # the next pass found it
    tombstones = [r.key for part in changelog.partitions.values() for r in part if r.value is None]
    evictions = [key for key in tombstones if key.decode() not in gone]
    assert len(evictions) == len(set(evictions))  # each user deleted once
    with pytest.raises(ValueError, match="scan"):
        store.evict_idle(older_than_ms=5_000, limit=limit, scan=0)


def test_a_new_owner_recovers_the_partition_from_the_changelog() -> None:
    changelog = Changelog()
    first = _store(changelog)
    alice = _state("alice", 0, ("r1", 1_000), ("r2", 2_000))
    asyncio.run(first.persist({"alice": alice, "bob": _state("bob", 0, ("r3", 3_000))}))
    first.forget("bob", partition=0)
    asyncio.run(first.persist({"carol": _state("carol", 1, ("r4", 4_000))}))

    second = _store(changelog)
    asyncio.run(second.ensure_recovered({0}))
    assert second.partitions == {0}
    assert second.get("alice") == alice
    assert second.get("bob") is None  # its tombstone
    assert second.get("carol") is None  # another partition
    assert changelog.partitions[0][-1].key == MARKER_KEY
    assert second.recoveries[0][:2] == (0, 1)
    assert second.bytes_held == len(changelog.partitions[0][0].value or b"")  # alice's record
    second.release({0})
    assert len(second) == 0 and second.partitions == set() and second.bytes_held == 0
    # idle times come back too: eviction works on recovered users
    asyncio.run(second.ensure_recovered({0}))
    assert second.evict_idle(older_than_ms=2_500, limit=10) == 1
    assert len(second) == 0 and second.bytes_held == 0


def test_records_are_compressed_and_old_plain_records_still_recover() -> None:
    # A user with a full history, as the simulator makes them: the dictionary was trained on
    # such records, and the record must stay a fraction of its msgpack size.
    busy = _state("busy", 0, *[(f"r{n % 40}", 1_000 + 7_000 * n) for n in range(60)])
    plain = encode_user_state(busy)
    packed = pack_user_state(busy)
    without_dictionary = zstandard.ZstdCompressor(level=1).compress(plain)
    assert packed[:4] == ZSTD_MAGIC and len(packed) < min(len(plain) / 2, len(without_dictionary))
    changelog = Changelog()
    changelog.send(b"old", encode_user_state(_state("old", 0, ("r9", 500))), 0)  # pre-zstd
    asyncio.run(_store(changelog).persist({"busy": busy}))
    recovered = _store(changelog)
    asyncio.run(recovered.ensure_recovered([0]))
    assert recovered.get("busy") == busy
    assert recovered.get("old") == _state("old", 0, ("r9", 500))


def test_a_record_naming_an_unknown_dictionary_fails_clearly() -> None:
    foreign = zstandard.ZstdCompressionDict(
        bytes(range(256)) * 16, dict_type=zstandard.DICT_TYPE_RAWCONTENT
    )
    record = zstandard.ZstdCompressor(dict_data=foreign).compress(encode_user_state(_state("u", 0)))
    with pytest.raises(ValueError, match="unknown dictionary"):
        unpack_user_state(record)


def test_records_of_an_earlier_dictionary_kept_beside_the_current_one_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state("u", 0, ("r1", 1_000), ("r2", 2_000))
    old_record = pack_user_state(state)  # made with today's dictionary
    (tmp_path / "user_state-2026-11.zdict").write_bytes(records.DICTIONARY_PATH.read_bytes())
    newer = records.train_dictionary([encode_user_state(state)] * 200, size=1024)
    (tmp_path / "user_state.zdict").write_bytes(newer)
    monkeypatch.setattr(records, "DICTIONARY_PATH", tmp_path / "user_state.zdict")
    for cached in (records._dictionaries, records._compressor, records._decompressor):
        cached.cache_clear()
    try:
        new_record = pack_user_state(state)
        new_id = zstandard.get_frame_parameters(new_record).dict_id
        assert new_id != zstandard.get_frame_parameters(old_record).dict_id
        assert unpack_user_state(old_record) == unpack_user_state(new_record) == state
    finally:
        monkeypatch.undo()
        for cached in (records._dictionaries, records._compressor, records._decompressor):
            cached.cache_clear()


def test_training_refuses_to_overwrite_a_dictionary(capsys: pytest.CaptureFixture[str]) -> None:
    before = records.DICTIONARY_PATH.read_bytes()
    with pytest.raises(SystemExit):
        records.main(["train", "--out", str(records.DICTIONARY_PATH)])
    assert "exists" in capsys.readouterr().err
    assert records.DICTIONARY_PATH.read_bytes() == before


@given(
    st.integers(0, PARTITION_SLOTS - 1),
    st.integers(-(2**45), 2**45),
    st.integers(-(2**45), 2**45),
)
def test_a_held_users_place_packs_partition_and_idle_time_losslessly(
    partition: int, last_event_ts: int, horizon: int
) -> None:
    where = _where(partition, last_event_ts)
    assert where % PARTITION_SLOTS == partition
    assert (where < horizon * PARTITION_SLOTS) == (last_event_ts < horizon)  # evict_idle's test


def test_a_partition_beyond_the_packing_fails_loudly() -> None:
    with pytest.raises(ValueError, match="partition"):
        _where(PARTITION_SLOTS, 0)


def _decoding_store(changelog: Changelog, keep: int) -> UserStateStore:
    return UserStateStore(TOPIC, changelog, changelog, decoded_users=keep)


def test_recently_persisted_states_are_read_back_without_decoding() -> None:
    """The latest ``decoded_users`` persisted states are handed out as they were persisted
    (equal to their records); older ones are decoded from their records."""
    store = _decoding_store(Changelog(), keep=2)
    states = {name: _state(name, 0, ("r1", 1_000 * n)) for n, name in enumerate("abc", 1)}
    asyncio.run(store.persist(states))
    assert store.decoded == 2
    assert store.get("b") is states["b"] and store.get("c") is states["c"]
    a = store.get("a")
    assert a == states["a"] and a is not states["a"]  # the oldest: decoded from its record
    assert store.decoded == 0  # handed out: kept again only once persisted
    assert store.get("b") == states["b"] and store.get("b") is not states["b"]


def test_a_state_handed_out_and_never_persisted_leaves_no_trace() -> None:
    """A batch that mutates a state and fails before persisting it (dead-lettered, replayed
    later): the next read is the persisted state, as when every read decoded."""
    store = _decoding_store(Changelog(), keep=10)
    alice = _state("alice", 0, ("r1", 1_000))
    asyncio.run(store.persist({"alice": alice}))
    handed = store.get("alice")
    assert handed is alice
    click = Click(event_id="alice-late", ts=2_000, user_id="alice", item_id="r2",
                  item_type="recipe", category="soup")  # fmt: skip
    assert apply_event(handed, click, UserStateConfig())  # the failed batch's change
    again = store.get("alice")
    assert again is not handed and again is not None
    assert [item.item_id for item in again.recent] == ["r1"]
    asyncio.run(store.persist({"alice": handed}))  # a later batch persists it: kept again
    assert store.get("alice") is handed


def test_every_change_of_a_held_record_drops_its_decoded_state() -> None:
    """Forgotten, evicted, released and recovered users are never read from a stale
    decoded state."""
    changelog = Changelog()
    store = _decoding_store(changelog, keep=10)
    states = {name: _state(name, n % 2, ("r1", 1_000 * n)) for n, name in enumerate("abcd", 1)}
    asyncio.run(store.persist(states))
    assert store.forget("a", 1)
    assert store.get("a") is None
    assert store.evict_idle(older_than_ms=2_500, limit=10) == 1  # b (c, d are newer)
    assert store.get("b") is None
    store.release([1])  # c's partition
    assert store.get("c") is None and store.decoded == 1  # d's only
    newer = _state("d", 0, ("r1", 4_000), ("r9", 9_000))
    changelog.send(b"d", pack_user_state(newer), 0)  # another worker's later write
    second = _decoding_store(changelog, keep=10)
    asyncio.run(second.ensure_recovered([0]))
    assert second.get("d") == newer and second.decoded == 0
    store.release([0])
    asyncio.run(store.ensure_recovered([0]))  # back again: the changelog's record wins
    assert store.decoded == 0 and store.get("d") == newer


def test_a_kept_state_equals_what_its_record_decodes_to() -> None:
    """What makes keeping decoded states safe: a reader gets the same state either way. Over
    the simulator's users after the whole slice (loyalty labels, banners, tags, dedup ids)."""
    from processors.pipeline import SliceConfig, SliceProcessor
    from processors.simulator import SimulationConfig, TrafficModel

    model = TrafficModel(SimulationConfig(seed=5), start_ms=1_700_000_000_000)
    processor = SliceProcessor(SliceConfig())
    for record in model.catalog_records():
        processor.apply_catalog(record)
    stream = model.events()
    states: dict[str, UserState] = {}
    for _ in range(6):
        batch = [(0, next(stream)) for _ in range(500)]
        states.update(processor.process_batch(batch, states, now_ms=1_700_000_000_000).touched)
    assert any(s.loyalty is not None and s.loyalty.pending for s in states.values())
    for state in states.values():
        assert unpack_user_state(pack_user_state(state)) == state


def test_items_decode_each_user_as_it_is_reached_and_forgets_meanwhile_do_not_disturb() -> None:
    """(A rebalance's recovery walks every recovered user, and may forget some of them on
    the way: the forget service's ``after_recovery``.)"""
    changelog = Changelog()
    store = _store(changelog)
    states = {name: _state(name, 0, ("r1", 1_000 * n)) for n, name in enumerate("abc", 1)}
    asyncio.run(store.persist(states))
    pairs = store.items([0])
    first = next(pairs)
    for name in "abc":
        store.forget(name, 0)
    assert dict([first, *pairs]) == states  # the users held when the walk started
    assert len(store) == 0


def test_reads_count_the_states_found_still_decoded() -> None:
    """``recent_reads``: reads of a state changed and not yet persisted (held) or among the
    latest persisted (kept decoded); a record decoded afresh or an unknown user is not."""
    store = _decoding_store(Changelog(), keep=1)
    states = {name: _state(name, 0, ("r1", 1_000 * n)) for n, name in enumerate("ab", 1)}
    asyncio.run(store.persist(states))  # "b" kept decoded, "a" only as its record
    store.hold({"c": _state("c", 0, ("r1", 5_000))})
    for user_id in ("a", "b", "c", "nobody"):
        store.get(user_id)
    assert (store.reads, store.recent_reads) == (4, 2)
    assert store.uncommitted == 1 and list(store.uncommitted_states()) == ["c"]


def test_a_new_users_waiting_state_is_held_and_leaves_with_its_partition() -> None:
    """A user whose state has no record yet (changed, waiting for the commit) counts as
    held, is listed by the walks over held users, and is dropped, not persisted later, when
    its partition moves away."""
    store = _decoding_store(Changelog(), keep=10)
    asyncio.run(store.persist({"old": _state("old", 0, ("r1", 1_000))}))
    asyncio.run(store.ensure_recovered([1]))  # as before a batch of partition 1
    new = _state("new", 1, ("r2", 2_000))
    store.hold({"new": new})
    assert len(store) == 2 and sorted(store.user_ids()) == ["new", "old"]
    assert [user for user, _ in store.items([1])] == ["new"]
    assert dict(store.items())["new"] is new
    store.release([1])
    assert store.uncommitted == 0 and store.user_ids() == ["old"] and len(store) == 1
