"""Audiences live: 1,000 seed ids added over HTTP update the decile segments in Redis within
seconds; the segments hold look-alikes; the endpoint refuses a wrong token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import redis

from .conftest import AUDIENCE_API_TOKEN as TOKEN
from .conftest import WorkerHandle, send_taste_groups

pytestmark = pytest.mark.integration


def post(worker: WorkerHandle, path: str, body: object, token: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.web_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_one_thousand_seeds_update_segments_within_seconds(
    audience_worker: WorkerHandle, redis_client: redis.Redis
) -> None:
    worker = audience_worker
    settings = worker.settings
    worker.start()
    now = int(time.time() * 1000)
    vegans = [f"v{i}" for i in range(1200)]
    others = [f"o{i}" for i in range(1300)]
    groups = [(vegans, ["vegan", "salad"]), (others, ["grill", "pasta"])]
    send_taste_groups(settings, groups, recipes=50, now=now, device="mobile")
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= 5000,
        timeout=120,
        what="5,000 events processed",
    )

    status, _ = post(worker, "/v1/audiences/vegans/members", {"add": ["v1"]}, "wrong-token")
    assert status == 401
    seeds = vegans[:1000]
    started = time.monotonic()
    status, reply = post(worker, "/v1/audiences/vegans/members", {"add": [*seeds, "bad/\n"]}, TOKEN)
    assert status == 202 and reply["added"] == 1000 and len(reply["rejected"]) == 1

    top = f"{settings.redis_key_prefix}:audience:vegans:decile:1"
    worker.wait_for(
        lambda: (
            redis_client.zcard(top) > 0
            and redis_client.hget(settings.user_key("v1100"), "audiences") is not None
        ),
        timeout=60,
        what="the top-decile segment and a look-alike's audiences field",
    )
    seconds = time.monotonic() - started
    print(f"seeds -> segments in Redis: {seconds:.1f} s")
    assert seconds < 30
    members = [m.decode() for m in redis_client.zrange(top, 0, -1)]
    assert sum(m.startswith("v") for m in members) >= 0.9 * len(members)
    assert redis_client.pttl(top) > 0
    field = json.loads(redis_client.hget(settings.user_key("v1100"), "audiences") or b"{}")
    assert field["vegans"]["decile"] <= 2  # a vegan who is no seed: a look-alike
    worker.wait_for(
        lambda: worker.metric("appetence_audience_seeds_total") >= 1000,
        timeout=10,
        what="seed metric",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/audiences/vegans") as response:
        report = json.loads(response.read())
    assert report["members"] == 1000 and len(report["lift"]) == 10
