"""The worker shell: a failing batch is dead-lettered whole instead of stopping the partition."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from processors.events import (
    Click,
    DeadLetter,
    DecodeLimits,
    EventDecoder,
    PageView,
    encode_event,
)
from processors.pipeline import SLICE_PHASES, SliceConfig, SliceProcessor
from stream.batching import MIN_GATHER_SECONDS, BatchBudget, batch_window, gather
from stream.handler import EventHandler
from stream.metrics import BATCH_STAGES, Metrics


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp: float = 0.0


@dataclass
class FaustEvent:
    message: Message
    value: bytes


class Collector:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_many(self, records: list[tuple[bytes | None, bytes, int]]) -> None:
        self.sent += [value for _, value, _ in records]


class ExplodingProcessor(SliceProcessor):
    def process_batch(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")


class NoStates:
    partitions: frozenset[int] = frozenset()
    reads = recent_reads = 0

    async def ensure_recovered(self, partitions: Any) -> None:
        return None

    def get(self, user_id: str) -> None:
        return None


def test_a_failing_batch_goes_to_the_dead_letter_topic_and_is_counted() -> None:
    registry = CollectorRegistry()
    dead = Collector()
    handler = EventHandler(
        decoder=EventDecoder(DecodeLimits(max_age_ms=10**15)),
        processor=ExplodingProcessor(SliceConfig()),
        states=NoStates(),  # type: ignore[arg-type]
        writer=None,  # type: ignore[arg-type]
        dead_letters=dead,
        metrics=Metrics(registry),
        events_topic="t",
    )
    raw = encode_event(PageView(event_id="e", ts=1, user_id="u"))
    batch = [FaustEvent(Message("t", 0, offset, b"u"), raw) for offset in range(3)]
    assert asyncio.run(handler.handle(batch)) is None
    letters = [msgspec.json.decode(v, type=DeadLetter) for v in dead.sent]
    assert [(letter.reason, letter.source_offset) for letter in letters] == [
        ("processing_error", 0),
        ("processing_error", 1),
        ("processing_error", 2),
    ]
    assert "boom" in letters[0].detail and letters[0].original == raw
    value = registry.get_sample_value(
        "appetence_events_rejected_total", {"reason": "processing_error"}
    )
    assert value == 3


def test_a_batch_of_old_records_marks_the_worker_behind_and_widens_the_next_window() -> None:
    handler = EventHandler(
        decoder=EventDecoder(DecodeLimits(max_age_ms=10**15)),
        processor=ExplodingProcessor(SliceConfig()),  # the age is known before processing
        states=NoStates(),  # type: ignore[arg-type]
        writer=None,  # type: ignore[arg-type]
        dead_letters=Collector(),
        metrics=Metrics(CollectorRegistry()),
        events_topic="t",
    )
    raw = encode_event(PageView(event_id="e", ts=1, user_id="u"))
    now = time.time()
    batch = [
        FaustEvent(Message("t", 0, offset, b"u", timestamp=now - age), raw)
        for offset, age in enumerate((30.0, 0.5))
    ]
    asyncio.run(handler.handle(batch))
    assert 29.0 < handler.behind_seconds < 60.0  # the oldest record's wait, not the newest
    assert batch_window(handler.behind_seconds, 0.05, 0.5, catch_up_after=2.0) == 0.5

    asyncio.run(handler.handle([FaustEvent(Message("t", 0, 2, b"u", timestamp=time.time()), raw)]))
    assert handler.behind_seconds < 2.0
    assert batch_window(handler.behind_seconds, 0.05, 0.5, catch_up_after=2.0) == 0.05


@given(
    within=st.floats(0.001, 1.0),
    since_taken=st.floats(0.0, 10.0),
    behind=st.floats(0.0, 100.0),
)
def test_batches_keep_a_cadence_unless_catching_up(
    within: float, since_taken: float, behind: float
) -> None:
    """In time (behind < 2 s): the next batch is taken ``within`` after the previous one, or
    after MIN_GATHER_SECONDS when handling took longer; catching up: a whole wide window."""
    wait = batch_window(behind, within, 0.5, catch_up_after=2.0, since_taken=since_taken)
    if behind >= 2.0:
        assert wait == max(within, 0.5)
    else:
        assert MIN_GATHER_SECONDS <= wait <= max(within, MIN_GATHER_SECONDS)
        # never sooner than the cadence (within - since_taken, added back, may round one ulp
        # below within)
        assert since_taken + wait >= within or since_taken + wait == pytest.approx(within)
        if since_taken + MIN_GATHER_SECONDS < within:
            assert since_taken + wait == pytest.approx(within)  # and not later either


class HeldStates(NoStates):
    """The store's part the handler uses: changed states held until persisted, persisted
    ones kept (as the store keeps the latest decoded), reads counted."""

    def __init__(self) -> None:
        self.held: dict[str, Any] = {}
        self.kept: dict[str, Any] = {}
        self.reads = self.recent_reads = 0

    def get(self, user_id: str) -> Any:
        self.reads += 1
        state = self.held.get(user_id) or self.kept.get(user_id)
        self.recent_reads += state is not None
        return state

    def hold(self, states: Any) -> None:
        self.held.update(states)

    @property
    def uncommitted(self) -> int:
        return len(self.held)

    def uncommitted_states(self) -> dict[str, Any]:
        return dict(self.held)

    @staticmethod
    def pack(states: Any) -> dict[str, bytes]:
        return {}

    async def persist(self, states: Any, packed: Any = None) -> None:
        for user_id in states:
            self.kept[user_id] = self.held.pop(user_id)


class DownRedis:
    """A writer whose flush fails ``failures`` times (a Redis outage), then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.staged = 0

    def stage(self, user_id: str, write: Any) -> None:
        self.staged += 1

    async def flush(self) -> Any:
        from state.redis_writer import FlushResult, RedisUnavailable

        if self.failures:
            self.failures -= 1
            raise RedisUnavailable("Redis down")
        return FlushResult(written=self.staged, stale=0)


def outage_handler(writer: DownRedis, stopping: bool) -> EventHandler:
    return EventHandler(
        decoder=EventDecoder(DecodeLimits(max_age_ms=10**15)),
        processor=SliceProcessor(SliceConfig()),
        states=HeldStates(),  # type: ignore[arg-type]
        writer=writer,  # type: ignore[arg-type]
        dead_letters=Collector(),
        metrics=Metrics(CollectorRegistry()),
        events_topic="t",
        should_stop=lambda: stopping,
    )


def test_a_redis_outage_pauses_the_batch_until_redis_is_back_unless_the_worker_stops() -> None:
    raw = encode_event(PageView(event_id="e", ts=1, user_id="u"))
    batch = [FaustEvent(Message("t", 0, 0, b"u"), raw)]

    running = DownRedis(failures=1)
    result = asyncio.run(outage_handler(running, stopping=False).handle(batch))
    assert result is not None and running.failures == 0  # waited, retried, written

    stopping = DownRedis(failures=1)
    handler = outage_handler(stopping, stopping=True)
    try:
        asyncio.run(handler.handle(batch))
    except asyncio.CancelledError:
        pass  # abandoned: not dead-lettered, not acked (stream.batching), replayed later
    else:
        raise AssertionError("a stopping worker waited for Redis")
    assert handler.dead_letters.sent == []


class FailingChangelog(HeldStates):
    """A state store whose changelog producer fails ``failures`` times, then takes them."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.persisted: list[Any] = []

    async def persist(self, states: Any, packed: Any = None) -> None:
        from aiokafka.errors import KafkaTimeoutError

        if self.failures:
            self.failures -= 1
            raise KafkaTimeoutError()
        self.persisted.append(dict(states))
        await super().persist(states, packed)


def test_a_changelog_producer_failure_is_retried_not_dead_lettered_unless_stopping() -> None:
    raw = encode_event(PageView(event_id="e", ts=1, user_id="u"))
    batch = [FaustEvent(Message("t", 0, 0, b"u"), raw)]

    for stopping in (False, True):
        states = FailingChangelog(failures=2)
        handler = outage_handler(DownRedis(failures=0), stopping=stopping)
        handler.states = states  # type: ignore[assignment]
        metric = handler.metrics.changelog_send_failures
        if stopping:
            with pytest.raises(asyncio.CancelledError):  # unacked: replayed by the next owner
                asyncio.run(handler.handle(batch))
            assert metric._value.get() == 1 and states.persisted == []
        else:
            assert asyncio.run(handler.handle(batch)) is not None
            assert metric._value.get() == 2
            assert [sorted(persisted) for persisted in states.persisted] == [["u"]]
        assert handler.dead_letters.sent == []


batches = st.lists(
    st.tuples(st.integers(0, 64 << 20), st.floats(0.0, 30.0)),  # input bytes, CPU seconds
    max_size=40,
)


@given(batches, st.floats(0.0, 5.0), st.integers(1, 256 << 20), st.integers(0, 256 << 20))
def test_a_batch_budget_stays_within_its_bounds(
    observed: list[tuple[int, float]], seconds: float, max_bytes: int, initial: int
) -> None:
    budget = BatchBudget(seconds, max_bytes, initial_bytes=initial)
    least = min(256 * 1024, max_bytes)
    for input_bytes, cpu_seconds in observed:
        budget.observe(input_bytes, cpu_seconds)
        assert least <= budget.max_bytes <= max_bytes
        if seconds == 0.0:
            assert budget.max_bytes == max_bytes  # bytes only


@given(st.floats(1e5, 1e8), st.floats(0.2, 3.0))
def test_full_batches_at_a_steady_rate_set_the_bound_to_the_budgets_worth(
    rate: float, seconds: float
) -> None:
    """Batches that fill the bound, handled at ``rate`` bytes per CPU second: the bound
    becomes ``seconds * rate`` (within the bounds); a live batch far below it (slower per
    byte) does not move it; a dearer full batch lowers it, smoothed."""
    budget = BatchBudget(seconds, 64 << 20, initial_bytes=2 << 20)
    for _ in range(60):
        budget.observe(budget.max_bytes, budget.max_bytes / rate)
    expected = min(64 << 20, max(256 * 1024, seconds * rate))
    assert abs(budget.max_bytes - expected) <= 1e-6 * expected + 1
    settled = budget.max_bytes
    budget.observe(settled // 2 - 1, 10.0)  # under half the bound: not a full batch
    assert budget.max_bytes == settled
    budget.observe(settled, 4 * settled / rate)  # a full batch four times as dear: smoothed
    slower = min(64 << 20, max(256 * 1024, seconds * (rate / 4 + rate) / 2))
    assert abs(budget.max_bytes - slower) <= 1e-6 * slower + 1


def test_a_handled_batch_charges_its_cpu_to_the_stages_of_handling() -> None:
    events = [
        Click(event_id=f"e{i}", ts=1_000 + i, user_id=f"u{i % 7}", item_id=f"r{i % 13}",
              item_type="recipe", category="pasta")
        for i in range(300)
    ]  # fmt: skip
    batch = [FaustEvent(Message("t", 0, i, b"u"), encode_event(e)) for i, e in enumerate(events)]
    handler = outage_handler(DownRedis(failures=0), stopping=False)
    registry = handler.metrics.registry
    thread_cpu = time.thread_time()
    assert asyncio.run(handler.handle(batch)) is not None
    thread_cpu = time.thread_time() - thread_cpu

    def spent(stage: str) -> float:
        value = registry.get_sample_value(
            "appetence_batch_stage_cpu_seconds_total", {"stage": stage}
        )
        assert value is not None, stage
        return value

    stages = {stage: spent(stage) for stage in BATCH_STAGES}
    assert stages["slice"] > 0.0 and stages["decode"] > 0.0 and stages["output"] > 0.0
    assert stages["slice"] > stages["decode"]  # 300 events' slates against their decoding
    assert sum(stages.values()) <= thread_cpu
    # the slice stage, split by the processors' phases on the same clock
    exported = {
        phase: registry.get_sample_value(
            "appetence_slice_phase_cpu_seconds_total", {"phase": phase}
        )
        for phase in SLICE_PHASES
    }
    assert None not in exported.values(), exported
    phases = {phase: float(seconds or 0.0) for phase, seconds in exported.items()}
    assert phases["apply"] > 0.0 and phases["slates"] > 0.0
    assert sum(phases.values()) <= stages["slice"]


def test_a_user_whose_session_never_ends_shows_in_the_gauge_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One id with more events in a session than ``LONG_SESSION_EVENTS`` (an id many
    visitors share): the gauge shows its session, and a warning names it once."""
    handler = outage_handler(DownRedis(failures=0), stopping=False)
    handler.LONG_SESSION_EVENTS = 50  # (a class constant: set on this instance)
    registry = handler.metrics.registry
    offset = 0

    def batch(users: list[str]) -> list[FaustEvent]:
        nonlocal offset
        events = [
            PageView(event_id=f"e{offset + i}", ts=1_000 + offset + i, user_id=user)
            for i, user in enumerate(users)
        ]
        offset += len(users)
        return [FaustEvent(Message("t", 0, offset + i, b"u"), encode_event(e))
                for i, e in enumerate(events)]  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="stream.handler"):
        asyncio.run(handler.handle(batch(["anonymous"] * 30 + ["u1", "u2"])))
        assert registry.get_sample_value("appetence_longest_session_events") == 30
        assert not caplog.records
        for _ in range(3):
            asyncio.run(handler.handle(batch(["anonymous"] * 30 + ["u3"])))
    assert registry.get_sample_value("appetence_longest_session_events") == 120
    warnings = [r.getMessage() for r in caplog.records if "current session" in r.getMessage()]
    assert len(warnings) == 1 and "'anonymous' has 60 events" in warnings[0]


async def _gather_arrivals(
    gaps: list[float], seconds: float, idle: float | None, full_at: int | None = None
) -> tuple[float, int]:
    """Records arrive after the given gaps (a task); returns how long ``gather`` waited and
    how many records had arrived by then."""
    arrived: list[int] = []
    filled = asyncio.Event()

    async def feed() -> None:
        for gap in gaps:
            await asyncio.sleep(gap)
            arrived.append(1)
            if full_at is not None and len(arrived) >= full_at:
                filled.set()

    async def wait_full(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(filled.wait(), seconds)

    loop = asyncio.get_running_loop()
    feeder = asyncio.create_task(feed())
    started = loop.time()
    await gather(wait_full, filled.is_set, arrived.__len__, seconds, idle, loop.time)
    waited, count = loop.time() - started, len(arrived)
    feeder.cancel()
    return waited, count


def test_a_catch_up_batch_ends_once_the_backlog_is_drained() -> None:
    """The end of a backlog: 20 records back to back, then none. With an idle gap the batch
    is taken soon after the last one, not at the end of its 2 s window; without, it waits."""
    waited, count = asyncio.run(_gather_arrivals([0.002] * 20, seconds=2.0, idle=0.05))
    assert count == 20 and waited < 1.0
    waited, count = asyncio.run(_gather_arrivals([0.002] * 20, seconds=0.6, idle=None))
    assert count == 20 and waited >= 0.55


def test_a_catch_up_batch_waits_while_records_keep_arriving() -> None:
    """Records every 10 ms (under the 50 ms idle gap) for longer than the window: the batch
    gathers for its whole window; a batch that fills ends at once."""
    waited, count = asyncio.run(_gather_arrivals([0.01] * 100, seconds=0.4, idle=0.05))
    assert waited >= 0.39 and count >= 10
    waited, count = asyncio.run(_gather_arrivals([0.001] * 100, seconds=2.0, idle=0.5, full_at=5))
    assert count >= 5 and waited < 0.4


def deferring_handler(states: HeldStates, seconds: float, max_users: int, now: list[float]) -> Any:
    handler = outage_handler(DownRedis(failures=0), stopping=False)
    handler.states = states  # type: ignore[assignment]
    handler.commit_seconds, handler.commit_max_users = seconds, max_users
    handler.clock = lambda: now[0]
    return handler


class CountingStates(HeldStates):
    def __init__(self) -> None:
        super().__init__()
        self.persisted: list[list[str]] = []

    async def persist(self, states: Any, packed: Any = None) -> None:
        self.persisted.append(sorted(states))
        await super().persist(states, packed)


def view_batch(user_ids: list[str], first_offset: int) -> list[FaustEvent]:
    return [
        FaustEvent(
            Message("t", 0, first_offset + at, user_id.encode()),
            encode_event(
                PageView(event_id=f"e{first_offset + at}", ts=1_000 + at, user_id=user_id)
            ),
        )
        for at, user_id in enumerate(user_ids)
    ]


def test_changed_states_wait_for_the_commit_interval_and_go_out_once_per_user() -> None:
    states, now = CountingStates(), [100.0]
    handler = deferring_handler(states, seconds=1.0, max_users=100, now=now)
    assert handler.committed
    asyncio.run(handler.handle(view_batch(["a", "b"], 0)))  # new users: nothing to wait for
    assert handler.committed and states.persisted == [["a", "b"]]
    asyncio.run(handler.handle(view_batch(["a", "b"], 2)))  # back again: they wait
    assert not handler.committed and states.persisted == [["a", "b"]]
    assert states.uncommitted == 2
    now[0] += 0.5
    asyncio.run(handler.handle(view_batch(["a", "c"], 4)))  # half of them back: waits too
    assert not handler.committed and len(states.persisted) == 1 and states.uncommitted == 3
    now[0] += 0.5  # the first waiting batch ended 1 s ago: this one commits them all
    asyncio.run(handler.handle(view_batch(["a"], 6)))
    assert handler.committed and states.persisted[1:] == [["a", "b", "c"]]
    assert states.uncommitted == 0 and handler.metrics.state_commits._value.get() == 2

    asyncio.run(handler.handle(view_batch(["a", "d", "e"], 7)))  # mostly new users: at once
    assert handler.committed and states.persisted[2:] == [["a", "d", "e"]]

    asyncio.run(handler.handle(view_batch(["d"], 10)))
    assert not handler.committed
    now[0] += 0.5
    asyncio.run(handler.commit_when_due())  # between batches, before the interval: waits
    assert not handler.committed
    now[0] += 0.5
    asyncio.run(handler.commit_when_due())
    assert handler.committed and states.persisted[3:] == [["d"]]


def test_a_rebalance_commits_the_waiting_states_at_once() -> None:
    states, now, rebalancing = CountingStates(), [0.0], [False]
    handler = deferring_handler(states, seconds=60.0, max_users=100, now=now)
    handler.rebalancing = lambda: rebalancing[0]
    asyncio.run(handler.handle(view_batch(["a"], 0)))
    asyncio.run(handler.handle(view_batch(["a"], 1)))
    asyncio.run(handler.commit_when_due())
    assert not handler.committed
    rebalancing[0] = True  # Faust waits for every record to be acked
    asyncio.run(handler.commit_when_due())
    assert handler.committed and states.persisted == [["a"], ["a"]]


def test_too_many_waiting_users_commit_before_the_interval() -> None:
    states, now = CountingStates(), [0.0]
    handler = deferring_handler(states, seconds=60.0, max_users=3, now=now)
    asyncio.run(handler.handle(view_batch(["a", "b"], 0)))
    asyncio.run(handler.handle(view_batch(["a", "b"], 2)))
    assert not handler.committed
    asyncio.run(handler.handle(view_batch(["a", "c"], 4)))
    assert handler.committed and states.persisted == [["a", "b"], ["a", "b", "c"]]


def test_without_a_commit_interval_every_batch_persists_its_states() -> None:
    states = CountingStates()
    handler = deferring_handler(states, seconds=0.0, max_users=100, now=[0.0])
    for offset, users in enumerate((["a"], ["a", "b"])):
        asyncio.run(handler.handle(view_batch(users, 10 * offset)))
        assert handler.committed
    assert states.persisted == [["a"], ["a", "b"]]


class FakeRecord:
    def __init__(self, offset: int) -> None:
        self.message = Message("t", 0, offset, b"u")
        self.message.serialized_value_size = 10  # type: ignore[attr-defined]


class FakeStream:
    """What ``take_batches`` uses of a Faust stream: records handed to its processor by a
    feeder task (in bursts, each waiting for its gate), acks recorded."""

    def __init__(self, bursts: list[list[FakeRecord]], gates: list[asyncio.Event]) -> None:
        self.loop = asyncio.get_running_loop()
        self.bursts, self.gates = bursts, gates
        self.should_stop = False
        self.current_event: FakeRecord | None = None
        self.processors: list[Any] = []
        self.acked: list[int] = []
        self.channel = self
        self.enable_acks = True
        self.log = None

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration

    def add_processor(self, processor: Any) -> None:
        self.processors.append(processor)

    def _enable_passive(self, channel: Any) -> None:
        self.feeder = self.loop.create_task(self._feed())

    async def _feed(self) -> None:
        for burst, gate in zip(self.bursts, self.gates, strict=True):
            await gate.wait()
            for record in burst:
                self.current_event = record
                for processor in self.processors:
                    await processor(record)

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float) -> None:  # noqa: ASYNC109 (Faust's)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def ack(self, event: FakeRecord) -> None:
        self.acked.append(event.message.offset)


def test_handled_batches_stay_unacked_until_their_states_are_committed() -> None:
    """Batches whose states wait are acked together once committed: after a batch that
    committed, or when a gather finds nothing (the idle commit); a batch abandoned after
    them is not acked."""
    from stream.batching import take_batches

    async def run() -> tuple[list[list[int]], list[int], int]:
        gates = [asyncio.Event() for _ in range(3)]
        stream = FakeStream([[FakeRecord(2 * b), FakeRecord(2 * b + 1)] for b in range(3)], gates)
        state = {"committed": True, "commits": 0}

        async def commit() -> None:
            state["commits"] += 1
            state["committed"] = True
            gates[2].set()  # the third burst comes after the idle commit

        seen: list[list[int]] = []
        acked_then: list[list[int]] = []
        gates[0].set()
        async for batch in take_batches(
            stream, 2, lambda: 1 << 20, lambda since: 0.02,
            committed=lambda: bool(state["committed"]), commit=commit,
        ):  # fmt: skip
            seen.append([event.message.offset for event in batch])
            acked_then.append(list(stream.acked))
            state["committed"] = False  # this batch's states wait
            if len(seen) == 1:
                gates[1].set()  # the next burst arrives at once: no idle gap
            if len(seen) == 3:
                break  # abandoned
        stream.feeder.cancel()
        assert acked_then == [[], [], [0, 1, 2, 3]]
        return seen, stream.acked, int(state["commits"])

    seen, acked, commits = asyncio.run(asyncio.wait_for(run(), 10.0))  # a hang fails
    assert seen == [[0, 1], [2, 3], [4, 5]]
    assert acked == [0, 1, 2, 3] and commits == 1


def test_a_stopping_stream_commits_and_acks_what_was_handled() -> None:
    from stream.batching import take_batches

    async def run() -> tuple[list[int], int]:
        gate = asyncio.Event()
        stream = FakeStream([[FakeRecord(0), FakeRecord(1)]], [gate])
        state = {"committed": True, "commits": 0}

        async def commit() -> None:
            state["commits"] += 1
            state["committed"] = True

        gate.set()
        async for _ in take_batches(
            stream, 2, lambda: 1 << 20, lambda since: 0.02,
            committed=lambda: bool(state["committed"]), commit=commit,
        ):  # fmt: skip
            state["committed"] = False
            stream.should_stop = True
        stream.feeder.cancel()
        return stream.acked, int(state["commits"])

    assert asyncio.run(asyncio.wait_for(run(), 10.0)) == ([0, 1], 1)
