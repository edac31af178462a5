"""Durable per-user state that moves with its partition: memory + a compacted changelog topic.

Each touched user's state is written once per batch to ``{app_id}-user-state-changelog``, to
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
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from processors.user_state import UserState, decode_user_state, encode_user_state

log = logging.getLogger(__name__)

MARKER_KEY = b"\x00appetence-recovery-marker"


class ChangelogReader(Protocol):
    async def read_partition(self, topic: str, partition: int, until_offset: int) -> Iterable[Any]:
        """Yield records of one partition from the beginning through ``until_offset``."""
        ...


class ChangelogWriter(Protocol):
    def send(self, key: bytes, value: bytes | None, partition: int) -> None: ...

    async def send_and_wait_offset(self, key: bytes, value: bytes, partition: int) -> int: ...


class UserStateStore:
    """Per-partition user state in memory, persisted coalesced and recovered on demand."""

    def __init__(self, topic: str, writer: ChangelogWriter, reader: ChangelogReader) -> None:
        self.topic = topic
        self.writer = writer
        self.reader = reader
        self._by_partition: dict[int, dict[str, UserState]] = {}
        self._index: dict[str, UserState] = {}
        self.recoveries: list[tuple[int, int, float]] = []  # (partition, users, seconds)

    def get(self, user_id: str, /) -> UserState | None:
        return self._index.get(user_id)

    def __len__(self) -> int:
        return len(self._index)

    def items(self, partitions: Iterable[int] | None = None) -> list[tuple[str, UserState]]:
        """(user_id, state) pairs, of the given partitions or of all held."""
        if partitions is None:
            return list(self._index.items())
        return [pair for p in partitions for pair in self._by_partition.get(p, {}).items()]

    @property
    def partitions(self) -> set[int]:
        return set(self._by_partition)

    async def ensure_recovered(self, partitions: Iterable[int]) -> None:
        """Rebuild any partition not held yet from the changelog (blocks its processing)."""
        for partition in sorted(set(partitions) - set(self._by_partition)):
            started = time.perf_counter()
            marker = uuid.uuid4().hex.encode()
            until = await self.writer.send_and_wait_offset(MARKER_KEY, marker, partition)
            users: dict[str, UserState] = {}
            for record in await self.reader.read_partition(self.topic, partition, until):
                if record.key == MARKER_KEY or record.key is None:
                    continue
                user_id = record.key.decode()
                if record.value is None:
                    users.pop(user_id, None)  # tombstone
                else:
                    users[user_id] = decode_user_state(record.value)
            self._by_partition[partition] = users
            self._index.update(users)
            seconds = time.perf_counter() - started
            self.recoveries.append((partition, len(users), seconds))
            log.info("recovered partition %d: %d users in %.3fs", partition, len(users), seconds)

    def release(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (their new owner recovers them)."""
        for partition in partitions:
            for user_id in self._by_partition.pop(partition, {}):
                self._index.pop(user_id, None)

    def persist(self, states: dict[str, UserState]) -> None:
        """One changelog record per touched user (the producer batches the sends)."""
        for user_id, state in states.items():
            self._by_partition.setdefault(state.partition, {})[user_id] = state
            self._index[user_id] = state
            self.writer.send(user_id.encode(), encode_user_state(state), state.partition)

    def forget(self, user_id: str, partition: int) -> bool:
        """Delete a user (a forget request): from memory, and a tombstone on the changelog
        when this worker holds the partition. True if the state was held here."""
        state = self._index.pop(user_id, None)
        if state is not None:
            partition = state.partition
            self._by_partition.get(partition, {}).pop(user_id, None)
        if partition in self._by_partition:
            self.writer.send(user_id.encode(), None, partition)
        return state is not None

    def evict_idle(self, older_than_ms: int, limit: int) -> int:
        """Delete up to ``limit`` users idle since before ``older_than_ms`` (tombstones)."""
        idle = [
            (user_id, state.partition)
            for user_id, state in self._index.items()
            if state.last_event_ts < older_than_ms
        ][:limit]
        for user_id, partition in idle:
            self._index.pop(user_id, None)
            self._by_partition.get(partition, {}).pop(user_id, None)
            self.writer.send(user_id.encode(), None, partition)
        return len(idle)
