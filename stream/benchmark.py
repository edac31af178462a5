"""``appetence bench``: throughput of each stage of the hot path, and end to end.

Stages run in-process on simulated events (the same code the worker runs); the end-to-end
run starts the embedded broker and Redis, a real worker process, and produces with the
simulator as fast as it can.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from processors.events import DecodeLimits, Event, EventDecoder, encode_batch, encode_event
from processors.pipeline import SliceConfig, SliceProcessor
from processors.simulator import SimulationConfig, TrafficModel
from processors.slates import encode_slate
from processors.user_state import UserState
from state.redis_writer import FieldWrite, UserHashWriter
from stream.config import load_settings
from stream.embedded import embedded_stack, free_port, spawn, wait_for_port
from stream.live import buckets, quantile, scrape, total
from stream.supervisor import spawn_worker, worker_env
from stream.topics import ensure_topics, make_producer, partition_for


def _events(n: int) -> list[Event]:
    now = int(time.time() * 1000)
    # Start a day back so that event time stays in the past (and valid) for ~10M events.
    model = TrafficModel(SimulationConfig(seed=1), start_ms=now - 86_400_000)
    return [event for _, event in zip(range(n), model.events(), strict=False)]


def _envelopes(events: list[Event], partitions: int, size: int = 100) -> list[tuple[int, bytes]]:
    by_partition: dict[int, list[Event]] = {}
    records = []
    for event in events:
        batch = by_partition.setdefault(partition_for(event.user_id, partitions), [])
        batch.append(event)
        if len(batch) == size:
            records.append((partition_for(event.user_id, partitions), encode_batch(batch)))
            by_partition[partition_for(event.user_id, partitions)] = []
    records += [(p, encode_batch(b)) for p, b in by_partition.items() if b]
    return records


def _handled(samples: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return total(samples, "appetence_events_consumed_total") + total(
        samples, "appetence_events_rejected_total"
    )


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


def bench_slice(events: list[Event], batch_size: int = 500) -> dict[str, float]:
    processor = SliceProcessor(SliceConfig())
    states: dict[str, UserState] = {}
    now = int(time.time() * 1000)
    slates = 0
    started = time.perf_counter()
    for i in range(0, len(events), batch_size):
        result = processor.process_batch([(0, e) for e in events[i : i + batch_size]], states, now)
        states.update(result.touched)
        for user_slates in result.slates.values():
            for slate in user_slates.values():
                encode_slate(slate)
                slates += 1
    seconds = time.perf_counter() - started
    return {
        "slice_events_per_second": _rate(len(events), seconds),
        "slates_per_second": _rate(slates, seconds),
        "users": len(states),
    }


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
    client = aioredis.Redis.from_url(url)
    writer = UserHashWriter(client, "bench:v1", 3600)
    payload = b"x" * 1200  # a 20-item slate is about this size
    started = time.perf_counter()
    for version in (1, 2):
        for i in range(users):
            writer.stage(f"u{i}", FieldWrite("recipes", version, payload))
            writer.stage(f"u{i}", FieldWrite("profile", version, payload[:200]))
            if writer.pending_users >= 1000:
                await writer.flush()
        await writer.flush()
    seconds = time.perf_counter() - started
    await client.aclose()
    return {"redis_cas_users_per_second": _rate(2 * users, seconds)}


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


def bench_end_to_end(events: int, log_dir: Path) -> dict[str, Any]:
    with embedded_stack(log_dir) as stack:
        web_port = free_port()
        env = worker_env(stack.bootstrap, stack.redis_url, web_port)
        settings = load_settings(
            kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url, app_id="bench"
        )
        env["APPETENCE_APP_ID"] = "bench"
        ensure_topics(settings)
        redis_result = asyncio.run(_bench_redis(stack.redis_url, 20_000))
        redis_result.update(bench_collector(env, log_dir, min(events, 50_000)))
        worker = spawn_worker(env, log_dir / "worker.log")
        metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        try:
            while not scrape(metrics_url):
                time.sleep(0.2)
            time.sleep(5)  # let the group join finish before timing
            # Generate and encode first, so the timing measures the worker, not the simulator.
            records = _envelopes(_events(events), settings.partitions)
            producer = make_producer(settings)
            produce_started = time.monotonic()
            for partition, value in records:
                producer.send(settings.events_topic, value=value, partition=partition)
            producer.flush()
            producer.close()
            produced = time.monotonic() - produce_started
            while _handled(scrape(metrics_url)) < events:
                if time.monotonic() - produce_started > 600:
                    raise TimeoutError("end-to-end run did not finish in 600 s")
                time.sleep(0.1)
            consumed = time.monotonic() - produce_started
            samples = scrape(metrics_url)
        finally:
            worker.stop()
    latency = buckets(samples, "appetence_event_to_redis_seconds")
    return {
        **redis_result,
        "e2e_events": events,
        "e2e_events_rejected": total(samples, "appetence_events_rejected_total"),
        "e2e_produce_seconds": round(produced, 2),
        "e2e_seconds_until_all_in_redis": round(consumed, 2),
        "e2e_events_per_second": _rate(events, consumed),
        "e2e_event_to_redis_p50_seconds_upper_bound": quantile(latency, 0.5),
        "e2e_event_to_redis_p99_seconds_upper_bound": quantile(latency, 0.99),
        "e2e_redis_writes_ok": total(
            {
                "x": [
                    s
                    for s in samples.get("appetence_redis_writes_total", [])
                    if s[0].get("result") == "ok"
                ]
            },
            "x",
        ),
    }


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
    events: int, e2e: bool, e2e_events: int, sessions: list[list[str]] | None = None
) -> dict[str, Any]:
    """Every stage; ``sessions`` (a real click log) feeds the co-occurrence benchmarks,
    else the simulator's click sessions do.
    """
    simulated = _events(events)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "events": len(simulated),
    }
    results.update(bench_decode(simulated))
    results.update(bench_slice(simulated))
    click_sessions = sessions if sessions is not None else simulated_sessions(simulated)
    results["sessions_source"] = "file" if sessions is not None else "simulator"
    results.update(bench_cooccurrence(click_sessions))
    results.update(bench_loyalty(simulated))
    results["amplification"] = measure_amplification(click_sessions)
    if e2e:
        results.update(
            bench_end_to_end(e2e_events, Path(tempfile.mkdtemp(prefix="appetence-bench-")))
        )
    return results
