"""Loyalty in the live system: labels resolved by event time reach the learner through the
examples topic, scores reach the Redis profile, a signed snapshot is published, and a
restarted worker resumes from it (the checkpoint), rejecting snapshots signed otherwise."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processors.events import PageView, encode_event
from processors.loyalty import LoyaltyConfig, LoyaltyModels
from stream.embedded import EmbeddedStack
from stream.live import scrape
from stream.loyalty_learner import SNAPSHOT_KEY
from stream.topics import make_producer

from .conftest import WorkerHandle

pytestmark = pytest.mark.integration

HOUR = 3_600_000
KEY = "integration-test-signing-key-0123456789"


def sample(worker: WorkerHandle, name: str, **labels: str) -> float | None:
    """The sum of the series of ``name`` with these labels; None if there is none."""
    values = [
        value
        for series, value in scrape(worker.metrics_url).get(name, [])
        if all(series.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def snapshots(worker: WorkerHandle, result: str) -> float:
    return sample(worker, "appetence_loyalty_snapshots_total", result=result) or 0.0


@pytest.fixture()
def loyalty_worker(stack: EmbeddedStack, tmp_path: Path) -> Iterator[WorkerHandle]:
    handle = WorkerHandle(
        stack,
        tmp_path,
        {
            "APPETENCE_MODEL_SIGNING_KEY": KEY,
            # 1 day: a negative then resolves within the worker's 7-day event age limit
            "APPETENCE_RETURN_HORIZON_DAYS": "1",
            "APPETENCE_LOYALTY_SNAPSHOT_SECONDS": "1",
        },
    )
    yield handle
    handle.stop()


def test_labels_resolve_scores_reach_redis_and_the_model_survives_a_restart(
    loyalty_worker: WorkerHandle, redis_client: redis.Redis
) -> None:
    worker = loyalty_worker
    settings = worker.settings
    first = worker.start()
    producer = make_producer(settings)
    now = int(time.time() * 1000)

    def view(user: str, ts: int, n: int, plan: str) -> None:
        event = PageView(
            event_id=f"{user}-{n}", ts=ts, user_id=user, item_id=f"r{n}", item_type="recipe",
            category="pasta", device="desktop", plan=plan,
        )  # fmt: skip
        producer.send(settings.events_topic, value=encode_event(event), key=user.encode())

    # 20 users come back after 3 hours (positive), 20 are seen once 3 days ago: the newest
    # event time passes their 1-day horizon (negative).
    for u in range(20):
        view(f"back{u}", now - 50 * HOUR, 0, "premium")
        view(f"back{u}", now - 47 * HOUR, 1, "premium")
        view(f"gone{u}", now - 72 * HOUR, 0, "free")
    producer.flush()
    view("clock", now, 0, "free")  # advances the watermark past the negatives' deadlines
    producer.flush()

    resolved = "appetence_loyalty_labels_resolved_total"
    worker.wait_for(
        lambda: (
            worker.metric(resolved) >= 60
            and worker.metric("appetence_loyalty_examples_learned_total") >= 60
            and snapshots(worker, "published") >= 1
        ),
        timeout=90,
        what="60 labels resolved, learned by the learner and a snapshot published",
    )
    worker.wait_for(  # the gauges follow every 2 s
        lambda: worker.metric("appetence_loyalty_window_labels") >= 40,
        timeout=10,
        what="the live metrics window gauge",
    )
    for model in ("logistic", "frequency", "served"):
        auc = sample(worker, "appetence_loyalty_roc_auc", target="returns", model=model)
        assert auc is not None and 0.0 <= auc <= 1.0
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/retention") as response:
        report = json.loads(response.read())
    # session-end labels, check-ins left out: the returners' first sessions (back in 3 h),
    # their second ones and the others' single ones (not back within the day)
    assert report["labels"] == 60
    plans = {r["value"]: r for r in report["rates"] if r["attribute"] == "plan"}
    assert plans["premium"]["rate"] == 0.5 and plans["free"]["rate"] == 0.0
    assert plans["free"]["ci95"][1] > 0.0  # a Wilson interval, not a point
    profile = json.loads(redis_client.hget(settings.user_key("back0"), "profile") or b"{}")
    assert 0.0 <= profile["return_probability"] <= 1.0 and profile["loyal"] is False

    # A snapshot signed with another key is rejected, never unpickled.
    forged = LoyaltyModels(LoyaltyConfig()).snapshot(b"not the key of this deployment")
    producer.send(settings.loyalty_models_topic, key=SNAPSHOT_KEY, value=forged)
    producer.flush()

    first.stop(timeout=20)
    worker.processes.remove(first)
    second = worker.start()
    worker.wait_for(
        lambda: snapshots(worker, "loaded") >= 1 and snapshots(worker, "rejected") >= 1,
        timeout=90,
        what="the restarted worker to load the signed snapshot and reject the forged one",
    )
    assert second.alive()
