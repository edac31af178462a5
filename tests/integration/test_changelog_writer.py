"""The worker's changelog writer against the real broker: records handed over together
(``send_many``, one record batch per partition and batch size) land complete and in order,
after the records ``send`` buffered before them, and a new owner recovers from them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from processors.user_state import UserState
from state.changelog_io import AIOKafkaPartitionReader, FaustTopicWriter
from state.tables import UserStateStore
from stream.app import create_app
from stream.config import Settings, load_settings
from stream.embedded import EmbeddedStack
from stream.topics import aiokafka_client_options, ensure_topics

pytestmark = pytest.mark.integration


def _raw_topic(appetence: Any, name: str, partitions: int) -> Any:
    """The changelog topic as the worker declares it: keys and values stay bytes."""
    return appetence.app.topic(
        name, key_serializer="raw", value_serializer="raw", partitions=partitions
    )


def _fresh_topics(stack: EmbeddedStack, partitions: int) -> Settings:
    """Settings of a new app id, its topics created; record batches of Kafka's default 16 KiB
    (the worker's are larger), so that a partition's records take many of them."""
    settings = load_settings(
        kafka_bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        app_id=f"changelog-{uuid.uuid4().hex[:8]}",
        partitions=partitions,
        kafka_producer_batch_bytes=16384,
    )
    ensure_topics(settings)
    return settings


def test_records_sent_together_land_complete_and_in_order(stack: EmbeddedStack) -> None:
    settings = _fresh_topics(stack, partitions=3)
    topic = settings.user_state_changelog_topic
    # ~450 records of ~400 bytes per partition: many times the 16 KiB producer batch
    records = [(f"user-{n % 97}".encode(), f"{n:06d}".encode() * 66, n % 3) for n in range(1_350)]
    expected: dict[int, list[tuple[bytes, bytes | None]]] = {0: [(b"early", b"sent before")]}
    for key, value, partition in records[:700]:
        expected.setdefault(partition, []).append((key, value))
    expected[2].append((b"user-5", None))
    for key, value, partition in records[700:]:
        expected[partition].append((key, value))

    async def scenario() -> dict[int, list[tuple[bytes, bytes | None]]]:
        appetence = create_app(settings)
        producer = appetence.app.producer
        await producer.start()
        try:
            writer = FaustTopicWriter(_raw_topic(appetence, topic, settings.partitions))
            writer.send(b"early", b"sent before", 0)  # through Faust's buffer
            await writer.send_many(records[:700])
            writer.send(b"user-5", None, 2)  # a tombstone between two hand-overs
            await writer.send_many(records[700:])
            await producer.flush()  # what Faust does before every offset commit
        finally:
            await producer.stop()
        reader = AIOKafkaPartitionReader(aiokafka_client_options(settings))
        landed = {}
        for partition in range(settings.partitions):
            last = len(expected[partition]) - 1
            read = await reader.read_partition(topic, partition, until_offset=last)
            landed[partition] = [(record.key, record.value) for record in read]
        return landed

    landed = asyncio.run(scenario())
    assert landed == expected


def test_a_store_persisting_through_it_is_recovered_by_the_next_owner(
    stack: EmbeddedStack,
) -> None:
    settings = _fresh_topics(stack, partitions=2)
    topic = settings.user_state_changelog_topic
    states = {f"u{n}": UserState(user_id=f"u{n}", partition=n % 2) for n in range(300)}
    for n, state in enumerate(states.values()):
        state.segment = f"segment-{n}"

    async def scenario() -> UserStateStore:
        appetence = create_app(settings)
        producer = appetence.app.producer
        await producer.start()
        reader = AIOKafkaPartitionReader(aiokafka_client_options(settings))
        try:
            writer = FaustTopicWriter(_raw_topic(appetence, topic, settings.partitions))
            first = UserStateStore(topic, writer, reader)
            await first.persist(states)
            await producer.flush()
            second = UserStateStore(topic, writer, reader)
            await second.ensure_recovered({0, 1})  # its marker goes through the producer
        finally:
            await producer.stop()
        return second

    recovered = asyncio.run(scenario())
    assert len(recovered) == len(states)
    assert all(recovered.get(user_id) == state for user_id, state in states.items())


def test_dead_letters_for_partitions_the_topic_lacks_are_folded_into_it(
    stack: EmbeddedStack,
) -> None:
    """A dead letter names its input's partition; an events topic given more partitions than
    its dead-letter topic must not fail the batch (its first hand-over, with no metadata of
    the topic fetched yet, too)."""
    settings = load_settings(
        kafka_bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        app_id=f"folded-{uuid.uuid4().hex[:8]}",
        topic_prefix=f"folded-{uuid.uuid4().hex[:8]}",  # its own dead-letter topic
        partitions=2,
    )
    ensure_topics(settings)
    topic = settings.dead_letter_topic
    records = [(f"k{n}".encode(), f"letter {n}".encode(), n % 5) for n in range(40)]
    expected: dict[int, list[tuple[bytes, bytes | None]]] = {0: [], 1: []}
    for key, value, partition in records:
        expected[partition % 2].append((key, value))

    async def scenario() -> dict[int, list[tuple[bytes, bytes | None]]]:
        appetence = create_app(settings)
        producer = appetence.app.producer
        await producer.start()
        try:
            writer = FaustTopicWriter(_raw_topic(appetence, topic, 2), fold_partitions=True)
            await writer.send_many(records)
            await producer.flush()
        finally:
            await producer.stop()
        reader = AIOKafkaPartitionReader(aiokafka_client_options(settings))
        landed = {}
        for partition in (0, 1):
            last = len(expected[partition]) - 1
            read = await reader.read_partition(topic, partition, until_offset=last)
            landed[partition] = [(record.key, record.value) for record in read]
        return landed

    assert asyncio.run(scenario()) == expected
