"""Adaptive batching for the events agent: take small batches when caught up, large ones
when behind.

Faust's ``Stream.take_events(max_, within)`` waits a fixed ``within`` per batch. The worker
processes a batch synchronously, so nothing is fetched meanwhile: what the next batch holds is
what the fetcher delivers in that window (~7 records of the benchmark's 100-event envelopes in
50 ms, however far behind the worker is). A batch's cost is mostly one slate build per touched
user, so larger batches coalesce more events per user: at 500 events per batch the slice builds
~0.6 slates per event, at 8,000 far fewer (docs/benchmarks.md). ``take_batches`` is Faust's
``take_events`` (faust-streaming 0.15.3, same buffering and the same acks: an event is acked
only after the batch holding it was handled) with the window asked for on every batch, so the
caller can widen it while the consumer lags (``batch_window``), and with the time since the
previous batch was taken, so that a batch that took longer than the window is followed at once
(a cadence, not a pause after every batch: see ``batch_window``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mode.utils.aiter import aiter as channel_iterator
from mode.utils.futures import notify

#: The least a batch is gathered for: long enough for the fetcher to hand over what arrived
#: while the previous batch was handled (the event loop was busy then), short against the
#: 250 ms latency target.
MIN_GATHER_SECONDS = 0.005


def batch_window(
    behind_seconds: float,
    within: float,
    catch_up_within: float,
    catch_up_after: float,
    since_taken: float = 0.0,
) -> float:
    """How long to gather the next batch.

    While the worker is behind (the last batch's oldest record had waited ``catch_up_after``
    seconds or more when it was taken): ``catch_up_within``, whole, as larger batches coalesce
    more events per user. Otherwise batches are taken every ``within`` seconds: what is left of
    ``within`` since the previous batch was taken (``since_taken``), and at least
    ``MIN_GATHER_SECONDS``. A batch that took longer than ``within`` to handle is followed at
    once by the events that arrived meanwhile, instead of after another full window: an
    event's latency is about two batch cycles, and a fixed pause in every cycle adds up to
    ``within`` to each.

    >>> batch_window(0.3, within=0.05, catch_up_within=0.5, catch_up_after=2.0)
    0.05
    >>> round(batch_window(0.3, within=0.05, catch_up_within=0.5, catch_up_after=2.0,
    ...                    since_taken=0.02), 3)
    0.03
    >>> batch_window(0.3, within=0.05, catch_up_within=0.5, catch_up_after=2.0, since_taken=0.2)
    0.005
    >>> batch_window(30.0, within=0.05, catch_up_within=0.5, catch_up_after=2.0, since_taken=3.0)
    0.5
    >>> batch_window(30.0, within=0.05, catch_up_within=0.5, catch_up_after=0.0)  # 0: never
    0.05
    """
    if catch_up_after > 0.0 and behind_seconds >= catch_up_after:
        return max(within, catch_up_within)
    return max(MIN_GATHER_SECONDS, within - since_taken)


async def gather(
    wait_full: Callable[[float], Awaitable[object]],
    full: Callable[[], bool],
    arrived: Callable[[], int],
    seconds: float,
    idle: float | None,
    clock: Callable[[], float],
) -> None:
    """Wait ``seconds`` for a batch to gather, or less: until it is ``full()`` (or the stream
    stops: ``wait_full(at_most)`` returns early then), or, with an ``idle`` shorter than
    ``seconds``, once records stopped arriving: ``arrived()`` (the records gathered so far)
    is non-zero and did not grow over ``idle`` seconds.

    A worker that is behind gathers each batch for a long window (the catch-up window, ~10x
    the cadence), as larger batches cost less per event. When it reaches the end of its
    backlog, the last batch would otherwise wait out that window for records that are not
    there: at the end of a 100,000-event drain that was ~0.5 s of ~6 s (docs/benchmarks.md).
    While there is a backlog the fetcher hands records over back to back, so a pause of
    ``idle`` means there is nothing more to fetch now.

    >>> import asyncio
    >>> async def demo(arrivals, seconds, idle):
    ...     now, count = [0.0], [0]
    ...     async def wait_full(seconds):
    ...         now[0] += seconds
    ...         count[0] = sum(1 for at in arrivals if at <= now[0])
    ...     await gather(wait_full, lambda: False, lambda: count[0], seconds, idle, lambda: now[0])
    ...     return round(now[0], 3), count[0]
    >>> asyncio.run(demo([0.01, 0.02, 0.03], seconds=0.5, idle=0.05))  # drained: ends early
    (0.1, 3)
    >>> asyncio.run(demo([0.01, 0.06, 0.11, 0.16], seconds=0.2, idle=0.05))  # still coming
    (0.2, 4)
    >>> asyncio.run(demo([], seconds=0.5, idle=0.05))  # nothing at all: the whole window
    (0.5, 0)
    >>> asyncio.run(demo([0.01], seconds=0.05, idle=0.05))  # no idle end within one window
    (0.05, 1)
    """
    if idle is None or idle >= seconds:
        await wait_full(seconds)
        return
    deadline = clock() + seconds
    count = arrived()
    while (left := deadline - clock()) > 0.0:
        await wait_full(min(idle, left))
        if full():
            return
        now = arrived()
        if now and now == count:
            return
        count = now


#: The input bound of a worker's first full batches, before it has measured its rate.
INITIAL_BATCH_BYTES = 2 * 1024 * 1024


class BatchBudget:
    """How much input the next batch may hold, so that handling it takes about ``seconds``.

    A worker handles a batch synchronously: while it runs nothing else on its event loop does
    (consumer heartbeats, fetches, the metrics page). Larger batches coalesce more events per
    user, so a worker that is behind catches up faster the larger its batches are (a 20,000-
    event batch cost ~20% less CPU per event than a 5,000-event one, docs/benchmarks.md): a
    fixed byte bound is either slow to catch up on a fast machine or blocks the loop for
    seconds on a slow one. This bound follows the input bytes a batch handles per CPU second
    (a wait for Redis or the broker is not handling), smoothed, from the batches that filled
    at least half of the bound (a live batch of a few events, dear per event, says little of
    what a full one costs); it stays within ``min_bytes`` and ``max_bytes`` (memory: a batch's
    decoded events, touched states and slates are held until it is done). ``seconds`` 0: the
    bound is ``max_bytes``.

    >>> budget = BatchBudget(seconds=1.0, max_bytes=8 << 20, initial_bytes=2 << 20)
    >>> budget.max_bytes
    2097152
    >>> budget.observe(input_bytes=2 << 20, cpu_seconds=0.5)  # 4 MiB a second
    >>> budget.max_bytes  # a second's worth
    4194304
    >>> budget.observe(input_bytes=100_000, cpu_seconds=0.1)  # a small batch: not counted
    >>> budget.max_bytes
    4194304
    >>> budget.observe(input_bytes=4 << 20, cpu_seconds=0.25)  # 16 MiB/s, smoothed: 10
    >>> budget.max_bytes  # within max_bytes
    8388608
    """

    #: Weight of the newest batch in the smoothed rate.
    SMOOTHING = 0.5

    def __init__(
        self,
        seconds: float,
        max_bytes: int,
        initial_bytes: int | None = None,
        min_bytes: int = 256 * 1024,
    ) -> None:
        self.seconds = seconds
        self.min_bytes = min(min_bytes, max_bytes)
        self.limit = max_bytes
        initial = initial_bytes if seconds > 0.0 and initial_bytes else max_bytes
        self.max_bytes = max(self.min_bytes, min(initial, max_bytes))
        self.bytes_per_second: float | None = None

    def observe(self, input_bytes: int, cpu_seconds: float) -> None:
        """A batch of ``input_bytes`` was handled in ``cpu_seconds`` of the worker's CPU."""
        if self.seconds <= 0.0 or cpu_seconds <= 0.0 or 2 * input_bytes < self.max_bytes:
            return
        rate = input_bytes / cpu_seconds
        if self.bytes_per_second is not None:
            rate = self.SMOOTHING * rate + (1.0 - self.SMOOTHING) * self.bytes_per_second
        self.bytes_per_second = rate
        self.max_bytes = int(max(self.min_bytes, min(self.limit, self.seconds * rate)))


async def take_batches(
    stream: Any,
    max_records: int,
    max_bytes: Callable[[], int],
    window: Callable[[float], float],
    idle: float | None = None,
    committed: Callable[[], bool] = lambda: True,
    commit: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[list[Any]]:
    """Yield lists of up to ``max_records`` events (records) holding up to ``max_bytes()``
    of input (asked at every record; a record that crosses it ends the batch), each gathered
    for at most ``window(seconds since the previous batch was taken)`` seconds (asked anew for every
    wait; after a wait that found nothing, counted from the end of that wait), and, in a
    window longer than ``idle``, only until no record arrived for ``idle`` seconds
    (``gather``). Events are acked once the consumer of a batch asks for the next one, as in
    Faust's ``take_events``, and only then: a batch the consumer abandons (raising, or the
    worker stopping) is not acked.

    A handled batch whose effects are not all durable yet (``committed()`` false: its user
    states wait to go to the changelog with later batches') stays unacked, with every batch
    after it, until ``committed()`` holds after a batch or after a wait that found no
    record, which first calls ``commit`` (to commit if the states waited long enough:
    traffic may have stopped, and a rebalance waits for every record to be acked). The loop
    ending as the stream stops commits too; a batch abandoned mid-way is not acked, nor are
    those still waiting before it."""
    buffer: list[Any] = []
    buffered_bytes = 0
    events: list[Any] = []
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[Any] | None = None
    channel_it = channel_iterator(stream.channel)

    # Faust feeds this processor from the stream in the background (enable_passive below).
    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming, buffered_bytes
        try:
            if buffer_consuming is not None:  # a batch is being handled: wait for it
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            events.append(event)
            buffered_bytes += event.message.serialized_value_size or 0
            if len(buffer) >= max_records or buffered_bytes >= max_bytes():
                buffer_full.set()
                buffer_consumed.clear()  # never more than max_records per batch
                await stream.wait(buffer_consumed)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            stream.log.exception("Error adding to take buffer: %r", error)
            await stream.crash(error)
        return value

    stream.enable_acks = False  # acked here, after the batch was handled
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    clock = stream.loop.time
    taken_at = clock()

    async def wait_full(seconds: float) -> None:
        await stream.wait_for_stopped(buffer_full, timeout=seconds)

    def full() -> bool:
        return buffer_full.is_set() or bool(stream.should_stop)

    handled_unacked: list[Any] = []  # handled, their effects not all durable yet

    async def ack_handled() -> None:
        for event in handled_unacked:
            await stream.ack(event)
        handled_unacked.clear()

    while not stream.should_stop:
        await gather(wait_full, full, buffer.__len__, window(clock() - taken_at), idle, clock)
        taken_at = clock()  # an idle worker waits whole windows, not MIN_GATHER_SECONDS
        if not buffer:
            if handled_unacked:
                if commit is not None:
                    await commit()
                if committed():
                    await ack_handled()
            continue
        buffer_consuming = stream.loop.create_future()
        handled = False
        try:
            yield list(events)
            handled = True  # the caller asked for the next batch: this one is done
        finally:
            buffer.clear()
            buffered_bytes = 0
            # A batch whose handling was abandoned (the worker stopping mid-batch) is not
            # acked: its offsets are not committed and it is replayed (Faust's take_events
            # acks it on close, which would skip it).
            if handled:
                handled_unacked += events
                if committed():
                    await ack_handled()
            events.clear()
            notify(buffer_consuming)
            buffer_full.clear()
            buffer_consumed.set()
    if handled_unacked and commit is not None:  # stopping: what was handled becomes durable
        await commit()
        if committed():
            await ack_handled()
