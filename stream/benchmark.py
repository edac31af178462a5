"""``appetence bench``: throughput of each stage of the hot path, and end to end.

Stages run in-process on simulated events (the same code the worker runs); the end-to-end
run starts the embedded broker and Redis, a real worker process, and produces with the
simulator as fast as it can.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from processors import cooccurrence as cooccurrence_module
from processors import slate_kernel
from processors.events import DecodeLimits, Event, EventDecoder, encode_batch, encode_event
from processors.pipeline import SLICE_PHASES, SliceConfig, SliceProcessor, compile_kernels
from processors.simulator import SimulationConfig, TrafficModel
from processors.slates import encode_slate
from processors.user_state import UserState
from state.records import pack_user_state
from state.redis_writer import FieldWrite, UserHashWriter, pack_with_hiredis
from stream.catalog_load import publish_catalog
from stream.compiled import MODULES as COMPILED_MODULES
from stream.compiled import installed as compiled_installed
from stream.compiled import status as compiled_status
from stream.config import Settings, load_settings
from stream.embedded import embedded_stack, free_port, spawn, wait_for_port
from stream.live import buckets, quantile, scrape, total
from stream.supervisor import spawn_worker, worker_env
from stream.topics import aiokafka_client_options, ensure_topics, make_producer, partition_for

_T = TypeVar("_T")

_json = msgspec.json.Encoder()


def _events(n: int) -> list[Event]:
    now = int(time.time() * 1000)
    # Start a day back so that event time stays in the past (and valid) for ~10M events.
    model = TrafficModel(SimulationConfig(seed=1), start_ms=now - 86_400_000)
    return [event for _, event in zip(range(n), model.events(), strict=False)]


def _envelopes(events: list[Event], partitions: int, size: int = 100) -> list[tuple[int, bytes]]:
    by_partition: dict[int, list[Event]] = {}
    records = []
    for event in events:
        partition = partition_for(event.user_id, partitions)
        batch = by_partition.setdefault(partition, [])
        batch.append(event)
        if len(batch) == size:
            records.append((partition, encode_batch(batch)))
            by_partition[partition] = []
    records += [(p, encode_batch(b)) for p, b in by_partition.items() if b]
    return records


#: The samples ``_handled`` adds up: what the bench polls for, several times a second, while
#: workers drain (only these: the whole page would cost the workers ~5 ms of CPU a poll).
HANDLED_SAMPLES = ("appetence_events_consumed_total", "appetence_events_rejected_total")


#: When a worker's last batch ended (``time.time()``).
LAST_BATCH = "appetence_last_batch_timestamp_seconds"


def _handled(samples: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(total(samples, name) for name in HANDLED_SAMPLES)


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def bench_decode(events: list[Event]) -> dict[str, float]:
    decoder = EventDecoder(DecodeLimits())
    now = int(time.time() * 1000)
    singles = [encode_event(e) for e in events]
    started = time.perf_counter()
    for raw in singles:
        decoder.decode_record(raw, now)
    single_seconds = time.perf_counter() - started
    batches = [encode_batch(events[i : i + 100]) for i in range(0, len(events), 100)]
    started = time.perf_counter()
    for raw in batches:
        decoder.decode_record(raw, now)
    batch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for raw in singles:
        json.loads(raw)
    stdlib_seconds = time.perf_counter() - started
    return {
        "msgspec_validated_single_records_events_per_second": _rate(len(events), single_seconds),
        "msgspec_validated_batch_records_events_per_second": _rate(len(events), batch_seconds),
        "stdlib_json_untyped_events_per_second": _rate(len(events), stdlib_seconds),
    }


def profile_slice(
    events: list[Event], batch_size: int = 500, top: int = 15
) -> list[dict[str, Any]]:
    """Where the slice's time goes: cProfile over the processors (functions by cumulative
    time, as shares of the whole run). Profiling inflates the total ~3x; shares hold.
    cProfile sees no function inside a compiled module (``stream.compiled``): when the slice
    runs compiled here, it is profiled as plain Python in a child process."""
    import cProfile
    import pstats

    if getattr(sys.modules[SliceProcessor.__module__], "__compiled__", None):
        return _in_plain_python(profile_slice, events, batch_size, top)

    processor = SliceProcessor(load_settings().slice_config())
    for record in _model().catalog_records():
        processor.apply_catalog(record)
    states: dict[str, UserState] = {}
    now = int(time.time() * 1000)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(0, len(events), batch_size):
        result = processor.process_batch([(0, e) for e in events[i : i + batch_size]], states, now)
        states.update(result.touched)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    whole = max(cumulative for _, _, _, cumulative, _ in entries.values())
    ranked = sorted(entries.items(), key=lambda kv: kv[1][3], reverse=True)
    out = []
    for (filename, line, name), (_, calls, _, cumulative, _) in ranked:
        if "/processors/" not in filename:
            continue
        module = filename.rsplit("/processors/", 1)[1]
        out.append(
            {
                "function": f"processors/{module}:{line} {name}",
                "calls": calls,
                "share_of_slice": round(cumulative / whole, 3),
            }
        )
        if len(out) == top:
            break
    return out


def _compiled_count() -> int:
    state = compiled_status()
    return len(state["compiled_modules_fresh"]) if compiled_installed() else 0


def _in_plain_python(function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a child process whose modules are not compiled."""
    import concurrent.futures
    import multiprocessing

    from stream.compiled import SWITCH

    previous = os.environ.get(SWITCH)
    os.environ[SWITCH] = "0"  # what the child starts with
    try:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(function, *args).result()
    finally:
        if previous is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = previous


def _run_slice(
    events: list[Event], batch_size: int
) -> tuple[float, float, int, dict[str, UserState], SliceProcessor]:
    """The worker's processors as configured by default, with the simulator's catalog (so
    banner slates are built too), over ``events`` in batches as the agent takes them:
    (seconds, of which applying the events (CPU), slates encoded, the users' states, the
    processor)."""
    processor = SliceProcessor(load_settings().slice_config())
    for record in _model().catalog_records():
        processor.apply_catalog(record)
    states: dict[str, UserState] = {}
    now = int(time.time() * 1000)
    slates, applying = 0, 0.0
    started = time.perf_counter()
    for i in range(0, len(events), batch_size):
        batch = [(0, e) for e in events[i : i + batch_size]]
        result = processor.process_batch(batch, states, now, time.thread_time)
        applying += result.phase_seconds["apply"]
        states.update(result.touched)
        for user_slates in result.slates.values():
            for slate in user_slates.values():
                encode_slate(slate)
                slates += 1
    return time.perf_counter() - started, applying, slates, states, processor


#: The share of events ``bench_slice`` also runs under one user id: a site that sends one id
#: for every anonymous visitor, or a bot. That user is past every per-user cap (the dedup
#: window's 256 ids, its history) within seconds, so a cap that costs more once reached
#: shows here (the dedup window once cost ~32 µs per such event, against ~4).
SHARED_USER_SHARE = 0.2
SHARED_USER_ID = "anonymous"


def with_shared_user(events: list[Event], share: float = SHARED_USER_SHARE) -> list[Event]:
    """The events with every (1 / ``share``)-th one's user replaced by ``SHARED_USER_ID``.

    >>> events = with_shared_user(_events(10), share=0.5)
    >>> [event.user_id == SHARED_USER_ID for event in events[:4]]
    [True, False, True, False]
    """
    every = round(1 / share)
    return [
        msgspec.structs.replace(event, user_id=SHARED_USER_ID) if at % every == 0 else event
        for at, event in enumerate(events)
    ]


def bench_slice(events: list[Event], batch_size: int = 500) -> dict[str, float]:
    """The slice in-process (``_run_slice``), on the simulator's events and on the same
    events with a fifth of them from one shared user id (``with_shared_user``)."""
    seconds, applying, slates, states, processor = _run_slice(events, batch_size)
    shared_seconds, shared_applying, *_ = _run_slice(with_shared_user(events), batch_size)
    state_bytes = sum(len(pack_user_state(state)) for state in states.values())
    per_event = 1e6 / max(len(events), 1)
    return {
        "slice_events_per_second": _rate(len(events), seconds),
        "slates_per_second": _rate(slates, seconds),
        # a fifth of the events from one user: about as fast (fewer users to build slates
        # for), unless a per-user cap costs more once reached; the events' application (the
        # per-user state, where the caps are) about as costly per event
        "slice_events_per_second_with_shared_user": _rate(len(events), shared_seconds),
        "slice_apply_microseconds_per_event": round(applying * per_event, 1),
        "slice_apply_microseconds_per_event_with_shared_user": round(
            shared_applying * per_event, 1
        ),
        "users": len(states),
        # What a user costs in the changelog (and, decoded, roughly in memory).
        "user_state_bytes_per_user": round(state_bytes / max(len(states), 1)),
        "cooccurrence_entries_per_user": round(
            processor.cooccurrence.size() / max(len(states), 1), 1
        ),
    }


#: Batch sizes the cost model is fitted over, from live-sized batches to the catch-up
#: batches a worker that is behind takes (~1 s of its CPU: 10,000-20,000 simulated events).
COST_MODEL_BATCHES = (20, 100, 500, 5_000, 20_000)


def fit_batch_cost(points: Sequence[tuple[int, float, float]]) -> dict[str, float]:
    """Least squares of the cost per event at each batch size as a cost per event, per
    touched user and per batch: ``µs per event = per_event + per_user × (touched users per
    event) + per_batch / (events per batch)``, from ``(events per batch, µs per event,
    touched users per event)`` points. No cost is negative: where the plain fit makes one so
    (measurement noise: the terms are nearly collinear over a few sizes), the best fit
    without it is taken (non-negative least squares, over the subsets of the three terms).

    >>> def cost(size, users):
    ...     return 20.0 + 200.0 * users + 1_000.0 / size
    >>> sizes = ((10, 0.9), (100, 0.7), (5_000, 0.2))
    >>> fitted = fit_batch_cost([(size, cost(size, users), users) for size, users in sizes])
    >>> [round(fitted[name], 6) for name in sorted(fitted)]
    [1.0, 20.0, 200.0]
    >>> noisy = [(20, 190.5, 0.891), (100, 162.0, 0.74), (500, 138.9, 0.579), (5_000, 60.1, 0.194)]
    >>> [round(value, 1) for value in fit_batch_cost(noisy).values()]  # unconstrained: -0.1 ms
    [25.8, 186.4, 0.0]
    """
    design = np.array([[1.0, users, 1.0 / size] for size, _, users in points])
    cost = np.array([per_event for _, per_event, _ in points])
    best: tuple[float, npt.NDArray[np.float64]] | None = None
    for terms in itertools.product((True, False), repeat=3):  # all three first
        if not any(terms):
            continue
        kept = np.flatnonzero(terms)
        fitted, *_ = np.linalg.lstsq(design[:, kept], cost, rcond=None)
        if np.any(fitted < 0.0):
            continue
        residual = float(np.sum((design[:, kept] @ fitted - cost) ** 2))
        if best is None or residual < best[0] - 1e-9:
            coefficients = np.zeros(3)
            coefficients[kept] = fitted
            best = (residual, coefficients)
    per_event, per_user, per_batch = best[1] if best is not None else np.zeros(3)
    return {
        "per_event_microseconds": float(per_event),
        "per_touched_user_microseconds": float(per_user),
        "per_batch_milliseconds": float(per_batch) / 1000.0,
    }


#: What the latency target asks of a worker at half its max rate (docs/benchmarks.md, "What
#: the two remaining targets need"): batches of 100 ms of traffic, handled while the worker is
#: busy at most 70% of the time (above it queues, and the batches, grow: p99 in seconds).
HALF_RATE_BATCH_SECONDS = 0.1
HALF_RATE_BUSY_LIMIT = 0.7
#: A worker's CPU outside its batches (Faust's and aiokafka's timers and fetch round trips),
#: as a share of a core: an idle worker's ~3-4% (docs/benchmarks-history.md, thirty-ninth
#: session), rounded up.
BACKGROUND_CORE_SHARE = 0.05


def half_rate_busy(
    cost: Mapping[str, float],
    users_at: Callable[[int], float],
    drain_batch: int,
    background: float = BACKGROUND_CORE_SHARE,
    per_user: float | None = None,
) -> float:
    """The share of its time a worker with the fitted ``cost`` (``fit_batch_cost``; its per
    touched user cost replaced by ``per_user`` when given) is busy at half its max rate, in
    ``HALF_RATE_BATCH_SECONDS`` batches. The max rate is its drain's in ``drain_batch``-event
    batches; ``users_at(n)``: touched users per event in ``n``-event batches of the traffic.
    Mostly the costs' ratios count: a worker twice as fast at everything drains twice as
    fast and is offered twice the half rate; only its 100 ms batches, twice as large, touch
    fewer users per event (below, where they touch as many, it is exactly as busy).

    >>> cost = {"per_event_microseconds": 20.0, "per_touched_user_microseconds": 200.0,
    ...         "per_batch_milliseconds": 0.0}
    >>> def users(n): return 1.0 if n < 5_000 else 0.1  # a user's events coalesce in drains
    >>> round(half_rate_busy(cost, users, 10_000, background=0.0), 3)
    2.75
    >>> faster = {name: value / 2 for name, value in cost.items()}
    >>> half_rate_busy(faster, users, 10_000, background=0.0) == half_rate_busy(
    ...     cost, users, 10_000, background=0.0)
    True
    >>> round(half_rate_busy(cost, lambda n: 0.5, 10_000, background=0.0), 3)  # no coalescing
    0.5
    """
    per_event = cost["per_event_microseconds"]
    user = cost["per_touched_user_microseconds"] if per_user is None else per_user
    batch = cost["per_batch_milliseconds"] * 1000.0

    def microseconds_per_event(size: int) -> float:
        return per_event + user * users_at(size) + batch / size

    drain_rate = (1.0 - background) / microseconds_per_event(drain_batch) * 1e6
    half = drain_rate / 2
    size = max(1, round(half * HALF_RATE_BATCH_SECONDS))
    return background + half * microseconds_per_event(size) / 1e6


def per_user_budget(
    cost: Mapping[str, float],
    users_at: Callable[[int], float],
    drain_batch: int,
    background: float = BACKGROUND_CORE_SHARE,
    busy_limit: float = HALF_RATE_BUSY_LIMIT,
) -> float:
    """The highest cost per touched user (µs) at which ``half_rate_busy`` stays within
    ``busy_limit``, the other costs as fitted: what the latency target leaves the per-user
    work (bisection: the share only grows with the per-user cost, as half-rate batches
    touch more users per event than drain batches). 0.0 when even none is too much.

    >>> cost = {"per_event_microseconds": 20.0, "per_touched_user_microseconds": 200.0,
    ...         "per_batch_milliseconds": 0.0}
    >>> def users(n): return 1.0 if n < 5_000 else 0.1
    >>> budget = per_user_budget(cost, users, 10_000, background=0.0)
    >>> round(budget, 2), round(half_rate_busy(cost, users, 10_000, 0.0, budget), 3)
    (9.3, 0.7)
    """
    low, high = 0.0, max(cost["per_touched_user_microseconds"], 1.0)
    if half_rate_busy(cost, users_at, drain_batch, background, low) > busy_limit:
        return 0.0
    while half_rate_busy(cost, users_at, drain_batch, background, high) <= busy_limit:
        low, high = high, 2 * high
        if high > 1e9:
            return high  # no per-user cost breaks it (no coalescing: a ratio of 1)
    for _ in range(40):
        middle = (low + high) / 2
        if half_rate_busy(cost, users_at, drain_batch, background, middle) <= busy_limit:
            low = middle
        else:
            high = middle
    return low


def bench_batch_cost(
    events: list[Event],
    sizes: Sequence[int] = COST_MODEL_BATCHES,
    warm_up: int = 10_000,
    measured: int = 20_000,
) -> dict[str, Any]:
    """What the worker's CPU per event is made of: the slice, the slates' and profiles' JSON
    and the states' records (what a batch costs in the handler, Redis and the broker aside;
    each point also splits it into the slice and that output),
    measured per batch size over the same events after the same warm-up (so the models and
    states are those of a worker already running), then fitted (``fit_batch_cost``). Small
    batches touch a new user with almost every event; a drain batch with one in five."""
    warm_up = min(warm_up, len(events) // 2)
    measured = min(measured, len(events) - warm_up)
    if measured <= 0:
        return {}
    # a size above the events measured would time one smaller batch under its label
    sizes = sorted({min(size, measured) for size in sizes})
    settings = load_settings()
    catalog = _model().catalog_records()
    now = int(time.time() * 1000)
    points = []
    shares: list[tuple[float, float]] = []  # (the slice, its output) µs per event, per size
    phase_points: list[dict[str, float]] = []  # the slice by phase, µs per event, per size
    for size in sizes:
        processor = SliceProcessor(settings.slice_config())
        for record in catalog:
            processor.apply_catalog(record)
        states: dict[str, UserState] = {}
        for start in range(0, warm_up, 5_000):
            end = min(start + 5_000, warm_up)
            batch = [(0, event) for event in events[start:end]]
            states.update(processor.process_batch(batch, states, now).touched)
        in_slice = in_output = 0.0
        touched = 0
        phases = dict.fromkeys(SLICE_PHASES, 0.0)
        for start in range(warm_up, warm_up + measured, size):
            end = min(start + size, warm_up + measured)
            batch = [(0, event) for event in events[start:end]]
            began = time.process_time()
            result = processor.process_batch(batch, states, now, time.process_time)
            sliced = time.process_time()
            for phase, seconds in result.phase_seconds.items():
                phases[phase] += seconds
            for user_id, slates in result.slates.items():
                for slate in slates.values():
                    encode_slate(slate)
                _json.encode(result.profiles[user_id])
            for state in result.touched.values():
                pack_user_state(state)
            in_slice += sliced - began
            in_output += time.process_time() - sliced
            states.update(result.touched)
            touched += len(result.touched)
        points.append((size, (in_slice + in_output) / measured * 1e6, touched / measured))
        shares.append((in_slice / measured * 1e6, in_output / measured * 1e6))
        phase_points.append({phase: spent / measured * 1e6 for phase, spent in phases.items()})
    # each phase's cost per touched user, fitted alike: where a touched user's cost goes
    per_user_by_phase = {
        phase: fit_batch_cost(
            [
                (size, spent[phase], users)
                for (size, _, users), spent in zip(points, phase_points, strict=True)
            ]
        )["per_touched_user_microseconds"]
        for phase in SLICE_PHASES
    }
    fitted = fit_batch_cost(points)
    drain_batch = sizes[-1]
    counted: dict[int, float] = {}

    def users_at(size: int) -> float:  # over the events measured, as the points were
        if size not in counted:
            counted[size] = users_per_event(events[warm_up : warm_up + measured], size)
        return counted[size]

    return {
        # what the models and states had learned first (a short run's cost is an early
        # worker's: fewer neighbours and interests per user than a worker that has run long)
        "batch_cost_warm_up_events": warm_up,
        "batch_cost_measured_events": measured,
        "batch_cost_points": [
            {
                "events_per_batch": size,
                "microseconds_per_event": round(per_event, 1),
                # of which the processors (decode to state, learning, slates, banners,
                # loyalty) and what their results are turned into (JSON, state records)
                "slice_microseconds_per_event": round(in_slice, 1),
                "output_microseconds_per_event": round(in_output, 1),
                "touched_users_per_event": round(users, 3),
                # the slice by its phases (``SLICE_PHASES``)
                "slice_phase_microseconds_per_event": {
                    phase: round(spent, 1) for phase, spent in by_phase.items()
                },
            }
            for (size, per_event, users), (in_slice, in_output), by_phase in zip(
                points, shares, phase_points, strict=True
            )
        ],
        "batch_cost_per_touched_user_by_phase_microseconds": {
            phase: round(cost, 1) for phase, cost in per_user_by_phase.items()
        },
        **{f"batch_cost_{name}": round(value, 3) for name, value in fitted.items()},
        # the latency target's terms with these costs (``half_rate_busy``): the share of its
        # time a worker is busy at half its max rate (the drain's batches taken as the
        # largest size measured), and the per-user cost that would bring it to 0.7
        "batch_cost_drain_batch_events": drain_batch,
        "batch_cost_half_rate_busy_predicted": round(
            half_rate_busy(fitted, users_at, drain_batch), 3
        ),
        "batch_cost_per_user_budget_microseconds": round(
            per_user_budget(fitted, users_at, drain_batch), 1
        ),
    }


#: The numba kernels the slates call (``processors.slate_kernel``; the first three through
#: ``processors.cooccurrence``), as ``bench_slate_kernels`` times them.
SLATE_KERNELS = (
    "first_hop", "second_hop", "strongest_voters", "group_candidates", "popular_rows",
    "merge_rows", "write_slates",
)  # fmt: skip


@contextmanager
def timed_kernels(spent: dict[str, float]) -> Iterator[None]:
    """Within it, each ``SLATE_KERNELS`` call adds its thread CPU seconds to ``spent`` (the
    module attributes the callers look up are wrapped, and restored on exit)."""
    patched = []
    for module in (slate_kernel, cooccurrence_module):
        for name in SLATE_KERNELS:
            original = vars(module).get(name)
            if original is None:
                continue

            def timed(*args: Any, _kernel: Any = original, _name: str = name) -> Any:
                began = time.thread_time()
                try:
                    return _kernel(*args)
                finally:
                    spent[_name] = spent.get(_name, 0.0) + time.thread_time() - began

            setattr(module, name, timed)
            patched.append((module, name, original))
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def bench_slate_kernels(
    events: list[Event],
    sizes: Sequence[int] = (100, 300, 1_000, 3_000),
    warm_up: int = 10_000,
    per_size: int = 6_000,
) -> dict[str, Any]:
    """How much of a touched user's slates the compiled kernels themselves take, per batch
    size: the slice over ``per_size`` events per size after ``warm_up`` events, in
    batches of that size, each kernel's CPU per touched user (and the slates phase's, and
    the whole slice's, for scale). What compiling the rest of the per-user path could not
    remove (docs/benchmarks.md)."""
    warm_up = min(warm_up, len(events) // 2)
    per_size = min(per_size, (len(events) - warm_up) // max(len(sizes), 1))
    if per_size <= 0:
        return {}
    processor = SliceProcessor(load_settings().slice_config())
    for record in _model().catalog_records():
        processor.apply_catalog(record)
    states: dict[str, UserState] = {}
    now = int(time.time() * 1000)
    for start in range(0, warm_up, 5_000):
        batch = [(0, event) for event in events[start : min(start + 5_000, warm_up)]]
        states.update(processor.process_batch(batch, states, now).touched)
    by_size: dict[str, dict[str, float]] = {}
    at = warm_up
    for size in sizes:
        spent: dict[str, float] = {}
        users, slates, sliced = 0, 0.0, 0.0
        with timed_kernels(spent):
            for start in range(at, at + per_size, size):
                batch = [(0, event) for event in events[start : min(start + size, at + per_size)]]
                began = time.thread_time()
                result = processor.process_batch(batch, states, now, time.thread_time)
                sliced += time.thread_time() - began
                slates += result.phase_seconds["slates"]
                states.update(result.touched)
                users += len(result.touched)
        at += per_size
        per_user = {name: spent.get(name, 0.0) / max(users, 1) * 1e6 for name in SLATE_KERNELS}
        by_size[str(size)] = {
            **{name: round(value, 1) for name, value in per_user.items()},
            "all_kernels": round(sum(per_user.values()), 1),
            "slates_phase": round(slates / max(users, 1) * 1e6, 1),
            "slice": round(sliced / max(users, 1) * 1e6, 1),
        }
    return {"slate_kernels_per_touched_user_microseconds": by_size}


def _click_stream(sessions: list[list[str]]) -> list[tuple[list[str], str]]:
    """``(session before, item)`` for every click, sessions in order."""
    return [
        (session[:position], item) for session in sessions for position, item in enumerate(session)
    ]


def simulated_sessions(events: list[Event], gap_ms: int = 30 * 60 * 1000) -> list[list[str]]:
    """Recipe/product click sessions per user from simulated events (stream order)."""
    open_sessions: dict[str, tuple[int, list[str]]] = {}
    closed: list[list[str]] = []
    for event in events:
        if event.item_id is None or event.type == "impression":
            continue
        last = open_sessions.get(event.user_id)
        if last is not None and event.ts - last[0] > gap_ms:
            closed.append(last[1])
            last = None
        items = last[1] if last is not None else []
        items.append(event.item_id)
        open_sessions[event.user_id] = (event.ts, items)
    return closed + [items for _, items in open_sessions.values()]


def bench_cooccurrence(sessions: list[list[str]], predictions: int = 20_000) -> dict[str, float]:
    """The next-click model alone: evidence updates/s (``learn_one``) and ranked lists/s
    (``predict_one``, k=20) with and without session-kNN candidates.
    """
    from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel

    clicks = _click_stream(sessions)
    out: dict[str, float] = {"cooccurrence_clicks": len(clicks)}
    for label, knn in (("", 0.0), ("_with_session_knn", 1.5)):
        model = CooccurrenceModel(CooccurrenceConfig(session_knn_weight=knn))
        started = time.perf_counter()
        for number, session in enumerate(sessions):
            for position, item in enumerate(session):
                model.learn_one(session[:position], item, session_id=str(number))
        out[f"cooccurrence_updates_per_second{label}"] = _rate(
            len(clicks), time.perf_counter() - started
        )
        prefixes = [before for before, _ in clicks if before][:predictions]
        started = time.perf_counter()
        for before in prefixes:
            model.predict_one(before, 20)
        out[f"cooccurrence_predictions_per_second{label}"] = _rate(
            len(prefixes), time.perf_counter() - started
        )
    return out


def measure_amplification(
    sessions: list[list[str]], batch_sizes: tuple[int, ...] = (1, 100, 500, 5000)
) -> dict[str, Any]:
    """What sharding the item-keyed co-occurrence rows would cost, per click.

    Each click makes ``click_evidence`` row updates (the same function ``learn_one``
    applies). Shipped to each row's owner through an item-keyed topic, coalesced per
    worker batch: one record per distinct row per batch. Each changed row's vote list is
    then re-broadcast once per batch on a compacted topic (read by every worker).
    """
    from processors.cooccurrence import CooccurrenceConfig, click_evidence

    steps = CooccurrenceConfig().steps
    clicks = _click_stream(sessions)
    per_click = [click_evidence(before, item, steps) for before, item in clicks]
    evidence = sum(len(updates) for updates in per_click)
    result: dict[str, Any] = {
        "clicks": len(clicks),
        "evidence_updates_per_click": round(evidence / max(len(clicks), 1), 3),
        "coalesced": {},
    }
    for batch_size in batch_sizes:
        records = 0
        for start in range(0, len(per_click), batch_size):
            rows = {
                row for updates in per_click[start : start + batch_size] for _, row, *_ in updates
            }
            records += len(rows)
        # one vote-list broadcast per changed row per batch: the same count again
        result["coalesced"][str(batch_size)] = round(records / max(len(clicks), 1), 3)
    return result


async def _bench_redis(url: str, users: int) -> dict[str, float]:
    client = pack_with_hiredis(aioredis.Redis.from_url(url))  # as the worker's
    writer = UserHashWriter(client, "bench:v1", 3600)
    payload = b"x" * 1200  # a 20-item slate is about this size
    started, cpu_started = time.perf_counter(), time.process_time()
    for version in (1, 2):
        for i in range(users):
            writer.stage(f"u{i}", FieldWrite("recipes", version, payload))
            writer.stage(f"u{i}", FieldWrite("profile", version, payload[:200]))
            if writer.pending_users >= 1000:
                await writer.flush()
        await writer.flush()
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    await client.aclose()
    # Users per second is bound by the Redis server running the script; the client's CPU
    # per user is what the worker pays (staging, packing, replies).
    return {
        "redis_cas_users_per_second": _rate(2 * users, seconds),
        "redis_cas_client_cpu_microseconds_per_user": round(client_cpu * 1e6 / (2 * users), 1),
    }


async def _post_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[int, float]:
    """POST every body with ``concurrency`` clients; (events accepted, seconds)."""
    import aiohttp

    queue = list(reversed(bodies))
    accepted = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            async with session.post(url, data=body) as response:
                if response.status != 202:
                    raise RuntimeError(f"collector answered {response.status}")
                accepted += int((await response.json())["accepted"])

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return accepted, time.perf_counter() - started


def bench_collector(env: dict[str, str], log_dir: Path, events: int) -> dict[str, Any]:
    """The collector alone on the embedded broker: 100-event requests from 8 clients in this
    process (which shares the 2 cores), validated, produced and acknowledged."""
    ensure_topics(
        load_settings(
            kafka_bootstrap=env["APPETENCE_KAFKA_BOOTSTRAP"], topic_prefix="bench-collector"
        )
    )
    port = free_port()
    proc = spawn(
        "collector",
        [sys.executable, "-m", "stream.cli", "collector"],
        log_dir / "collector.log",
        env={
            **env,
            "APPETENCE_COLLECTOR_PORT": str(port),
            "APPETENCE_COLLECTOR_RATE_PER_SECOND": "100000",
            "APPETENCE_COLLECTOR_RATE_BURST": "100000",
            # Its own topics: the end-to-end worker must not see these events.
            "APPETENCE_TOPIC_PREFIX": "bench-collector",
        },
    )
    try:
        wait_for_port(port, 30, proc.popen)
        now = int(time.time() * 1000)
        simulated = _events(events)
        bodies = [
            msgspec.json.encode(
                [msgspec.structs.replace(e, ts=now) for e in simulated[i : i + 100]]
            )
            for i in range(0, len(simulated), 100)
        ]
        accepted, seconds = asyncio.run(
            _post_all(f"http://127.0.0.1:{port}/v1/events", bodies, concurrency=8)
        )
    finally:
        proc.stop()
    return {"collector_events": accepted, "collector_events_per_second": _rate(accepted, seconds)}


def _model(seed: int = 1) -> TrafficModel:
    # Start a day back so that event time stays in the past (and valid) for ~10M events.
    return TrafficModel(SimulationConfig(seed=seed), start_ms=int(time.time() * 1000) - 86_400_000)


async def _ceiling(options: dict[str, Any], topic: str, expected: int) -> dict[str, float]:
    """Consume-and-decode only: plain aiokafka (no group), the worker's decoder."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    decoder = EventDecoder(DecodeLimits())
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100, **options
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, 0)
        decoded = 0
        now = int(time.time() * 1000)
        started = time.perf_counter()
        while decoded < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not batches and time.perf_counter() - started > 120:
                raise TimeoutError(f"ceiling pass read only {decoded} of {expected} events")
            for records in batches.values():
                for record in records:
                    decoded += len(decoder.decode_record(record.value, now).events)
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"ceiling_events_per_second": _rate(decoded, seconds)}


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: From the record timestamp to the start of the batch holding it (stream/metrics.py).
WAIT_HISTOGRAM = "appetence_event_wait_seconds"


def _latency_window(
    metrics_urls: list[str], name: str = "appetence_event_to_redis_seconds"
) -> list[tuple[float, float]]:
    merged: dict[float, float] = {}
    for url in metrics_urls:
        for bound, count in buckets(scrape(url, names=[f"{name}_bucket"]), name):
            merged[bound] = merged.get(bound, 0.0) + count
    return sorted(merged.items())


def _handled_all(metrics_urls: list[str]) -> float:
    return sum(_handled(scrape(url, names=HANDLED_SAMPLES)) for url in metrics_urls)


def _drain_breakdown(
    samples: list[dict[str, list[tuple[dict[str, str], float]]]], worker_seconds: float
) -> dict[str, float]:
    def summed(name: str) -> float:
        return sum(total(x, name) for x in samples)

    batches = max(summed("appetence_batch_events_count"), 1.0)
    return {
        "batches": batches,
        "mean_events_per_batch": round(summed("appetence_batch_events_sum") / batches, 1),
        "mean_records_per_batch": round(summed("appetence_batch_records_sum") / batches, 1),
        "batch_handling_share_of_drain": round(
            summed("appetence_batch_processing_seconds_sum") / worker_seconds, 3
        ),
        "redis_flush_share_of_drain": round(
            summed("appetence_redis_write_seconds_sum") / worker_seconds, 3
        ),
        # the input bound the batch budget had reached (APPETENCE_BATCH_MAX_SECONDS), per worker
        "batch_max_bytes_after_drain": round(summed("appetence_batch_max_bytes") / len(samples)),
    }


#: The per-event breakdowns the bench reports for each of its phases: the key's suffix ->
#: (the workers' labelled counter, its label).
BREAKDOWNS = {
    # the batch loop's CPU by stage of handling (the rest of the workers' CPU: Faust,
    # aiokafka, the consumer's thread)
    "stage_cpu_microseconds_per_event": ("appetence_batch_stage_cpu_seconds_total", "stage"),
    # the slice stage by phase of the processors
    "slice_phase_cpu_microseconds_per_event": ("appetence_slice_phase_cpu_seconds_total", "phase"),
    # the garbage collector's pauses, by generation
    "gc_pause_microseconds_per_event": ("appetence_gc_pause_seconds_sum", "generation"),
}


def breakdowns(
    before: Sequence[Mapping[str, list[tuple[dict[str, str], float]]]],
    after: Sequence[Mapping[str, list[tuple[dict[str, str], float]]]],
    events: int,
) -> dict[str, dict[str, float]]:
    """The workers' ``BREAKDOWNS`` between two scrapes, each in µs per event by its label.

    >>> name = "appetence_batch_stage_cpu_seconds_total"
    >>> before = [{name: [({"stage": "slice"}, 1.0), ({"stage": "redis"}, 0.5)]}]
    >>> after = [{name: [({"stage": "slice"}, 1.5), ({"stage": "redis"}, 0.6)]}]
    >>> after[0]["appetence_gc_pause_seconds_sum"] = [({"generation": "0"}, 0.02)]
    >>> spent = breakdowns(before, after, 10_000)
    >>> spent["stage_cpu_microseconds_per_event"], spent["gc_pause_microseconds_per_event"]
    ({'slice': 50.0, 'redis': 10.0}, {'0': 2.0})
    >>> spent["slice_phase_cpu_microseconds_per_event"]
    {}
    """
    per_event = 1e6 / max(events, 1)
    return {
        key: {
            value: round(seconds * per_event, 1)
            for value, seconds in _grown_by_label(before, after, name, label).items()
        }
        for key, (name, label) in BREAKDOWNS.items()
    }


def _grown_by_label(
    before: Sequence[Mapping[str, list[tuple[dict[str, str], float]]]],
    after: Sequence[Mapping[str, list[tuple[dict[str, str], float]]]],
    name: str,
    label: str,
) -> dict[str, float]:
    """How much the series ``name`` grew between two scrapes of the workers, by ``label``."""
    grown: dict[str, float] = {}
    for samples, sign in ((after, 1.0), (before, -1.0)):
        for scraped in samples:
            for labels, value in scraped.get(name, []):
                key = labels.get(label, "")
                grown[key] = grown.get(key, 0.0) + sign * value
    return grown


def added_population(template: list[Event], number: int, prefix: str = "m") -> list[Event]:
    """``template`` again as a new population of users: the same items, sessions and times
    under new user and event ids (``<prefix><number>-`` prefixed)."""
    prefix = f"{prefix}{number}-"
    return [
        msgspec.structs.replace(e, user_id=prefix + e.user_id, event_id=prefix + e.event_id)
        for e in template
    ]


#: The simulator's default traffic (120 new visitors per simulated minute) makes ~23 events
#: per second of event time, so a drain at 20,000 events/s replays each simulated second in
#: about a millisecond: a visitor's whole session (~5 minutes of pages) falls into one or two
#: batches. A site that really sends that many events has ~900 times as many visitors at once,
#: each in a batch with one or two of their events. New visitors per minute per event/s, about:
VISITORS_PER_MINUTE_PER_EVENT_PER_SECOND = 36.6


def users_per_event(events: Sequence[Event], batch_size: int) -> float:
    """Distinct users per event in consecutive batches of ``batch_size`` events: what a batch's
    per-user cost is paid on (1.0: every event another user's).

    >>> from processors.events import PageView
    >>> views = [PageView(event_id=str(i), ts=i, user_id=u) for i, u in enumerate("aabc")]
    >>> users_per_event(views, 2), users_per_event(views, 4)
    (0.75, 0.75)
    """
    size = max(1, int(batch_size))
    distinct = sum(
        len({event.user_id for event in events[start : start + size]})
        for start in range(0, len(events), size)
    )
    return distinct / max(len(events), 1)


def paced_stream(
    n: int, events_per_second: float, number: int = 0, seed: int = 1
) -> tuple[list[Event], float]:
    """``n`` simulated events whose event time passes at about ``events_per_second``: the
    visitors a site with that traffic has at once (``VISITORS_PER_MINUTE_PER_EVENT_PER_SECOND``,
    corrected once from the stream made), with the bench's catalog (the same seed). Returns the
    events (users and event ids ``rt<number>-`` prefixed, apart from the other streams') and
    their event-time rate."""
    visitors = VISITORS_PER_MINUTE_PER_EVENT_PER_SECOND * events_per_second
    start_ms = int(time.time() * 1000) - 86_400_000
    events: list[Event] = []
    rate = 0.0
    for _ in range(2):
        model = TrafficModel(SimulationConfig(seed=seed, users_per_minute=visitors), start_ms)
        events = [event for _, event in zip(range(n), model.events(), strict=False)]
        span = max(events[-1].ts - events[0].ts, 1) / 1000 if events else 1.0
        rate = len(events) / span
        if abs(rate / events_per_second - 1.0) < 0.1:
            break
        visitors *= events_per_second / rate
    return added_population(events, number, prefix="rt"), rate


#: The item-level tables' size gauges (bounded by items, not users).
ITEM_TABLE_GAUGES = (
    "appetence_cooccurrence_entries",
    "appetence_popularity_entries",
    "appetence_banner_ctr_entries",
)


def _settled(procs: list[Any], urls: list[str]) -> tuple[int, float, float]:
    """(RSS in KiB, users held, item-table entries) of the idle workers, once the state
    gauges have refreshed."""
    time.sleep(2.5)  # the gauges refresh every 2 s; a batch's memory is released after it
    samples = [scrape(url) for url in urls]
    users = sum(total(x, "appetence_users_in_state") for x in samples)
    entries = sum(total(x, name) for x in samples for name in ITEM_TABLE_GAUGES)
    return sum(_rss_kib(p.popen.pid) for p in procs), users, entries


def _marginal_memory(
    template: list[Event],
    producer: Any,
    settings: Any,
    procs: list[Any],
    urls: list[str],
    handled: float,
    populations: int = 6,
) -> dict[str, Any]:
    """RSS per added active user: ``populations`` new user populations, each replaying
    ``template`` (same items, sessions and times, new user and event ids), drained one after
    the other; the slope of the idle RSS over all of them, from the first reading to the last
    and fitted to every reading (and between each, to show the spread: one RSS reading is only
    good to ~1 MiB, ~200 bytes per user of a population of 5,000, and the allocator's arenas
    move it by more). Six populations since the twenty-ninth session (three before: between
    runs of the same code the slope then spread over ±600 B)."""
    points = [_settled(procs, urls)]
    for population in range(1, populations + 1):
        clones = added_population(template, population)
        for partition, value in _envelopes(clones, settings.partitions):
            producer.send(settings.events_topic, value=value, partition=partition)
        producer.flush()
        handled += len(clones)
        deadline = time.monotonic() + 600
        while _handled_all(urls) < handled:
            if time.monotonic() > deadline:
                raise TimeoutError(f"added population {population} not drained in 600 s")
            time.sleep(0.1)
        points.append(_settled(procs, urls))
    slopes = [
        round((rss - prev_rss) * 1024 / max(users - prev_users, 1.0))
        for (prev_rss, prev_users, _), (rss, users, _) in itertools.pairwise(points)
    ]
    return {
        "added_events": populations * len(template),
        "added_users_per_population": points[1][1] - points[0][1],
        "idle_rss_mib_per_population": [round(rss / 1024, 1) for rss, _, _ in points],
        # Part of each slope is the item-level tables still filling (co-occurrence rows grow
        # toward their bound, popularity, banner CTR): their entries added per added user.
        "item_table_entries_per_added_user": [
            round((entries - prev) / max(users - prev_users, 1.0), 2)
            for (_, prev_users, prev), (_, users, entries) in itertools.pairwise(points)
        ],
        "rss_bytes_per_added_user": slopes,
        "marginal_rss_bytes_per_active_user": round(
            (points[-1][0] - points[0][0]) * 1024 / max(points[-1][1] - points[0][1], 1.0)
        ),
        "fitted_rss_bytes_per_active_user": round(
            least_squares_slope(
                [users for _, users, _ in points], [rss * 1024 for rss, _, _ in points]
            )
        ),
    }


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The slope of the least-squares line through the points (0.0 for fewer than two
    distinct ``xs``): every reading weighs in, not just the first and the last.

    >>> least_squares_slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    2.0
    >>> least_squares_slope([5, 5], [1.0, 2.0])
    0.0
    """
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


#: The fixed offered rates, as shares of the measured maximum, and their result prefixes.
HALF_AND_QUARTER = ((0.5, "latency"), (0.25, "latency_quarter"))


#: The catalog sizes the item-level tables are measured at (``bench_item_tables``).
ITEM_SCALE_CATALOGS = (2_500, 10_000)


def item_tables_rss(items: int, events: int, seed: int = 1) -> dict[str, float]:
    """In this process (a fresh one: ``bench_item_tables``), the RSS that stays after feeding
    ``events`` simulated events over a catalog of ``items`` recipes and products (five recipes
    to a product) through the slice in 2,000-event batches, every user's state dropped after
    its batch: what the processor keeps, its item-level tables (next-click rows, popularity,
    the catalog and item codes) and, alike for every catalog size, its per-visitor memory
    and loyalty deadlines."""
    import gc

    from stream.memory import glibc_malloc_trim

    compile_kernels()  # loaded before the baseline
    trim = glibc_malloc_trim()

    def settled_rss() -> int:
        gc.collect()
        if trim is not None:
            trim()
        return _rss_kib(os.getpid()) * 1024

    config = SimulationConfig(seed=seed, recipes=items - items // 6, products=items // 6)
    model = TrafficModel(config, start_ms=1_700_000_000_000)
    stream = model.events()
    baseline = settled_rss()
    processor = SliceProcessor(SliceConfig())
    for record in model.catalog_records():
        processor.apply_catalog(record)
    nobody: dict[str, UserState] = {}
    for start in range(0, events, 2_000):  # exactly ``events``, the last batch shorter
        batch = [(0, next(stream)) for _ in range(min(2_000, events - start))]
        processor.process_batch(batch, nobody, batch[-1][1].ts)
    return {
        "rss_growth_bytes": settled_rss() - baseline,
        "cooccurrence_entries": processor.cooccurrence.size(),
        "popularity_entries": processor.popularity.size(),
    }


def bench_item_tables(events: int, catalogs: Sequence[int] = ITEM_SCALE_CATALOGS) -> dict[str, Any]:
    """What the item-level tables cost per item: the same traffic (``events`` simulated
    events) over a small and a large catalog, each in a fresh process
    (``item_tables_rss``); the slope of the RSS that stays, per item, and per 10,000 items.
    The users' share (visitor memory, loyalty deadlines) is alike in both and cancels."""
    runs = []
    for items in catalogs:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json; from stream.benchmark import item_tables_rss; "
                f"print(json.dumps(item_tables_rss({int(items)}, {int(events)})))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = catalogs[0], catalogs[-1]
    per_item = (runs[-1]["rss_growth_bytes"] - runs[0]["rss_growth_bytes"]) / (large - small)
    return {
        "item_scale_events": events,
        "item_scale_catalog_items": list(catalogs),
        "item_scale_rss_growth_bytes": [int(r["rss_growth_bytes"]) for r in runs],
        "item_scale_cooccurrence_entries": [int(r["cooccurrence_entries"]) for r in runs],
        "item_tables_bytes_per_item": round(per_item),
        "item_tables_mib_per_10k_items": round(per_item * 10_000 / 2**20, 1),
    }


def _offer_live(
    offered: float,
    prefix: str,
    seconds: float,
    source: Iterable[Event],
    producer: Any,
    settings: Settings,
    urls: list[str],
    handled: float,
    worker_pids: Sequence[int] = (),
    record_events: int = 0,
) -> dict[str, Any]:
    """Produce ``seconds`` of ``source``'s next events live at ``offered`` events/s (as the
    collector and the simulator produce: one envelope per partition per 20 ms tick; with
    ``record_events`` > 0, records of at most that many events, 1: a record per event as a
    site's keyed single-event producers send), wait until
    the workers have handled them, and report event->Redis latency (histogram upper bounds)
    and the batches the workers took meanwhile. On this 2-core machine the load generator
    (this process) shares the CPU with the workers, the broker and Redis: the CPU each took
    while the traffic was offered is reported too."""
    before = _latency_window(urls)
    waited_before = dict(_latency_window(urls, WAIT_HISTOGRAM))
    first = [scrape(url) for url in urls]
    live = [e for _, e in zip(range(int(offered * seconds)), source, strict=False)]
    tick = 0.02
    per_tick = max(1, int(offered * tick))
    generator_cpu = time.process_time()  # (the events were generated above, before the offer)
    worker_cpu = cpu_at_start = sum(_cpu_seconds(pid) for pid in worker_pids)
    started = time.monotonic()
    records = 0
    for index in range(0, len(live), per_tick):
        due = live[index : index + per_tick]
        for partition, value in _envelopes(due, settings.partitions, record_events or 100):
            producer.send(settings.events_topic, value=value, partition=partition)
            records += 1
        ahead = (index + len(due)) / offered - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    offer_seconds = time.monotonic() - started
    generator_cpu = time.process_time() - generator_cpu
    worker_cpu = sum(_cpu_seconds(pid) for pid in worker_pids) - worker_cpu
    deadline = time.monotonic() + 120
    while _handled_all(urls) < handled + len(live) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = _latency_window(urls)
    waited = [
        (bound, count - waited_before.get(bound, 0.0))
        for bound, count in _latency_window(urls, WAIT_HISTOGRAM)
    ]
    last = [scrape(url) for url in urls]
    cpu_handling = sum(_cpu_seconds(pid) for pid in worker_pids) - cpu_at_start
    window = [(bound, count - dict(before).get(bound, 0.0)) for bound, count in after]

    def grown(name: str) -> float:
        return sum(total(b, name) - total(a, name) for a, b in zip(first, last, strict=True))

    batches = max(grown("appetence_batch_events_count"), 1.0)
    busy = grown("appetence_batch_processing_seconds_sum")
    return {
        f"{prefix}_offered_events_per_second": round(offered, 1),
        f"{prefix}_events": len(live),
        f"{prefix}_records": records,
        f"{prefix}_p50_seconds_upper_bound": quantile(window, 0.5),
        f"{prefix}_p99_seconds_upper_bound": quantile(window, 0.99),
        # of which before the batch's handling (fetching, waiting for the worker)
        f"{prefix}_wait_p50_seconds_upper_bound": quantile(waited, 0.5),
        f"{prefix}_wait_p99_seconds_upper_bound": quantile(waited, 0.99),
        f"{prefix}_events_per_batch": round(grown("appetence_batch_events_sum") / batches, 1),
        f"{prefix}_ms_per_batch": round(1000 * busy / batches, 1),
        # time inside batch handling over the time the traffic was offered, per worker
        f"{prefix}_busy_share": round(busy / (seconds * len(urls)), 3),
        # CPU while the traffic was offered, in cores: the workers' (below the busy share
        # when they waited for a core), and the load generator's (producing the envelopes)
        f"{prefix}_worker_cpu_share": round(worker_cpu / offer_seconds / max(len(urls), 1), 3),
        f"{prefix}_load_generator_cpu_share": round(generator_cpu / offer_seconds, 3),
        # the workers' CPU per event until they had handled the traffic, and of it the batch
        # loop's by stage, the slice's by phase and the collector's pauses (``BREAKDOWNS``)
        f"{prefix}_worker_cpu_microseconds_per_event": round(cpu_handling / len(live) * 1e6, 1),
        **{f"{prefix}_{key}": spent for key, spent in breakdowns(first, last, len(live)).items()},
    }


def _drain_paced(
    events_per_second: float,
    count: int,
    producer: Any,
    settings: Settings,
    urls: list[str],
    handled: float,
    worker_pids: Sequence[int],
) -> dict[str, Any]:
    """Drain ``count`` events of a stream paced like a real site's at ``events_per_second``
    (``paced_stream``: each batch's events mostly other users'), preloaded at once as the
    main drain's: its rate from the production's start to the last batch (the production
    itself takes well under a second), and the workers' CPU per event."""
    paced, event_time_rate = paced_stream(count, events_per_second)
    first = [scrape(url) for url in urls]
    cpu_from = sum(_cpu_seconds(pid) for pid in worker_pids)
    started = time.time()
    for partition, value in _envelopes(paced, settings.partitions):
        producer.send(settings.events_topic, value=value, partition=partition)
    producer.flush()
    deadline = time.monotonic() + 900
    while (done := _handled_all(urls)) < handled + len(paced):
        if time.monotonic() > deadline:
            raise TimeoutError(f"paced drain: {done - handled} of {len(paced)} events in 900 s")
        time.sleep(0.1)
    last = [scrape(url) for url in urls]
    seconds = max(total(x, LAST_BATCH) for x in last) - started
    cpu = sum(_cpu_seconds(pid) for pid in worker_pids) - cpu_from

    def grown(name: str) -> float:
        return sum(total(b, name) - total(a, name) for a, b in zip(first, last, strict=True))

    per_batch = grown("appetence_batch_events_sum") / max(grown("appetence_batch_events_count"), 1)
    return {
        "paced_events": len(paced),
        "paced_event_time_events_per_second": round(event_time_rate, 1),
        "paced_pipeline_events_per_second": round(len(paced) / max(seconds, 1e-9), 1),
        "paced_worker_cpu_microseconds_per_event": round(cpu / len(paced) * 1e6, 1),
        "paced_mean_events_per_batch": round(per_batch, 1),
        "paced_users_per_event": round(users_per_event(paced, round(per_batch)), 3),
        **{f"paced_{key}": spent for key, spent in breakdowns(first, last, len(paced)).items()},
    }


def bench_pipeline(
    events: int,
    workers: int,
    log_dir: Path,
    latency_seconds: float = 20.0,
    live_rates: Sequence[float] = (),
    paced: int = 0,
    live_record_events: int = 0,
) -> dict[str, Any]:
    """The full pipeline (decode, every processor, coalesced pipelined Redis writes) draining
    ``events`` preloaded simulated events with ``workers`` processes; the consume-and-decode
    ceiling over the same topic; then event->Redis latency at half the measured rate; then
    (``paced`` > 0) a drain of that many events paced like a real site's at the measured
    rate (``_drain_paced``), and latency at half its rate, offered live paced alike."""
    with embedded_stack(log_dir) as stack:
        settings = load_settings(
            kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, app_id="bench"
        )
        ensure_topics(settings)
        redis_result = asyncio.run(_bench_redis(stack.redis_url, 20_000))
        base_env = worker_env(stack.bootstrap, stack.redis_url, free_port())
        base_env["APPETENCE_APP_ID"] = "bench"
        redis_result.update(bench_collector(base_env, log_dir, min(events, 50_000)))
        model = _model()
        producer = make_producer(settings)
        publish_catalog(model.catalog_records(), producer, settings)  # banners on
        simulated = [event for _, event in zip(range(events), model.events(), strict=False)]
        for partition, value in _envelopes(simulated, settings.partitions):
            producer.send(settings.events_topic, value=value, partition=partition)
        producer.flush()
        results: dict[str, Any] = {**redis_result, "pipeline_events": events, "workers": workers}
        results.update(
            asyncio.run(_ceiling(aiokafka_client_options(settings), settings.events_topic, events))
        )
        procs = []
        urls = []
        for index in range(workers):
            port = free_port()
            env = {**base_env, "APPETENCE_WEB_PORT": str(port)}
            procs.append(spawn_worker(env, log_dir / f"worker-{index}.log"))
            urls.append(f"http://127.0.0.1:{port}/metrics")
        try:
            rss_history: list[tuple[float, int]] = []  # (when, RSS) until the first batch ends
            # (when, the workers' CPU seconds, the broker's and Redis's) over the same polls
            cpu_history: list[tuple[float, float, float]] = []
            while _handled_all(urls) == 0:  # start-up and group join are not the pipeline
                now = time.monotonic()
                rss_history.append((now, sum(_rss_kib(p.popen.pid) for p in procs)))
                cpu_history.append(
                    (
                        now,
                        sum(_cpu_seconds(p.popen.pid) for p in procs),
                        sum(_cpu_seconds(p.popen.pid) for p in stack.processes),
                    )
                )
                time.sleep(0.05)
            # The drain starts when the first batch did (a batch can be most of a small run):
            # now minus the time the batches handled so far took; the baseline RSS is the
            # workers' before it (their start-up state), not during it.
            samples = [scrape(url) for url in urls]
            handling = max(total(x, "appetence_batch_processing_seconds_sum") for x in samples)
            first, first_wall = time.monotonic() - handling, time.time() - handling
            # CPU over the drain, from the last poll before its first batch (as the RSS
            # baseline): the workers' own per event, which depends far less than the wall
            # clock on how much of the two cores the broker and Redis take (also measured)
            cpu_window_from, worker_cpu_from, stack_cpu_from = next(
                (sample for sample in reversed(cpu_history) if sample[0] <= first),
                cpu_history[0] if cpu_history else (first, 0.0, 0.0),
            )
            baseline_rss = next(
                (rss for when, rss in reversed(rss_history) if when <= first),
                rss_history[0][1] if rss_history else 0,
            )
            while (done := _handled_all(urls)) < events:
                if time.monotonic() - first > 900:
                    raise TimeoutError(f"drained only {done} of {events} events in 900 s")
                time.sleep(0.1)
            # Until the last batch ended (the workers' clock, as the wall clock here): a poll
            # every 0.1 s, and its scrapes, noticed it up to ~0.15 s later, a few % of a drain.
            drain_seconds = (
                max(total(scrape(url, names=[LAST_BATCH]), LAST_BATCH) for url in urls) - first_wall
            )
            rate = events / drain_seconds
            worker_cpu = sum(_cpu_seconds(p.popen.pid) for p in procs) - worker_cpu_from
            stack_cpu = sum(_cpu_seconds(p.popen.pid) for p in stack.processes) - stack_cpu_from
            # The CPU was read over a window a little wider than the drain (from the poll
            # before its first batch to now): shares of a core divide by that window, so a
            # short drain's edges (start-up before the first batch, the poll's lag after the
            # last) do not lift them past what the processes could use.
            cpu_window = max(time.monotonic() - cpu_window_from, drain_seconds)
            peak_rss = sum(_rss_kib(p.popen.pid, "VmHWM") for p in procs)
            time.sleep(2.5)  # the state-size gauges refresh every 2 s
            # Drained and idle: what the workers hold now, without the drain's transients
            # (fetched-but-unprocessed records, a batch's objects); CPython keeps freed
            # arenas, so this is an upper bound of the state's own memory.
            settled_rss = sum(_rss_kib(p.popen.pid) for p in procs)
            samples = [scrape(url) for url in urls]
            users = sum(total(x, "appetence_users_in_state") for x in samples)
            results.update(
                pipeline_events_per_second=round(rate, 1),
                pipeline_share_of_ceiling=round(rate / results["ceiling_events_per_second"], 4),
                pipeline_drain_seconds=round(drain_seconds, 2),
                worker_cpu_microseconds_per_event=round(worker_cpu / events * 1e6, 1),
                # of one core per worker (CPU time comes in 10 ms ticks, and a worker's helper
                # threads can take it a little past 1)
                worker_cpu_share_of_drain=round(worker_cpu / cpu_window / workers, 3),
                broker_and_redis_cpu_share_of_drain=round(stack_cpu / cpu_window, 3),
                peak_rss_mib=round(peak_rss / 1024, 1),
                rss_growth_mib=round((peak_rss - baseline_rss) / 1024, 1),
                users_in_state=users,
                rss_growth_bytes_per_user=round((peak_rss - baseline_rss) * 1024 / max(users, 1)),
                settled_rss_mib=round(settled_rss / 1024, 1),
                settled_rss_growth_bytes_per_user=round(
                    (settled_rss - baseline_rss) * 1024 / max(users, 1)
                ),
                # Of that growth, the held user states themselves (encoded, as on the changelog);
                # the rest is mostly the item-level tables (bounded by items, not users).
                held_state_bytes_per_user=round(
                    sum(total(x, "appetence_user_state_bytes") for x in samples) / max(users, 1)
                ),
                cooccurrence_entries=sum(
                    total(x, "appetence_cooccurrence_entries") for x in samples
                ),
                popularity_entries=sum(total(x, "appetence_popularity_entries") for x in samples),
                redis_writes_ok=sum(
                    value
                    for x in samples
                    for labels, value in x.get("appetence_redis_writes_total", [])
                    if labels.get("result") == "ok"
                ),
                # Where the drain's time went: batch sizes the workers took, and the share of the
                # drain inside process-and-write (the rest: Faust, fetching, committing).
                **_drain_breakdown(samples, drain_seconds * workers),
                # the batch loop's CPU by stage, the slice's by phase and the collector's
                # pauses (start-up's included: a few ms), µs per event
                **{f"drain_{key}": spent for key, spent in breakdowns([], samples, events).items()},
            )
            # what the drain's batches paid the per-user cost on (the paced drain's below)
            results["drain_users_per_event"] = round(
                users_per_event(simulated, round(results.get("mean_events_per_batch", 1.0))), 3
            )
            handled = float(events)
            # Memory per active user: more users with the same item sequences (the first
            # events again, under new user and event ids), so the item-level tables stay
            # near their size and the RSS slope is what each added user costs.
            marginal = _marginal_memory(
                simulated[: min(events, 50_000)], producer, settings, procs, urls, handled
            )
            handled += marginal.pop("added_events")
            results.update(marginal)
            # Latency at fixed offered rates, produced live: half the measured maximum (the
            # issue's point), then a quarter (what the worker sustains with small batches),
            # then any rates asked for (``live_rates``: the latency curve by rate).
            offers = [(max(50.0, rate * share), name) for share, name in HALF_AND_QUARTER]
            offers += [(float(r), f"live_{r:g}") for r in live_rates]
            for offered, prefix in offers:
                # (the --live-rates offers in records of --live-record-events, if given)
                per_record = live_record_events if prefix.startswith("live_") else 0
                results.update(
                    _offer_live(
                        offered,
                        prefix,
                        latency_seconds,
                        model.events(),
                        producer,
                        settings,
                        urls,
                        handled,
                        [p.popen.pid for p in procs],
                        per_record,
                    )
                )
                handled += results[f"{prefix}_events"]
            if paced > 0:
                pids = [p.popen.pid for p in procs]
                results.update(_drain_paced(rate, paced, producer, settings, urls, handled, pids))
                handled += results["paced_events"]
                # and latency at half the paced drain's rate, offered live paced alike
                half = max(50.0, results["paced_pipeline_events_per_second"] / 2)
                live, _ = paced_stream(int(half * latency_seconds), half, number=1)
                results.update(
                    _offer_live(
                        half,
                        "paced_half",
                        latency_seconds,
                        live,
                        producer,
                        settings,
                        urls,
                        handled,
                        pids,
                    )
                )
        finally:
            producer.close()
            for proc in procs:
                proc.stop()
    return results


def bench_loyalty(events: list[Event], forest_examples: int = 2_000) -> dict[str, Any]:
    """Per-event cost of the loyalty processor (observe: sessions, snapshots, two served
    scores) and per-example predict+learn cost of each model on the labels it resolved,
    against River's generic pipeline (Select | OneHotEncoder + StandardScaler | LR)."""
    from river import compose, linear_model, optim, preprocessing

    from processors.loyalty import (
        BEHAVIOUR_FEATURES,
        CONTEXT_FIELDS,
        LoyaltyConfig,
        LoyaltyModels,
        LoyaltyState,
        ResolvedExample,
        _Model,
        context_of,
        expire,
        observe,
        signals_of,
    )

    config = LoyaltyConfig()
    models = LoyaltyModels(config)

    def observe_all() -> tuple[list[ResolvedExample], float]:
        states: dict[str, LoyaltyState] = {}
        resolved: list[ResolvedExample] = []
        began = time.perf_counter()
        for event in events:
            state = states.get(event.user_id)
            if state is None:
                state = states[event.user_id] = LoyaltyState()
            resolved += observe(
                state, event.ts, context_of(event), signals_of(event), config, models
            )
        seconds = time.perf_counter() - began
        horizon = max(e.ts for e in events) + 400 * 86_400_000
        for state in states.values():
            resolved += expire(state, horizon, config)
        return resolved, seconds

    examples, _ = observe_all()
    for example in examples:  # a trained model serves, as in a worker that has run a while
        models.learn(example)
    _, observe_seconds = observe_all()
    results: dict[str, Any] = {
        "loyalty_observe_events_per_second": _rate(len(events), observe_seconds),
        "loyalty_examples": len(examples),
    }

    def timed(learn_one: Any, predict_one: Any, xs: list[Any], ys: list[bool]) -> float:
        began = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            predict_one(x)
            learn_one(x, y)
        return (time.perf_counter() - began) / max(len(xs), 1) * 1e6

    labels = [e.label for e in examples]
    feats = [e.features for e in examples]
    for kind in ("logistic", "tree", "forest"):
        model = _Model(kind, config)
        n = len(feats) if kind != "forest" else min(forest_examples, len(feats))
        results[f"loyalty_{kind}_predict_learn_us"] = round(
            timed(model.learn, model.predict, feats[:n], labels[:n]), 1
        )
    categorical = (
        compose.Select(*CONTEXT_FIELDS, "entry", "referrer") | preprocessing.OneHotEncoder()
    )
    numeric = compose.Select(*BEHAVIOUR_FEATURES) | preprocessing.StandardScaler()
    pipeline = (categorical + numeric) | linear_model.LogisticRegression(
        optimizer=optim.AdaGrad(0.1)
    )
    raw = [{k: v for k, v in f.items() if v is not None} for f in feats]
    for x in raw:
        for name in BEHAVIOUR_FEATURES:
            x.setdefault(name, 0.0)
        for name in (*CONTEXT_FIELDS, "entry", "referrer"):
            x.setdefault(name, "na")
    results["loyalty_river_pipeline_predict_learn_us"] = round(
        timed(pipeline.learn_one, pipeline.predict_proba_one, raw, labels), 1
    )
    return results


def run_benchmarks(
    events: int,
    e2e: bool,
    e2e_events: int,
    sessions: list[list[str]] | None = None,
    workers: int = 1,
    profile: bool = False,
    live_rates: Sequence[float] = (),
    live_seconds: float = 20.0,
    item_scale_events: int = 0,
    paced_events: int = 0,
    live_record_events: int = 0,
) -> dict[str, Any]:
    """Every stage; ``sessions`` (a real click log) feeds the co-occurrence benchmarks,
    else the simulator's click sessions do. ``item_scale_events`` > 0: also the item-level
    tables' memory per 10,000 items (``bench_item_tables``) and, with the pipeline's memory
    per added active user, the state of 100,000 active users over 10,000 items.
    """
    simulated = _events(events)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        # the slice's modules the workers run compiled (stream/compiled.py), of how many:
        # those built from their current source, unless APPETENCE_COMPILED switches them off
        "compiled_modules": f"{_compiled_count()}/{len(COMPILED_MODULES)}",
        "events": len(simulated),
    }
    results.update(bench_decode(simulated))
    results.update(bench_slice(simulated))
    results.update(bench_batch_cost(simulated))
    results.update(bench_slate_kernels(simulated))
    if profile:
        results["slice_profile"] = profile_slice(simulated[:20_000])
    click_sessions = sessions if sessions is not None else simulated_sessions(simulated)
    results["sessions_source"] = "file" if sessions is not None else "simulator"
    results.update(bench_cooccurrence(click_sessions))
    results.update(bench_loyalty(simulated))
    results["amplification"] = measure_amplification(click_sessions)
    if e2e:
        log_dir = Path(tempfile.mkdtemp(prefix="appetence-bench-"))
        results.update(
            bench_pipeline(
                e2e_events,
                workers,
                log_dir,
                live_seconds,
                live_rates,
                paced_events,
                live_record_events,
            )
        )
    if item_scale_events > 0:
        results.update(bench_item_tables(item_scale_events))
        per_user = results.get("marginal_rss_bytes_per_active_user")
        if per_user is not None:
            results["state_mib_for_100k_users_10k_items"] = round(
                (per_user * 100_000 + results["item_tables_bytes_per_item"] * 10_000) / 2**20, 1
            )
    return results
