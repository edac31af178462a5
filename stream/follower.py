"""Follow a whole (compacted) topic from offset 0 without a consumer group.

What every worker needs all of (the catalog, the latest loyalty model snapshot) is
broadcast this way rather than partitioned across the group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)


async def follow_topic(
    consumer_options: dict[str, Any],
    topic: str,
    apply: Callable[[Any], Awaitable[None]],
    after_batch: Callable[[], None] | None = None,
) -> None:
    """Apply every record of ``topic``, oldest first, until cancelled; reconnects after
    broker errors (and re-reads from the start, which compacted-state consumers tolerate)."""
    while True:
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=100,
            auto_offset_reset="earliest",
            **consumer_options,
        )
        try:
            await consumer.start()
            partitions: set[int] | None = None
            while not partitions:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(1.0)
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            for tp in assigned:
                consumer.seek(tp, 0)
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
                for records in batches.values():
                    for record in records:
                        await apply(record)
                if after_batch is not None:
                    after_batch()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("follower of %s failed; restarting in 2 s", topic)
            await asyncio.sleep(2.0)
        finally:
            await consumer.stop()
