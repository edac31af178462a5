"""Forget a user (GDPR): `appetence forget` erases every Redis key and segment entry, the
worker's state (a changelog tombstone) and audience membership within 60 s; the user's late
events from before the request are dropped; a worker restarted afterwards does not bring the
user back; other users are untouched."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from processors.events import PageView, encode_event
from stream.topics import kafka_client_options, make_producer, partition_for

from .conftest import AUDIENCE_API_TOKEN as TOKEN
from .conftest import WorkerHandle, send_taste_groups
from .test_audiences import post

pytestmark = pytest.mark.integration


def keys_mentioning(client: redis.Redis, prefix: str, user: str) -> list[str]:
    """Every key under the prefix that is the user's or holds the user as a member/field."""
    found = []
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        mine = key.endswith(f":user:{user}")
        if mine or (client.type(raw) == b"zset" and client.zscore(raw, user) is not None):
            found.append(key)
    return found


def last_changelog_value(settings: object, topic: str, user: str, partitions: int) -> object:
    """The latest changelog record value of the user: bytes, None (tombstone) or 'absent'."""
    consumer = KafkaConsumer(
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
        **kafka_client_options(settings),  # type: ignore[arg-type]
    )
    tp = TopicPartition(topic, partition_for(user, partitions))
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    latest: object = "absent"
    for record in consumer:
        if record.key == user.encode():
            latest = record.value
    consumer.close()
    return latest


def run_cli(worker: WorkerHandle, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_forget_erases_the_user_everywhere_within_60_seconds(
    audience_worker: WorkerHandle, redis_client: redis.Redis
) -> None:
    worker = audience_worker
    settings = worker.settings
    worker.start()
    now = int(time.time() * 1000)
    vegans = [f"v{i}" for i in range(300)]
    others = [f"o{i}" for i in range(300)]
    groups = [(vegans, ["vegan", "salad"]), (others, ["grill", "pasta"])]
    send_taste_groups(settings, groups, recipes=30, now=now)
    producer = make_producer(settings)
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= 1200,
        timeout=120,
        what="1,200 events processed",
    )
    seeds = vegans[:150]
    status, _ = post(worker, "/v1/audiences/vegans/members", {"add": seeds}, TOKEN)
    assert status == 202
    prefix = settings.redis_key_prefix
    target, bystander = "v1", "v2"
    worker.wait_for(
        lambda: len(keys_mentioning(redis_client, prefix, target)) >= 2,
        timeout=60,
        what="the user's hash and a decile segment holding them",
    )
    assert keys_mentioning(redis_client, prefix, bystander)

    started = time.monotonic()
    reply = run_cli(worker, "forget", target)
    assert reply["forget_requests"] == 1
    worker.wait_for(
        lambda: (
            not keys_mentioning(redis_client, prefix, target)
            and worker.metric("appetence_users_forgotten_total") >= 1
        ),
        timeout=60,
        what="no Redis key mentioning the forgotten user",
    )
    seconds = time.monotonic() - started
    print(f"forget -> erased from Redis in {seconds:.1f} s")
    assert seconds < 60
    topic = settings.user_state_changelog_topic
    worker.wait_for(
        lambda: last_changelog_value(settings, topic, target, settings.partitions) is None,
        timeout=30,
        what="a tombstone as the user's latest changelog record",
    )
    assert keys_mentioning(redis_client, prefix, bystander)  # others untouched

    # A late event from before the request is dropped; the user stays erased.
    late = PageView(event_id="late-1", ts=now - 30_000, user_id=target, item_id="r1",
                    item_type="recipe", category="vegan")  # fmt: skip
    producer.send(settings.events_topic, value=encode_event(late), key=target.encode())
    producer.flush()
    worker.wait_for(
        lambda: worker.metric("appetence_events_forgotten_total") >= 1,
        timeout=30,
        what="the late event to be dropped",
    )
    assert not keys_mentioning(redis_client, prefix, target)

    # A restarted worker replays the forget topic and the changelog: the user stays gone.
    worker.stop()
    worker.processes.clear()
    worker.start()
    marker = PageView(event_id="after-restart", ts=int(time.time() * 1000), user_id=bystander,
                      item_id="r2", item_type="recipe", category="vegan")  # fmt: skip
    producer.send(settings.events_topic, value=encode_event(marker), key=bystander.encode())
    producer.flush()
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= 1,
        timeout=60,
        what="the restarted worker to process an event",
    )
    time.sleep(2)
    assert not any(key.endswith(f":user:{target}") for key in keys_mentioning(
        redis_client, prefix, target))  # fmt: skip

    # Coming back later (after the request) is a fresh start, as for anyone new.
    back = PageView(event_id="back-1", ts=int(time.time() * 1000), user_id=target,
                    item_id="r3", item_type="recipe", category="grill")  # fmt: skip
    producer.send(settings.events_topic, value=encode_event(back), key=target.encode())
    producer.flush()
    producer.close()
    worker.wait_for(
        lambda: redis_client.hget(settings.user_key(target), "profile") is not None,
        timeout=60,
        what="the returning user's fresh profile",
    )
    profile = json.loads(redis_client.hget(settings.user_key(target), "profile") or b"{}")
    assert profile["events"] == 1
