"""Catalog through Kafka; a new session's category reaches the profile and the banner slate
in Redis within one event batch; invalid catalog records are dead-lettered, not applied."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processors.events import PageView, encode_event
from stream.catalog_load import load_catalog_lines
from stream.embedded import EmbeddedStack
from stream.topics import make_producer

from .conftest import WorkerHandle

pytestmark = pytest.mark.integration

CATALOG = [
    b'{"kind":"banner","id":"pasta-b","advertiser":"acme","categories":["pasta"],"daily_cap":5}',
    b'{"kind":"banner","id":"soup-b","advertiser":"brothco","categories":["soup"]}',
    b'{"kind":"item","id":"r1","item_type":"recipe","category":"pasta","tags":["quick"]}',
    b'{"kind":"banner","id":"broken","daily_cap":0}',
]


@pytest.fixture()
def banner_worker(stack: EmbeddedStack, tmp_path: Path) -> Iterator[WorkerHandle]:
    handle = WorkerHandle(
        stack,
        tmp_path,
        {  # exploration and a weak prior would make the CTR term a coin flip in a test;
            # the segment posterior is shrunk to the banner's with this strength, so it must
            # be pinned too (at 50 it is Beta(1, 49): the sample varies 100%)
            "APPETENCE_BANNER_EXPLORATION_SHARE": "0",
            "APPETENCE_BANNER_CTR_PRIOR_CLICKS": "100",
            "APPETENCE_BANNER_CTR_PRIOR_IMPRESSIONS": "5000",
            "APPETENCE_BANNER_SEGMENT_PRIOR_STRENGTH": "5000",
        },
    )
    yield handle
    handle.stop()


def test_a_new_sessions_category_reaches_profile_and_banners_in_one_batch(
    banner_worker: WorkerHandle, redis_client: redis.Redis
) -> None:
    worker = banner_worker
    settings = worker.settings
    worker.start()
    producer = make_producer(settings)
    report = load_catalog_lines(CATALOG, producer, settings, source="test")
    assert report.loaded == 3 and dict(report.rejected) == {"invalid_field": 1}
    producer.send(settings.catalog_topic, key=b"banner:x", value=b'{"kind":"banner"}')
    producer.flush()
    worker.wait_for(
        lambda: (
            worker.metric("appetence_catalog_records_total") >= 3
            and worker.metric("appetence_catalog_rejected_total") >= 1
        ),
        timeout=60,
        what="the catalog to be applied and the bad record dead-lettered",
    )
    key = settings.user_key("me")

    def send(event: PageView) -> None:
        producer.send(settings.events_topic, value=encode_event(event), key=b"me")
        producer.flush()

    def fields() -> tuple[dict, dict]:  # type: ignore[type-arg]
        raw = redis_client.hmget(key, ["profile", "banners"])
        return json.loads(raw[0] or b"{}"), json.loads(raw[1] or b"{}")

    now = int(time.time() * 1000)
    for i in range(3):  # an earlier session, two hours ago, all pasta
        ts = now - 7_200_000 + i * 60_000
        send(PageView(event_id=f"p{i}", ts=ts, user_id="me", item_id=f"r{i}",
                      item_type="recipe", category="pasta", device="mobile"))  # fmt: skip
    worker.wait_for(lambda: fields()[0].get("events") == 3, timeout=60, what="first session")
    profile, banners = fields()
    assert profile["session_categories"][0][0] == "pasta"
    assert banners["items"][0]["id"] == "pasta-b"
    assert banners["items"][0]["remaining_today"] == 5

    send(PageView(event_id="s1", ts=now, user_id="me", item_id="r9", item_type="recipe",
                  category="soup", device="mobile"))  # fmt: skip
    worker.wait_for(lambda: fields()[0].get("events") == 4, timeout=60, what="new session")
    profile, banners = fields()
    assert profile["sessions"] == 2 and profile["session_categories"] == [["soup", 1.0]]
    assert profile["top_categories"][0][0] == "pasta"  # long-term interest unchanged
    assert banners["items"][0]["id"] == "soup-b"
    assert banners["version"] == profile["version"]  # written from the same state
    producer.close()
