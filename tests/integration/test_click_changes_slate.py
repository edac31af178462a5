"""A click reaches the user's Redis slate: what others clicked next is now on top."""

from __future__ import annotations

import json
import time

import pytest
import redis

from processors.events import Click, encode_event
from stream.topics import make_producer

from .conftest import WorkerHandle

pytestmark = pytest.mark.integration


def test_a_click_puts_what_others_clicked_next_on_top_of_the_slate(
    worker: WorkerHandle, redis_client: redis.Redis
) -> None:
    settings = worker.settings
    worker.start()
    now = int(time.time() * 1000)
    events = [
        Click(event_id=f"h{u}-{step}", ts=now - 60_000 + u * 100 + step, user_id=f"h{u}",
              item_id=item, item_type="recipe", category="pasta")
        for u in range(5)
        for step, item in enumerate(["carbonara", "tiramisu"])
    ]  # fmt: skip
    mine = Click(event_id="me-1", ts=now, user_id="me", item_id="carbonara",
                 item_type="recipe", category="pasta")  # fmt: skip
    producer = make_producer(settings)

    def send(batch: list[Click]) -> None:
        for event in batch:
            producer.send(
                settings.events_topic, value=encode_event(event), key=event.user_id.encode()
            )
        producer.flush()

    # Other users' history first (other partitions may be consumed in any order), then mine.
    send(events)
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= len(events),
        timeout=60,
        what="the history to be processed",
    )
    send([mine])
    producer.close()
    key = settings.user_key("me")
    worker.wait_for(lambda: redis_client.hget(key, "recipes"), timeout=60, what="me's slate")
    top = json.loads(redis_client.hget(key, "recipes") or b"{}")["items"][0]
    assert top["id"] == "tiramisu"
    assert top["reason"] == "because you viewed carbonara (5 times together)"
