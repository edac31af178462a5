"""Applies forget requests (``{prefix}.forget``, followed by every worker from the start).

On each request, every worker erases what it holds of the user as of the request's time:
their state (a changelog tombstone where it owns the partition), the next-click model's
memory of them as a visitor, loyalty deadlines, audience memberships (and tombstones their
seed records), their staged and stored Redis data (hash and decile segments); and it
remembers the request so that the user's older events still in flight are dropped.
A request replayed later (a worker restart reads the topic again) erases nothing the user
did after it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from processors.audiences import seed_key
from processors.events import Event
from processors.forget import ForgottenUsers, decode_forget_request
from processors.pipeline import BatchResult, SliceProcessor
from state.redis_writer import UserHashWriter
from state.tables import UserStateStore
from stream.audience_service import AudienceService
from stream.metrics import Metrics
from stream.topics import partition_for

log = logging.getLogger(__name__)


class ForgetService:
    def __init__(
        self,
        forgotten: ForgottenUsers,
        states: UserStateStore,
        processor: SliceProcessor,
        audiences: AudienceService,
        writer: UserHashWriter,
        audience_seeds: Any,
        metrics: Metrics,
        partitions: int,
    ) -> None:
        self.forgotten = forgotten
        self.states = states
        self.processor = processor
        self.audiences = audiences
        self.writer = writer
        self.audience_seeds = audience_seeds  # the compacted seed topic (tombstones)
        self.metrics = metrics
        self.partitions = partitions

    async def on_record(self, record: Any) -> None:
        request = decode_forget_request(record.key, record.value)
        if request is None:
            log.warning("invalid forget request at offset %s skipped", record.offset)
            return
        user_id, requested_at = request.user_id, request.requested_at
        self.forgotten.remember(user_id, requested_at)
        self.metrics.forgotten_users.set(len(self.forgotten))
        state = self.states.get(user_id)
        if state is not None and state.last_event_ts > requested_at:
            return  # came back after the request (a replayed request): nothing to erase
        self.states.forget(user_id, partition_for(user_id, self.partitions))
        self.processor.forget_user(user_id)
        seeded = self.audiences.learner.forget_user(user_id)
        for audience_id in seeded:
            await self.audience_seeds.send(key=seed_key(audience_id, user_id), value=None)
        known = set(self.audiences.learner.membership.audiences())
        known |= set(self.audiences.scorer.models)
        if state is not None:
            known |= set(state.audience_deciles)
        await self.writer.forget(user_id, sorted(known), requested_at)
        self.metrics.users_forgotten.inc()
        log.info("forgot a user (request of %d)", requested_at)

    def drops(self, user_id: str, ts: int) -> bool:
        return self.forgotten.drops(user_id, ts)

    def keep_events(self, decoded: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
        """The events not dropped for belonging to a forgotten user (before the request)."""
        if not len(self.forgotten):
            return decoded
        kept = [pair for pair in decoded if not self.forgotten.drops(pair[1].user_id, pair[1].ts)]
        self.metrics.events_forgotten.inc(len(decoded) - len(kept))
        return kept

    def after_recovery(self, partitions: set[int]) -> None:
        """Users recovered from the changelog whose forget request came in meanwhile."""
        if not len(self.forgotten):
            return
        for user_id, state in self.states.items(partitions):
            if self.forgotten.drops(user_id, state.last_event_ts):
                self.states.forget(user_id, state.partition)

    async def settle(self, result: BatchResult) -> None:
        """After a batch's flush and before its states persist: a request that arrived while
        the batch was in flight wins. Its users are not persisted and their Redis data,
        which the flush may have written again, is erased again."""
        if not len(self.forgotten):
            return
        for touched in (result.touched, result.expired):
            for user_id in [u for u, s in touched.items() if self.drops(u, s.last_event_ts)]:
                state = touched.pop(user_id)
                at = self.forgotten.requested_at(user_id) or 0
                self.states.forget(user_id, state.partition)
                await self.writer.forget(user_id, sorted(state.audience_deciles), at)

    def expire(self) -> None:
        self.forgotten.expire(int(time.time() * 1000))
        self.metrics.forgotten_users.set(len(self.forgotten))
