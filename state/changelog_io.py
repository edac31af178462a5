"""Kafka I/O for the user-state changelog: a Faust-topic writer and an aiokafka reader."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


class FaustTopicWriter:
    """Sends through the app's producer buffer; the marker waits for its offset.

    ``send`` does not wait for delivery: Faust flushes its producer before every offset
    commit, so a state record is durable before the offsets of the events behind it.
    """

    def __init__(self, topic: Any) -> None:
        self.topic = topic

    def send(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.topic.send_soon(key=key, value=value, partition=partition)

    async def send_and_wait_offset(self, key: bytes, value: bytes, partition: int) -> int:
        future = await self.topic.send(key=key, value=value, partition=partition)
        metadata = await future
        return int(metadata.offset)


class AIOKafkaPartitionReader:
    """Reads one partition from its beginning with a group-less consumer."""

    def __init__(self, consumer_options: dict[str, Any], timeout_seconds: float = 120.0) -> None:
        self.options = consumer_options
        self.timeout = timeout_seconds

    async def read_partition(self, topic: str, partition: int, until_offset: int) -> Iterable[Any]:
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=100,
            auto_offset_reset="earliest",  # if offset 0 was deleted, start at the log start
            **self.options,
        )
        await consumer.start()
        records: list[Any] = []
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            # An explicit seek to 0, not seek_to_beginning: Tansu's ListOffsets answers are
            # not reliable for multi-record batches, a fetch from 0 is.
            consumer.seek(tp, 0)
            deadline = time.monotonic() + self.timeout
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
                records.extend(batch.get(tp, []))
                if records and records[-1].offset >= until_offset:
                    return records
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"changelog {topic}[{partition}] not read through offset {until_offset} "
                        f"in {self.timeout}s (got {len(records)} records)"
                    )
        finally:
            await consumer.stop()
