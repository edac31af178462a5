"""Kafka I/O for the user-state changelog: a Faust-topic writer and an aiokafka reader."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

#: A changelog record: key, value (None: a tombstone), partition.
ChangelogRecord = tuple[bytes, bytes | None, int]


class FaustTopicWriter:
    """Writes through the app's producer; the marker waits for its offset.

    Neither ``send`` nor ``send_many`` waits for delivery: Faust flushes its producer before
    every offset commit, so a state record is durable before the offsets of the events
    behind it.
    """

    def __init__(self, topic: Any, fold_partitions: bool = False) -> None:
        self.topic = topic
        #: A record for a partition the topic does not have goes to ``partition % count``
        #: instead of failing (dead letters name their input's partition, and an events
        #: topic may have been given more partitions than its dead-letter topic). Never for
        #: the changelog, whose partitions must match the input's.
        self.fold_partitions = fold_partitions

    def send(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.topic.send_soon(key=key, value=value, partition=partition)

    async def send_many(self, records: Sequence[ChangelogRecord]) -> None:
        """Hand many records to the producer as one record batch per partition (and per
        ``batch_size`` bytes). ``send`` costs far more worker CPU per record (Faust wraps each
        message in futures, a buffer queue, a task step and monitor callbacks): in a
        100,000-event drain the changelog took 8.5% of the worker's samples through ``send``,
        1.2% through this (docs/benchmarks.md).

        Returns once the records are in the producer's accumulator, not once delivered: it is
        the same producer Faust flushes before every offset commit, so they are durable
        before the offsets of the events behind them, as with ``send``. Records ``send``
        buffered earlier are handed over first, so a key's records keep their order.
        """
        if not records:
            return
        producer = self.topic.app.producer
        await producer.buffer.flush()  # earlier send() records first: per-key order
        # Faust's own AIOKafkaProducer (private accessor): a producer of ours would not be
        # flushed by Faust's commit.
        kafka = producer._ensure_producer()
        topic = self.topic.get_topic_name()
        # the topic's partitions (waits for its metadata the first time: ``send_batch``
        # only looks them up, and fails on a topic it has no metadata for yet)
        known = sorted(await kafka.partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for key, value, partition in records:
            if self.fold_partitions and partition not in known:
                partition = known[partition % len(known)]
            by_partition.setdefault(partition, []).append((key, value))
        for partition, pairs in by_partition.items():
            batch = kafka.create_batch()
            for key, value in pairs:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    await self._send_batch(kafka, batch, topic, partition)
                    batch = kafka.create_batch()
                    # a batch's first record always fits, whatever its size
                    batch.append(key=key, value=value, timestamp=None)
            await self._send_batch(kafka, batch, topic, partition)

    @staticmethod
    async def _send_batch(kafka: Any, batch: Any, topic: str, partition: int) -> None:
        batch.close()  # no send() of Faust's is appended to it: it is sent as built
        delivered = await kafka.send_batch(batch, topic, partition=partition)
        delivered.add_done_callback(_log_failed_delivery)

    async def send_and_wait_offset(self, key: bytes, value: bytes, partition: int) -> int:
        future = await self.topic.send(key=key, value=value, partition=partition)
        metadata = await future
        return int(metadata.offset)


def _log_failed_delivery(delivered: Any) -> None:
    if not delivered.cancelled() and delivered.exception() is not None:
        log.error("changelog batch not delivered: %r", delivered.exception())


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
