"""The worker's metrics that are more than a declaration, and the collector they time."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from processors.pipeline import SLICE_PHASES
from stream.memory import CollectorBetweenBatches
from stream.metrics import BATCH_STAGES, GC_GENERATIONS, GcPauseTimer, Metrics


def test_every_stage_phase_and_generation_is_exported_from_the_start() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for name, label, values in (
        ("appetence_batch_stage_cpu_seconds_total", "stage", BATCH_STAGES),
        ("appetence_slice_phase_cpu_seconds_total", "phase", SLICE_PHASES),
        ("appetence_gc_pause_seconds_count", "generation", GC_GENERATIONS),
    ):
        for value in values:
            assert registry.get_sample_value(name, {label: value}) == 0.0, (name, value)


def test_gc_pause_timer_times_real_collections_and_comes_off() -> None:
    """The timer, installed, sees the interpreter's own collections by generation; removed,
    it sees no more."""
    metrics = Metrics(CollectorRegistry())

    def full_collections() -> float:
        value = metrics.registry.get_sample_value(
            "appetence_gc_pause_seconds_count", {"generation": "2"}
        )
        assert value is not None
        return value

    timer = GcPauseTimer(metrics.gc_pause_seconds).install()
    try:
        timer.install()  # twice: still one callback
        assert gc.callbacks.count(timer) == 1
        gc.collect()
        gc.collect()
        assert full_collections() == 2.0
        paused = metrics.registry.get_sample_value(
            "appetence_gc_pause_seconds_sum", {"generation": "2"}
        )
        assert paused is not None and paused > 0.0
    finally:
        timer.remove()
    gc.collect()
    assert full_collections() == 2.0
    assert timer not in gc.callbacks


def test_the_collector_waits_for_the_batch_then_collects_at_the_next_allocation() -> None:
    """No young collection runs inside a batch however much it allocates; the first
    allocations after it run the one that was due (its survivors only are scanned then)."""
    young: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            young.append(1)

    threshold = gc.get_threshold()
    gc.set_threshold(1_000, 20, 100)
    gc.callbacks.append(count)
    kept: list[list[int]] = []
    try:
        gc.collect()
        pause = CollectorBetweenBatches()
        with pause.during_batch():
            before = len(young)
            kept.extend([i] for i in range(20_000))  # 20x the threshold, tracked
            inside = len(young) - before
        assert inside == 0
        assert gc.isenabled()
        kept.extend([i] for i in range(10))
        assert len(young) > before  # due since the batch: run once it was over
        # off: collections run inside the batch as usual
        pause.enabled = False
        with pause.during_batch():
            before = len(young)
            kept.extend([i] for i in range(20_000))
            inside = len(young) - before
        assert inside > 0
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*threshold)


def test_the_collector_stays_off_when_something_else_turned_it_off() -> None:
    gc.disable()
    try:
        with CollectorBetweenBatches().during_batch():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_batch_held_up_longer_than_its_limit_turns_the_collector_back_on() -> None:
    """A batch waiting on Redis through an outage must not keep the collector off for the
    whole outage: after ``max_seconds`` it is on again, and still on after the batch."""
    import asyncio

    async def batch(pause: CollectorBetweenBatches, waits: float) -> tuple[bool, bool]:
        with pause.during_batch():
            before = gc.isenabled()
            await asyncio.sleep(waits)
            after = gc.isenabled()
        return before, after

    held_up = asyncio.run(batch(CollectorBetweenBatches(max_seconds=0.05), waits=0.2))
    assert held_up == (False, True)
    assert gc.isenabled()
    quick = asyncio.run(batch(CollectorBetweenBatches(max_seconds=5.0), waits=0.01))
    assert quick == (False, False)
    assert gc.isenabled()
