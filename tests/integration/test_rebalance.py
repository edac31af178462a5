"""A second worker joins mid-stream: partitions move, their user state moves with them."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from processors.events import encode_event
from processors.simulator import SimulationConfig, TrafficModel
from stream.embedded import free_port
from stream.topics import make_producer

from .conftest import WorkerHandle, versions_match
from .test_end_to_end import oracle_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def assigned(handle: WorkerHandle) -> list[int]:
    try:
        url = handle.metrics_url.replace("/metrics", "/health")
        with urllib.request.urlopen(url, timeout=2) as response:
            return list(json.loads(response.read())["assigned_partitions"])
    except OSError:
        return []


def test_state_follows_partitions_when_a_worker_joins(
    worker: WorkerHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = worker.settings
    # Returning users: the second half continues the first half's users.
    model = TrafficModel(
        SimulationConfig(seed=31, users_per_minute=300, mean_days_between_sessions=0.005),
        start_ms=int(time.time() * 1000) - 3_600_000,
    )
    events = [e for _, e in zip(range(12_000), model.events(), strict=False)]
    all_events = tmp_path / "events.jsonl"
    all_events.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))

    def produce(part: list) -> None:  # type: ignore[type-arg]
        producer = make_producer(settings)
        for event in part:
            producer.send(
                settings.events_topic, value=encode_event(event), key=event.user_id.encode()
            )
        producer.flush()
        producer.close()

    worker.start()
    produce(events[:6_000])
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= 6_000,
        timeout=90,
        what="the first worker to process the first half",
    )
    second = WorkerHandle.__new__(WorkerHandle)
    second.__dict__.update(worker.__dict__)
    second.web_port = free_port()
    second.env = {**worker.env, "APPETENCE_WEB_PORT": str(second.web_port)}
    second.processes = []
    second.start()
    try:
        worker.wait_for(
            lambda: bool(assigned(worker)) and bool(assigned(second)),
            timeout=90,
            what="both workers to own partitions",
        )
        produce(events[6_000:])
        oracle = oracle_states(all_events, settings)
        expected = {user_id: state.version for user_id, state in oracle.items()}
        worker.wait_for(
            lambda: versions_match(redis_client, settings, expected),
            timeout=120,
            what="Redis to match the oracle",
        )
        moved = set(assigned(second))
        assert moved and not moved & set(assigned(worker))
        # Versions alone could match with lost state; the event counts cannot: a user whose
        # partition moved but whose state did not would restart counting from zero.
        pipe = redis_client.pipeline(transaction=False)
        for user_id in oracle:
            pipe.hget(settings.user_key(user_id), "profile")
        counts = {
            user_id: json.loads(raw)["events"]
            for user_id, raw in zip(oracle, pipe.execute(), strict=True)
        }
        assert counts == {user_id: state.events_applied for user_id, state in oracle.items()}
        assert second.metric("appetence_users_in_state") > 0
    finally:
        second.stop()
