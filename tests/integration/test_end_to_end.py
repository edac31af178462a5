"""Events → Kafka → worker → Redis, with a real broker, a real Redis and a real worker process.

Also the in-process oracle: the same processors over the same events give the version every
user's slate must reach in Redis.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from processors.events import DeadLetter, EventDecoder
from processors.pipeline import SliceProcessor
from processors.simulator import SimulationConfig
from processors.slates import decode_slate
from processors.user_state import UserState
from stream.live import scrape, total
from stream.simulate import run_simulation
from stream.topics import kafka_client_options, make_producer

from .conftest import WorkerHandle, versions_match

pytestmark = pytest.mark.integration

EVENTS = 10_000


def read_topic(settings_obj: object, topic: str, expected: int, timeout: float) -> list[bytes]:
    """Read a whole topic without a consumer group (kafka-python's group join is slow)."""
    consumer = KafkaConsumer(
        **kafka_client_options(settings_obj),  # type: ignore[arg-type]
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < expected and time.monotonic() < deadline:
        for message in consumer:
            values.append(message.value)
    consumer.close()
    return values


def oracle_versions(events_file: Path, settings_obj: object) -> dict[str, int]:
    """Each user's final version, from the same processors run in-process."""
    return {u: s.version for u, s in oracle_states(events_file, settings_obj).items()}


def oracle_states(events_file: Path, settings_obj: object) -> dict[str, UserState]:
    """Replay the produced events through the same processors, in-process."""
    processor = SliceProcessor(settings_obj.slice_config())  # type: ignore[attr-defined]
    decoder = EventDecoder(settings_obj.decode_limits())  # type: ignore[attr-defined]
    states: dict[str, UserState] = {}
    now = int(time.time() * 1000)
    for line in events_file.read_bytes().splitlines():
        for event in decoder.decode_record(line, now).events:
            result = processor.process_batch([(0, event)], states, now)
            states.update(result.touched)
    return states


def snapshot(client: redis.Redis, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    keys = list(client.scan_iter(match=f"{prefix}:user:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def test_simulated_traffic_reaches_redis_bad_events_dead_letter_and_replay_is_idempotent(
    worker: WorkerHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = worker.settings
    worker.start()
    events_file = tmp_path / "events.jsonl"
    report = run_simulation(
        settings,
        SimulationConfig(seed=11, users_per_minute=300),
        events=EVENTS,
        rate=20_000,
        duration=None,
        malformed_rate=0.02,
        events_out=events_file,
    )
    assert report.events == EVENTS
    assert report.malformed > 50

    # Every active user gets a slate whose version is the oracle's.
    expected = oracle_versions(events_file, settings)
    assert len(expected) > 500

    worker.wait_for(
        lambda: versions_match(redis_client, settings, expected),
        timeout=120,
        what="every user's slate at its version",
    )
    # The counters trail the last batch's Redis writes by its bookkeeping (persisting the
    # states, releasing memory): wait for them, then they must count every event once.
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= EVENTS,
        timeout=30,
        what="the last batch's bookkeeping",
    )
    assert worker.metric("appetence_events_consumed_total") == EVENTS
    # ``name[]`` restricts the page to those samples (what the pollers ask for), same values
    consumed = "appetence_events_consumed_total"
    last_batch = "appetence_last_batch_timestamp_seconds"
    rss = "process_resident_memory_bytes"  # from a collector that declares no names
    restricted = scrape(worker.metrics_url, names=[consumed, last_batch, rss])
    assert sorted(restricted) == [consumed, last_batch, rss]
    assert total(restricted, rss) > 0
    assert restricted[consumed] == scrape(worker.metrics_url)[consumed]
    # Each record's event->Redis splits into its wait before the batch and the batch's handling.
    records = worker.metric("appetence_event_to_redis_seconds_count")
    assert records == worker.metric("appetence_event_wait_seconds_count") > 0
    assert (
        0
        < worker.metric("appetence_event_wait_seconds_sum")
        < worker.metric("appetence_event_to_redis_seconds_sum")
    )
    # Produced far faster than one worker handles them: it fell behind and took larger
    # batches to catch up (stream/batching.py), and lost nothing doing so.
    assert worker.metric("appetence_batch_catch_up_total") >= 1
    for user_id in list(expected)[:50]:
        key = settings.user_key(user_id)
        slate = decode_slate(redis_client.hget(key, "recipes") or b"")
        assert slate.version == expected[user_id]
        assert 0 < redis_client.ttl(key) <= settings.redis_ttl_seconds
        profile = json.loads(redis_client.hget(key, "profile") or b"{}")
        assert profile["version"] == expected[user_id]

    # Every malformed record is in the dead-letter topic with the reason it was made for.
    letters = [
        msgspec.json.decode(raw, type=DeadLetter)
        for raw in read_topic(settings, settings.dead_letter_topic, report.malformed, 60)
    ]
    assert Counter(letter.reason for letter in letters) == Counter(report.malformed_by_reason)
    assert all(letter.original for letter in letters)
    assert worker.metric("appetence_events_rejected_total") == report.malformed

    # Replaying the very same events changes nothing in Redis (and no version goes back).
    before = snapshot(redis_client, settings.redis_key_prefix)
    producer = make_producer(settings)
    lines = events_file.read_bytes().splitlines()
    for line in lines:
        user_id = msgspec.json.decode(line)["user_id"]
        producer.send(settings.events_topic, value=line, key=user_id.encode())
    producer.flush()
    producer.close()
    worker.wait_for(
        lambda: worker.metric("appetence_events_duplicate_total") >= len(lines),
        timeout=120,
        what="the replayed events to be processed",
    )
    assert snapshot(redis_client, settings.redis_key_prefix) == before
    assert worker.metric("appetence_events_consumed_total") == EVENTS
    # Each record's event->Redis splits into its wait before the batch and the batch's handling.
    records = worker.metric("appetence_event_to_redis_seconds_count")
    assert records == worker.metric("appetence_event_wait_seconds_count") > 0
    assert (
        0
        < worker.metric("appetence_event_wait_seconds_sum")
        < worker.metric("appetence_event_to_redis_seconds_sum")
    )
