"""Every worker follows the whole compacted catalog topic (no consumer group), from offset 0.

The catalog is small and every worker needs all of it (any user may be shown any banner),
so it is broadcast rather than partitioned. Invalid records are dead-lettered with a reason
and counted; the follower never stops on bad input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from processors.catalog import decode_catalog_record
from processors.events import dead_letter_bytes
from processors.pipeline import SliceProcessor
from stream.follower import follow_topic
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
        """Follow the topic until cancelled (from the start: the compacted topic is the
        catalog); reconnects after broker errors."""
        await follow_topic(self.options, self.topic, self.apply, self._update_gauges)

    def _update_gauges(self) -> None:
        self.metrics.catalog_banners.set(len(self.processor.catalog.banners))
        self.metrics.catalog_items.set(len(self.processor.catalog.items))
