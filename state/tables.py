"""Durable per-user state that moves with its partition: memory + a compacted changelog topic.

Each touched user's state is written once per commit (``stream.handler``: every second, not
every batch) to ``{app_id}-user-state-changelog``, to
the same partition number as the user's input partition (co-partitioned). When a worker
first sees a partition (start-up or rebalance), it rebuilds that partition's users from the
changelog before processing any of its events.

Why not a Faust Table: Faust's recovery reads a changelog up to the broker's reported end
offset, and the embedded Tansu broker reports end offsets per record *batch* (not per
record), so recovery stalls there. We bound the read instead by a marker record we produce
ourselves: its offset, returned by the broker on produce, is exact on every broker.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from processors.user_state import UserState
from state.records import pack_user_state, unpack_user_state

log = logging.getLogger(__name__)

MARKER_KEY = b"\x00appetence-recovery-marker"

#: A held user's partition and last event time, packed into one int (time * slots +
#: partition) and held as the first 8 bytes of the user's record: one dict entry and one
#: bytes object per user held, not a second dict and an int object (~100 bytes per user).
PARTITION_SLOTS = 1 << 16
_WHERE = struct.Struct("<q")


def _where(partition: int, last_event_ts: int) -> int:
    if not 0 <= partition < PARTITION_SLOTS:
        raise ValueError(f"partition {partition} outside 0..{PARTITION_SLOTS - 1}")
    return last_event_ts * PARTITION_SLOTS + partition


def _held_record(partition: int, last_event_ts: int, record: bytes) -> bytes:
    return _WHERE.pack(_where(partition, last_event_ts)) + record


def _where_of(held: bytes) -> int:
    return int(_WHERE.unpack_from(held)[0])


class ChangelogReader(Protocol):
    async def read_partition(self, topic: str, partition: int, until_offset: int) -> Iterable[Any]:
        """Yield records of one partition from the beginning through ``until_offset``."""
        ...


class ChangelogWriter(Protocol):
    def send(self, key: bytes, value: bytes | None, partition: int) -> None: ...

    async def send_many(self, records: Sequence[tuple[bytes, bytes | None, int]]) -> None:
        """Send records (key, value, partition) in order; returns once they are queued."""
        ...

    async def send_and_wait_offset(self, key: bytes, value: bytes, partition: int) -> int: ...


class UserStateStore:
    """Per-partition user state in memory, persisted coalesced and recovered on demand.

    Held *encoded*: each user as its changelog record (``state.records``: msgpack
    compressed with a trained zstd dictionary, ~0.55 KB for a simulated user, ~2.6 KB as
    plain msgpack), decoded when a batch reads it, instead of ~10 KB of Python objects per
    user. The encoding costs nothing extra (``persist`` encodes for the changelog anyway); a
    read costs one decode (~35 µs with decompression, the records being cold) per user per
    batch. States a batch is
    still working on are registered with ``hold`` until persisted, so other readers in the
    meantime (audience re-scoring, forget requests) see the same objects the batch mutates,
    as they would with objects held in memory.

    The ``decoded_users`` most recently persisted states are also kept decoded (the objects
    just encoded, equal to their records): at live batch sizes most touched users were
    touched a few batches before (~86% with 2,000 kept, at 300-event batches of the
    simulator's traffic), and a read of a cold record cost ~35 µs. ``get`` hands such a state
    out and forgets it (``persist`` keeps it again), so a batch that fails before persisting
    leaves no trace, as with a state decoded afresh; every change of a held record drops it.
    """

    def __init__(
        self,
        topic: str,
        writer: ChangelogWriter,
        reader: ChangelogReader,
        decoded_users: int = 0,
    ) -> None:
        self.topic = topic
        self.writer = writer
        self.reader = reader
        self._held: dict[str, bytes] = {}  # user -> _where(partition, last event time) + record
        self._partitions: set[int] = set()  # recovered here (some may hold no user)
        self._in_flight: dict[str, UserState] = {}  # see hold()
        # the latest persisted states, decoded (the least recently persisted first)
        # oldest first; an OrderedDict, whose first key is O(1) however many were deleted
        self._decoded: OrderedDict[str, UserState] = OrderedDict()
        self._sweep: list[str] = []  # users evict_idle has still to look at in this pass
        self.decoded_users = decoded_users
        self.bytes_held = 0  # the held records' total size (a gauge)
        self.recoveries: list[tuple[int, int, float]] = []  # (partition, users, seconds)
        #: reads (``get``), and those of a state changed or persisted lately (held decoded):
        #: how often users come back within a few batches, what waiting to persist gains
        self.reads = 0
        self.recent_reads = 0

    @property
    def decoded(self) -> int:
        """States kept decoded now (at most ``decoded_users``; a gauge)."""
        return len(self._decoded)

    def get(self, user_id: str, /) -> UserState | None:
        self.reads += 1
        state = self._in_flight.get(user_id)
        if state is not None:
            self.recent_reads += 1
            return state
        state = self._decoded.pop(user_id, None)  # handed out: kept again once persisted
        if state is not None:
            self.recent_reads += 1
            return state
        held = self._held.get(user_id)
        if held is None:
            return None
        return unpack_user_state(memoryview(held)[_WHERE.size :])

    def __len__(self) -> int:
        return len(self._held) + len(self._never_persisted(None))

    def _never_persisted(self, partitions: set[int] | None) -> list[tuple[str, UserState]]:
        """Changed states of users with no record yet (new users waiting for the commit):
        held too, so walks over the held users (audience back-fill and re-scoring) see them."""
        held = self._held
        return [
            (user_id, state)
            for user_id, state in self._in_flight.items()
            if user_id not in held and (partitions is None or state.partition in partitions)
        ]

    def _held_in(self, partitions: Iterable[int] | None) -> list[tuple[str, bytes]]:
        if partitions is None:
            return list(self._held.items())
        chosen = set(partitions)
        return [
            (user_id, held)
            for user_id, held in self._held.items()
            if _where_of(held) % PARTITION_SLOTS in chosen
        ]

    def items(self, partitions: Iterable[int] | None = None) -> Iterator[tuple[str, UserState]]:
        """(user_id, state) pairs, of the given partitions or of all held, each decoded as it
        is reached: a list of them all held ~10 KB per user at once (+1,080 MiB and 10.6 s
        for 100,000 users recovered in a rebalance; one at a time, +1 MiB and 2.7 s). The
        users are those held when the iteration starts; changes meanwhile do not disturb it."""
        chosen = None if partitions is None else set(partitions)
        waiting = self._never_persisted(chosen)
        in_flight = self._in_flight.get
        for user_id, held in self._held_in(chosen):
            yield user_id, in_flight(user_id) or unpack_user_state(memoryview(held)[_WHERE.size :])
        yield from waiting

    def user_ids(self) -> list[str]:
        return list(self._held) + [user_id for user_id, _ in self._never_persisted(None)]

    @property
    def partitions(self) -> set[int]:
        return set(self._partitions)

    async def ensure_recovered(self, partitions: Iterable[int]) -> None:
        """Rebuild any partition not held yet from the changelog (blocks its processing)."""
        for partition in sorted(set(partitions) - self._partitions):
            started = time.perf_counter()
            marker = uuid.uuid4().hex.encode()
            until = await self.writer.send_and_wait_offset(MARKER_KEY, marker, partition)
            users: dict[str, bytes] = {}
            for record in await self.reader.read_partition(self.topic, partition, until):
                if record.key == MARKER_KEY or record.key is None:
                    continue
                user_id = record.key.decode()
                if record.value is None:
                    users.pop(user_id, None)  # tombstone
                else:
                    users[user_id] = record.value
            self._partitions.add(partition)
            for user_id, value in users.items():
                state = unpack_user_state(value)  # validates the record; its idle time
                self._replace(user_id, _held_record(partition, state.last_event_ts, value))
            seconds = time.perf_counter() - started
            self.recoveries.append((partition, len(users), seconds))
            log.info("recovered partition %d: %d users in %.3fs", partition, len(users), seconds)

    def _replace(self, user_id: str, held: bytes | None) -> None:
        """Hold ``held`` for the user (None: hold nothing), keeping ``bytes_held``; a state
        kept decoded is dropped (``persist`` keeps the new one)."""
        self._decoded.pop(user_id, None)
        previous = self._held.pop(user_id, None) if held is None else self._held.get(user_id)
        if previous is not None:
            self.bytes_held -= len(previous) - _WHERE.size
        if held is not None:
            self._held[user_id] = held
            self.bytes_held += len(held) - _WHERE.size

    def release(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (their new owner recovers them)."""
        gone = set(partitions) & self._partitions
        if not gone:
            return
        self._partitions -= gone
        for user_id, _ in self._held_in(gone):
            self._replace(user_id, None)
            self._in_flight.pop(user_id, None)
        for user_id, _ in self._never_persisted(gone):  # a later commit must not send them
            del self._in_flight[user_id]

    @property
    def uncommitted(self) -> int:
        """Users whose state changed since it was last persisted (``hold``)."""
        return len(self._in_flight)

    def uncommitted_states(self) -> dict[str, UserState]:
        """The states changed since they were last persisted (a copy: ``persist`` them)."""
        return dict(self._in_flight)

    def hold(self, states: dict[str, UserState]) -> None:
        """Register states a batch changed and will persist later (after its Redis writes):
        until then every read of these users returns these objects."""
        self._in_flight.update(states)

    @staticmethod
    def pack(states: Mapping[str, UserState]) -> dict[str, bytes]:
        """The states' records (``persist`` them later, while the states are unchanged)."""
        return {user_id: pack_user_state(state) for user_id, state in states.items()}

    async def persist(
        self, states: dict[str, UserState], packed: Mapping[str, bytes] | None = None
    ) -> None:
        """One changelog record per touched user, sent together (``send_many``); the
        record is also what this store holds. ``packed``: records ``pack`` made of these
        states since they last changed (a user missing from it is packed now)."""
        records = []
        decoded, keep = self._decoded, self.decoded_users
        for user_id, state in states.items():
            record = packed.get(user_id) if packed is not None else None
            if record is None:
                record = pack_user_state(state)
            self._partitions.add(state.partition)
            self._replace(user_id, _held_record(state.partition, state.last_event_ts, record))
            self._in_flight.pop(user_id, None)
            records.append((user_id.encode(), record, state.partition))
            if keep > 0:
                decoded[user_id] = state  # the newest, last
                if len(decoded) > keep:
                    del decoded[next(iter(decoded))]
        await self.writer.send_many(records)

    def forget(self, user_id: str, partition: int) -> bool:
        """Delete a user (a forget request): from memory, and a tombstone on the changelog
        when this worker holds the partition. True if the state was held here."""
        held = self._held.get(user_id)
        self._in_flight.pop(user_id, None)
        if held is not None:
            partition = _where_of(held) % PARTITION_SLOTS
            self._replace(user_id, None)
        if partition in self._partitions:
            self.writer.send(user_id.encode(), None, partition)
        return held is not None

    def evict_idle(self, older_than_ms: int, limit: int, scan: int | None = None) -> int:
        """Delete up to ``limit`` users idle since before ``older_than_ms`` (tombstones).

        ``scan``: look at no more than this many held users in this call, going on where the
        previous call stopped (a pass starts over a snapshot of the users held then; users
        added later wait for the next pass). A scan of every held user blocks the worker's
        event loop ~135 ms per million users; None scans them all.
        """
        if scan is not None and scan < 1:
            raise ValueError(f"scan must be at least 1, not {scan}")
        bound = older_than_ms * PARTITION_SLOTS  # where < bound: last event before older_than_ms
        idle = []
        if scan is None:
            for user_id, held in self._held.items():
                where = _where_of(held)
                if where < bound and user_id not in self._in_flight:
                    idle.append((user_id, where % PARTITION_SLOTS))
                    if len(idle) == limit:
                        break
        else:
            if not self._sweep:
                self._sweep = list(self._held)  # a new pass (~15 ms per million users)
            candidates = self._sweep[-scan:]  # taken from the end: no copy of the rest
            del self._sweep[-scan:]
            held_of = self._held.get
            for at, user_id in enumerate(candidates):
                record = held_of(user_id)
                if record is None:  # deleted since the pass started
                    continue
                where = _where_of(record)
                if where < bound and user_id not in self._in_flight:
                    idle.append((user_id, where % PARTITION_SLOTS))
                    if len(idle) == limit:
                        self._sweep += candidates[at + 1 :]  # the rest of this call's, next
                        break
        for user_id, partition in idle:
            self._replace(user_id, None)
            self.writer.send(user_id.encode(), None, partition)
        return len(idle)
