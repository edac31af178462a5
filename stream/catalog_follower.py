"""Every worker follows the whole compacted catalog topic (no consumer group), from offset 0.

The catalog is small and every worker needs all of it (any user may be shown any banner),
so it is broadcast rather than partitioned. Invalid records are dead-lettered with a reason
and counted; the follower never stops on bad input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.catalog import decode_catalog_record
from processors.events import dead_letter_bytes
from processors.pipeline import SliceProcessor
from stream.metrics import Metrics

log = logging.getLogger(__name__)

SendDeadLetter = Callable[[bytes | None, bytes], Awaitable[Any]]


class CatalogFollower:
    def __init__(
        self,
        consumer_options: dict[str, Any],
        topic: str,
        processor: SliceProcessor,
        send_dead_letter: SendDeadLetter,
        metrics: Metrics,
    ) -> None:
        self.options = consumer_options
        self.topic = topic
        self.processor = processor
        self.send_dead_letter = send_dead_letter
        self.metrics = metrics
        self.records_applied = 0

    async def apply(self, record: Any) -> None:
        """One catalog record: upsert, tombstone, or dead letter."""
        key = record.key.decode("utf-8", "replace") if record.key else None
        if record.value is None:
            self.processor.apply_catalog(None, key)
            self.records_applied += 1
            return
        decoded = decode_catalog_record(record.value)
        if decoded.rejection is not None:
            rejection = decoded.rejection
            self.metrics.catalog_rejected.labels(reason=rejection.reason).inc()
            letter = dead_letter_bytes(
                rejection, record.topic, record.partition, record.offset, int(time.time() * 1000)
            )
            await self.send_dead_letter(record.key, letter)
            return
        self.processor.apply_catalog(decoded.record)
        self.records_applied += 1
        self.metrics.catalog_records.inc()

    async def run(self) -> None:
        """Follow the topic until cancelled; reconnects after broker errors."""
        while True:
            consumer = AIOKafkaConsumer(
                enable_auto_commit=False,
                group_id=None,
                fetch_max_wait_ms=100,
                auto_offset_reset="earliest",
                **self.options,
            )
            try:
                await consumer.start()
                partitions: set[int] | None = None
                while not partitions:
                    partitions = consumer.partitions_for_topic(self.topic)
                    if not partitions:
                        await consumer._client.force_metadata_update()
                        await asyncio.sleep(1.0)
                assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                consumer.assign(assigned)
                for tp in assigned:
                    consumer.seek(tp, 0)  # from the start: the compacted topic is the catalog
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
                    for records in batches.values():
                        for record in records:
                            await self.apply(record)
                    self.metrics.catalog_banners.set(len(self.processor.catalog.banners))
                    self.metrics.catalog_items.set(len(self.processor.catalog.items))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catalog follower failed; restarting in 2 s")
                await asyncio.sleep(2.0)
            finally:
                await consumer.stop()
