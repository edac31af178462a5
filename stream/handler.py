"""The imperative shell around the pure slice: decode → process → Redis → changelog → metrics.

Order matters for at-least-once delivery with idempotent effects: Redis is written before the
user state is persisted (once per commit interval: ``commit``), and offsets are committed by
Faust only after the records were acked, once their states were persisted (``committed``).
A crash anywhere replays events whose effects are either absent (applied again) or already
present (deduplicated by event_id, or rejected as stale by the version compare-and-set).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiokafka.errors import KafkaError

from processors.events import Event, EventDecoder, Rejection, dead_letter_bytes
from processors.loyalty import encode_example
from processors.pipeline import BatchResult, SliceProcessor
from processors.slates import encode_slate
from processors.user_state import UserState
from state.redis_writer import FieldWrite, RedisUnavailable, UserHashWriter
from state.tables import UserStateStore
from stream.audience_service import AudienceService
from stream.forget_service import ForgetService
from stream.memory import MemoryReleaser
from stream.metrics import BATCH_STAGES, Metrics

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


class StageClock:
    """CPU time of the calling thread (the event loop's), charged to the stage that just
    ended: where a batch's time goes, as counters (``rate()`` of each is its share of a core).
    A stage that awaits is also charged what other tasks of the loop ran meanwhile.

    >>> clock = StageClock()
    >>> _ = sum(range(100_000))
    >>> clock.lap("slice")
    >>> clock.spent["slice"] > 0.0, clock.spent["decode"]
    (True, 0.0)
    """

    __slots__ = ("_last", "spent")

    def __init__(self) -> None:
        self.spent = dict.fromkeys(BATCH_STAGES, 0.0)
        self._last = time.thread_time()

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        self.spent[stage] += now - self._last
        self._last = now


class EventHandler:
    """Handles one batch of Faust events; holds no Faust-specific logic beyond the event API."""

    def __init__(
        self,
        decoder: EventDecoder,
        processor: SliceProcessor,
        states: UserStateStore,
        writer: UserHashWriter,
        dead_letters: Any,
        metrics: Metrics,
        events_topic: str,
        loyalty_examples: Any = None,
        audiences: AudienceService | None = None,
        audience_examples: Any = None,
        forget: ForgetService | None = None,
        memory: MemoryReleaser | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        commit_seconds: float = 0.0,
        commit_max_users: int = 5_000,
        clock: Callable[[], float] = time.monotonic,
        rebalancing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.decoder = decoder
        self.processor = processor
        self.states = states
        self.writer = writer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.events_topic = events_topic
        #: Where resolved loyalty labels go (a writer, ``send_many``, of the learner's
        #: single-partition topic); None: kept nowhere (tests of the slice alone).
        self.loyalty_examples = loyalty_examples
        self.audiences = audiences
        self.audience_examples = audience_examples
        self.forget = forget
        self.memory = memory
        #: True once the worker is stopping: a Redis outage then ends the batch unacked
        #: instead of waiting for Redis (the worker could never stop while it lasts)
        self.should_stop = should_stop
        #: next offset to process per partition, for the lag gauge
        self.positions: dict[int, int] = {}
        #: how long the last batch's oldest record had waited when the batch was taken
        self.behind_seconds = 0.0
        #: A batch's changed states go to the changelog with later batches' (a user touched
        #: again meanwhile persisted once) until the first of them waited this long, or this
        #: many users' states wait; till then their records stay unacked (``committed``).
        self.commit_seconds = commit_seconds
        self.commit_max_users = commit_max_users
        self.clock = clock
        #: True while the group rebalances: Faust waits for every record to be acked, so
        #: waiting states commit at once
        self.rebalancing = rebalancing
        self._uncommitted_since: float | None = None  # when the oldest waiting batch ended
        self._long_sessions: set[str] = set()  # users already logged for a long session

    @property
    def committed(self) -> bool:
        """True when every handled batch's states are on the changelog (or on their way,
        queued on the producer, which Faust flushes before it commits offsets)."""
        return self._uncommitted_since is None

    #: A batch fewer of whose users than this were touched lately (their states found still
    #: decoded: uncommitted, or among the latest persisted) commits at once: users that do
    #: not come back within a few batches (a real site's visitors mostly) gain nothing from
    #: waiting, and the waiting states cost memory and cache.
    MIN_RECURRING_SHARE = 0.5

    #: A session of more events than this is no visitor's: the user id is shared (a site's
    #: one id for every anonymous visitor) or a bot's. Logged once per user (up to
    #: ``LONG_SESSIONS_LOGGED`` users per process); the gauge shows it all along.
    LONG_SESSION_EVENTS = 2_000
    LONG_SESSIONS_LOGGED = 100

    def _watch_sessions(self, touched: Mapping[str, UserState]) -> None:
        """The longest current session among the batch's users (the gauge), and a warning
        the first time a user's passes ``LONG_SESSION_EVENTS``."""
        if not touched:
            return
        user_id, state = max(touched.items(), key=lambda item: item[1].session_events)
        self.metrics.longest_session_events.set(state.session_events)
        logged = self._long_sessions
        if (
            state.session_events > self.LONG_SESSION_EVENTS
            and user_id not in logged
            and len(logged) < self.LONG_SESSIONS_LOGGED
        ):
            logged.add(user_id)
            log.warning(
                "user %r has %d events in its current session: an id many visitors share, or "
                "a bot's? Its recommendations mean little (docs/operations.md"
                "#appetenceshareduserid)",
                user_id,
                state.session_events,
            )

    def _commit_due(self, recurring_share: float = 1.0) -> bool:
        if (
            self.commit_seconds <= 0.0
            or recurring_share < self.MIN_RECURRING_SHARE
            or self.states.uncommitted >= self.commit_max_users
            or self.should_stop()
            or self.rebalancing()
        ):
            return True
        since = self._uncommitted_since
        return since is not None and self.clock() - since >= self.commit_seconds

    async def commit_when_due(self) -> None:
        """Commit if the oldest waiting batch waited the interval (or the worker stops, or
        the group rebalances): called between batches when no record came."""
        if not self.committed and self._commit_due():
            clock = StageClock()
            await self.commit()
            clock.lap("changelog")  # the batch loop's CPU, as a batch's commit is counted
            self.metrics.batch_stage_cpu_seconds.labels(stage="changelog").inc(
                clock.spent["changelog"]
            )

    async def commit(self, packed: Mapping[str, bytes] | None = None) -> None:
        """Persist every changed state still waiting (``packed``: records made of some of
        them since they last changed); the batches before are then durable."""
        await self.persist(self.states.uncommitted_states(), packed)
        self._uncommitted_since = None
        self.metrics.state_commits.inc()
        self.metrics.user_states_uncommitted.set(0)

    async def handle(self, batch: Sequence[Any]) -> BatchResult | None:
        """Process one batch; a failure that is not the input's fault never stops the partition.

        Should processing raise (a bug meeting an event nobody foresaw), every record of the
        batch goes to the dead-letter topic with reason ``processing_error`` and the error,
        so it is neither lost nor retried forever.
        """
        try:
            return await self._handle(batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("batch of %d records failed; dead-lettering it", len(batch))
            now_ms = int(time.time() * 1000)
            detail = repr(error)[:1000]
            await self.dead_letters.send_many(
                [
                    self._dead_letter(
                        event.message, "processing_error", detail, event.value or b"", now_ms
                    )
                    for event in batch
                ]
            )
            return None

    def _dead_letter(
        self, message: Any, reason: str, detail: str, raw: bytes, now_ms: int
    ) -> tuple[bytes | None, bytes, int]:
        """The dead-letter record of an input record (counted): its key, the letter and the
        input's partition (the dead-letter topic has the events topic's partitions). A
        batch's letters go out together (``send_many``): a send per record cost ~110 µs of
        the worker's CPU, which a flood of bad input would spend per record."""
        self.metrics.events_rejected.labels(reason=reason).inc()
        letter = dead_letter_bytes(
            Rejection(reason, detail, raw), message.topic, message.partition, message.offset, now_ms
        )
        return message.key, letter, message.partition

    async def _handle(self, batch: Sequence[Any]) -> BatchResult:
        started = time.perf_counter()
        clock = StageClock()
        now_ms = int(time.time() * 1000)
        metrics = self.metrics
        decoded: list[tuple[int, Event]] = []
        timestamps: list[float] = []
        letters: list[tuple[bytes | None, bytes, int]] = []
        for faust_event in batch:
            message = faust_event.message
            record = self.decoder.decode_record(faust_event.value, now_ms)
            partition = message.partition
            decoded.extend((partition, event) for event in record.events)
            for rejection in record.rejections:
                letters.append(
                    self._dead_letter(
                        message, rejection.reason, rejection.detail, rejection.raw, now_ms
                    )
                )
            timestamps.append(message.timestamp)
            self.positions[partition] = max(self.positions.get(partition, 0), message.offset + 1)
        if letters:
            await self.dead_letters.send_many(letters)

        if timestamps:
            self.behind_seconds = max(0.0, now_ms / 1000 - min(timestamps))
        clock.lap("decode")
        if self.forget is not None:
            decoded = self.forget.keep_events(decoded)
        held = self.states.partitions
        await self.states.ensure_recovered({partition for partition, _ in decoded})
        recovered = self.states.partitions - held
        if recovered and self.forget is not None:
            self.forget.after_recovery(recovered)
        if recovered:  # their pending loyalty labels wait for the watermark here now
            self.processor.schedule_pending(self.states.items(recovered))
        clock.lap("recovery")  # ~0 but after a rebalance: partitions read from the changelog
        reads, recent_reads = self.states.reads, self.states.recent_reads
        result = self.processor.process_batch(decoded, self.states, now_ms, time.thread_time)
        for phase, seconds in result.phase_seconds.items():
            metrics.slice_phase_cpu_seconds.labels(phase=phase).inc(seconds)
        reads = self.states.reads - reads
        recurring = (self.states.recent_reads - recent_reads) / reads if reads else 1.0
        # Changed, persisted once Redis has the batch's writes (now or with a later batch's
        # states: ``commit``): readers meanwhile see these.
        self.states.hold(result.touched)
        self.states.hold(result.expired)
        commit_due = self._commit_due(recurring)
        clock.lap("slice")
        profiles = result.profiles
        for user_id, slates in result.slates.items():
            for slate_field, slate in slates.items():
                self.writer.stage(
                    user_id, FieldWrite(slate_field, slate.version, encode_slate(slate))
                )
            profile = _json.encode(profiles[user_id])
            self.writer.stage(user_id, FieldWrite("profile", profiles[user_id].version, profile))
        clock.lap("output")
        if self.audiences is not None:
            await self.audiences.after_batch(
                result.touched, self.writer, self.audience_examples, now_ms
            )
            clock.lap("audiences")
        # While Redis runs the batch's writes, the states' changelog records are packed (sent
        # only once Redis has taken the writes): the worker's CPU instead of an idle wait.
        flushing = asyncio.ensure_future(self._flush_until_written())
        try:
            await asyncio.sleep(0)  # the flush sends its commands, then awaits the replies
            clock.lap("redis")
            packed = self.states.pack(self.states.uncommitted_states()) if commit_due else {}
            clock.lap("changelog")
            # the batch's slates are readable in Redis from then on
            written = await flushing
        finally:
            flushing.cancel()  # (done by now, unless this batch is abandoned)
        clock.lap("redis")
        if self.forget is not None:
            await self.forget.settle(result)
        # Labels are sent before the states that no longer hold them are persisted: a crash
        # in between re-resolves them on replay (at-least-once, like everything here).
        if result.resolved:
            resolved = Counter((example.target, example.label) for example in result.resolved)
            for (target, label), count in resolved.items():
                outcome = "positive" if label else "negative"
                metrics.loyalty_labels_resolved.labels(target=target, outcome=outcome).inc(count)
            if self.loyalty_examples is not None:
                # one record batch (the topic has one partition), not a send per example:
                # a long-running site resolves a label every few events (0.06 per event on
                # the simulator's fifth day, growing with each check-in passed)
                await self.loyalty_examples.send_many(
                    [
                        (example.target.encode(), encode_example(example), 0)
                        for example in result.resolved
                    ]
                )
        if commit_due:
            await self.commit(packed)  # (without the users ``settle`` just forgot)
        else:
            if self._uncommitted_since is None:
                self._uncommitted_since = self.clock()
            metrics.user_states_uncommitted.set(self.states.uncommitted)
        clock.lap("changelog")
        if self.memory is not None:
            self.memory.after_batch()

        # Event->Redis: until the write above, not until the batch's bookkeeping after it
        # (persisting states, releasing memory), which the next batch's events wait for.
        taken = now_ms / 1000
        for ts in timestamps:
            metrics.event_wait_seconds.observe(max(0.0, taken - ts))
            metrics.event_to_redis_seconds.observe(max(0.0, written - ts))
        for event_type, count in result.applied_by_type.items():
            metrics.events_consumed.labels(type=event_type).inc(count)
        metrics.events_duplicate.inc(result.duplicates)
        metrics.sequence_gaps.inc(result.seq_gaps)
        self._watch_sessions(result.touched)
        metrics.records_consumed.inc(len(batch))
        metrics.batch_records.observe(len(batch))
        metrics.batch_events.observe(len(decoded))
        metrics.processing_seconds.observe(time.perf_counter() - started)
        metrics.last_batch_timestamp.set(time.time())
        clock.lap("other")
        for stage, seconds in clock.spent.items():
            metrics.batch_stage_cpu_seconds.labels(stage=stage).inc(seconds)
        return result

    async def persist(
        self, states: dict[str, UserState], packed: Mapping[str, bytes] | None = None
    ) -> None:
        """Hand changed states to the changelog, waiting out a producer that cannot take
        them (the broker down or slow): a batch's events are in Redis and in memory, so the
        batch is neither dead-lettered nor acked before its states are queued (the audience
        re-scoring persists through this too). Sending again is harmless (a compacted topic,
        the same records)."""
        while True:
            try:
                await self.states.persist(states, packed)
                return
            except KafkaError as error:
                self.metrics.changelog_send_failures.inc()
                if self.should_stop():
                    log.error("%r while stopping; the batch stays unacked (replayed)", error)
                    raise asyncio.CancelledError("stopping, the changelog unavailable") from error
                log.error("changelog producer failed (%r); retrying", error)
                await asyncio.sleep(1.0)

    async def _flush_until_written(self) -> float:
        """Block this partition's progress (not memory) until Redis takes the writes; returns
        when it did (``time.time()``)."""
        while True:
            flush_started = time.perf_counter()
            try:
                flushed = await self.writer.flush()
            except RedisUnavailable as error:  # each failed attempt was counted by the writer
                if self.should_stop():
                    log.error("%s while stopping; the batch stays unacked (replayed)", error)
                    raise asyncio.CancelledError("stopping during a Redis outage") from error
                log.error("%s; pausing consumption and retrying", error)
                await asyncio.sleep(1.0)
                continue
            self.metrics.redis_write_seconds.observe(time.perf_counter() - flush_started)
            self.metrics.redis_writes.labels(result="ok").inc(flushed.written)
            self.metrics.redis_writes.labels(result="stale").inc(flushed.stale)
            return time.time()
