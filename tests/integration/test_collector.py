"""The HTTP collector against a real broker, Redis and worker: events posted over HTTP reach
the user's slate; per-event rejections are answered and dead-lettered; 413, 429 with
Retry-After, 503 when the producer buffer is full; CORS; the tracker snippet in headless
Chromium (skipped where Chromium is absent)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer

from stream.embedded import EmbeddedStack, ManagedProcess, free_port, spawn, wait_for_port
from stream.topics import kafka_client_options, partition_for

from .conftest import WorkerHandle

pytestmark = pytest.mark.integration


def start_collector(
    worker: WorkerHandle, log_dir: Path, **settings: str
) -> tuple[str, ManagedProcess]:
    port = free_port()
    env = dict(worker.env)
    env.update(APPETENCE_COLLECTOR_PORT=str(port), APPETENCE_COLLECTOR_HOST="127.0.0.1")
    env.update({f"APPETENCE_{k.upper()}": v for k, v in settings.items()})
    proc = spawn(
        "collector",
        [sys.executable, "-m", "stream.cli", "collector"],
        log_dir / f"collector-{port}.log",
        env=env,
    )
    wait_for_port(port, 30, proc.popen)
    return f"http://127.0.0.1:{port}", proc


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(
        url, data=body, headers=headers or {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def event(user: str, event_id: str, item: str, **extra: object) -> dict[str, object]:
    return {
        "type": "click", "event_id": event_id, "ts": int(time.time() * 1000), "user_id": user,
        "item_id": item, "item_type": "recipe", "category": "pasta", **extra,
    }  # fmt: skip


@pytest.fixture()
def collector(worker: WorkerHandle, tmp_path: Path) -> Iterator[str]:
    worker.start()
    url, proc = start_collector(
        worker, tmp_path, collector_cors_origins='["https://recipes.example"]'
    )
    yield url
    proc.stop()


def test_posted_events_reach_the_slate_and_bad_ones_are_answered_and_dead_lettered(
    collector: str, worker: WorkerHandle, redis_client: redis.Redis
) -> None:
    settings = worker.settings
    history = [event(f"h{u}", f"h{u}-{s}", item) for u in range(4)
               for s, item in enumerate(["carbonara", "tiramisu"])]  # fmt: skip
    status, reply, _ = post(f"{collector}/v1/events", json.dumps(history).encode())
    assert status == 202 and reply == {"accepted": 8, "rejected": 0, "errors": []}
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") >= 8,
        timeout=60,
        what="the posted history",
    )
    mine = [event("me", "me-1", "carbonara"), {"type": "click", "event_id": "x"}, "nope"]
    status, reply, headers = post(
        f"{collector}/v1/events",
        json.dumps(mine).encode(),
        {"Content-Type": "text/plain", "Origin": "https://recipes.example"},
    )
    assert status == 202
    assert reply["accepted"] == 1 and reply["rejected"] == 2
    assert [(e["index"], e["reason"]) for e in reply["errors"]] == [
        (1, "missing_field"),
        (2, "not_an_object"),
    ]
    assert headers["Access-Control-Allow-Origin"] == "https://recipes.example"
    key = settings.user_key("me")
    worker.wait_for(lambda: redis_client.hget(key, "recipes"), timeout=60, what="me's slate")
    top = json.loads(redis_client.hget(key, "recipes") or b"{}")["items"][0]
    assert top["id"] == "tiramisu"

    consumer = KafkaConsumer(
        settings.dead_letter_topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        **kafka_client_options(settings),
    )
    letters = [json.loads(record.value) for record in consumer]
    consumer.close()
    assert sorted(letter["reason"] for letter in letters if letter["source_topic"] == "http") == [
        "missing_field",
        "not_an_object",
    ]

    status, reply, _ = post(f"{collector}/v1/events", b"{not json")
    assert status == 202 and reply["errors"][0]["reason"] == "invalid_json"
    status, _, _ = post(f"{collector}/v1/events", b"[" + b" " * 300_000 + b"]")
    assert status == 413
    # A foreign origin gets no CORS grant; a preflight from the site does.
    _, _, headers = post(
        f"{collector}/v1/events",
        json.dumps(event("me", "me-2", "x")).encode(),
        {"Origin": "https://evil.example"},
    )
    assert "Access-Control-Allow-Origin" not in headers
    preflight = urllib.request.Request(
        f"{collector}/v1/events",
        method="OPTIONS",
        headers={"Origin": "https://recipes.example", "Access-Control-Request-Method": "POST"},
    )
    with urllib.request.urlopen(preflight) as response:
        assert response.status == 204
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    with urllib.request.urlopen(f"{collector}/tracker.js") as response:
        assert b"sendBeacon" in response.read()
    with urllib.request.urlopen(f"{collector}/metrics") as response:
        text = response.read().decode()
    assert 'appetence_collector_events_total{result="accepted"} 10.0' in text


def test_rate_limit_answers_429_and_a_full_buffer_503(worker: WorkerHandle, tmp_path: Path) -> None:
    url, proc = start_collector(
        worker,
        tmp_path,
        collector_rate_per_second="0.5",
        collector_rate_burst="3",
        collector_buffer_bytes=str(64 * 1024),
        collector_max_body_bytes=str(200 * 1024),
    )
    try:
        body = json.dumps(event("r", "r-1", "x")).encode()
        statuses = [post(f"{url}/v1/events", body)[0] for _ in range(3)]
        assert statuses == [202, 202, 202]
        status, reply, headers = post(f"{url}/v1/events", body)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        time.sleep(2.1)  # one token back
        big = json.dumps([event("r", f"b{i}", "x", tags=["t" * 60] * 10) for i in range(100)])
        assert 64 * 1024 < len(big) < 200 * 1024
        status, reply, headers = post(f"{url}/v1/events", big.encode())
        assert status == 503 and headers["Retry-After"] == "1"
        assert reply == {"error": "producer buffer full"}
    finally:
        proc.stop()


def test_concurrent_requests_share_an_envelope_per_partition_on_their_users_partitions(
    worker: WorkerHandle, tmp_path: Path
) -> None:
    """Twenty single-event requests from twenty visitors at once, as a site's visitors send
    them: fewer records than requests reach the events topic (one per partition gathered
    within the linger), every event on the partition Kafka's partitioner gives its user,
    and the worker consumes them all."""
    worker.start()
    settings = worker.settings
    url, proc = start_collector(worker, tmp_path, collector_linger_ms="300")
    try:
        bodies = [json.dumps(event(f"v{n}", f"v{n}-1", "carbonara")).encode() for n in range(20)]
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = [
                status for status, _, _ in pool.map(lambda b: post(f"{url}/v1/events", b), bodies)
            ]
        assert statuses == [202] * 20
        with urllib.request.urlopen(f"{url}/metrics") as response:
            text = response.read().decode()
        sent = re.search(r"^appetence_collector_records_total (\S+)$", text, re.MULTILINE)
        assert sent is not None
        records_sent = float(sent.group(1))
        consumer = KafkaConsumer(
            settings.events_topic,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
            **kafka_client_options(settings),
        )
        records = list(consumer)
        consumer.close()
        placed = [
            (record.partition, item["user_id"])
            for record in records
            for item in json.loads(record.value)
        ]
        assert sorted(user for _, user in placed) == sorted(f"v{n}" for n in range(20))
        assert all(
            partition == partition_for(user, settings.partitions) for partition, user in placed
        )
        assert len(records) == records_sent < 20  # shared envelopes
        worker.wait_for(
            lambda: worker.metric("appetence_events_consumed_total") >= 20,
            timeout=60,
            what="the visitors' events",
        )
    finally:
        proc.stop()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Chromium/ChromeDriver not installed")
def test_the_tracker_in_a_real_browser_sends_a_click_that_reaches_the_slate(
    stack: EmbeddedStack, worker: WorkerHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    worker.start()
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    collector, proc = start_collector(worker, tmp_path, collector_cors_origins=json.dumps([origin]))
    settings = worker.settings
    history = [event(f"h{u}", f"h{u}-{s}", item) for u in range(4)
               for s, item in enumerate(["carbonara", "tiramisu"])]  # fmt: skip
    assert post(f"{collector}/v1/events", json.dumps(history).encode())[0] == 202
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        f"""<!doctype html><html><body>
<script src="{collector}/tracker.js" data-site="recipes.example" data-user-id="browser-user"
        data-item-id="home" data-item-type="page"></script>
<a id="recipe" href="#carbonara" data-item-id="carbonara" data-item-type="recipe"
   data-category="pasta" data-tags="quick,italian">Carbonara</a>
<div data-banner-id="b1" data-placement="top" style="height:50px">banner</div>
</body></html>"""
    )
    (site / "start.html").write_text('<!doctype html><a id="go" href="index.html">recipes</a>')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(site), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome'}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(f"{origin}/start.html?campaign=secret")  # the referrer of index.html
        browser.find_element(By.ID, "go").click()
        browser.find_element(By.ID, "recipe").click()
        key = settings.user_key("browser-user")
        worker.wait_for(
            lambda: (
                redis_client.hget(key, "recipes") is not None
                and json.loads(redis_client.hget(key, "profile") or b"{}").get("events", 0) >= 3
            ),
            timeout=60,
            what="the browser user's page view, impression and click in Redis",
        )
        top = json.loads(redis_client.hget(key, "recipes") or b"{}")["items"][0]
        assert top["id"] == "tiramisu"
        assert top["reason"].startswith("because you viewed carbonara")
    finally:
        browser.quit()
        server.shutdown()
        proc.stop()
    consumer = KafkaConsumer(
        settings.events_topic,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        **kafka_client_options(settings),
    )
    sent = [e for r in consumer for e in json.loads(r.value) if e["user_id"] == "browser-user"]
    consumer.close()
    assert {e["type"] for e in sent} == {"pageview", "impression", "click"}
    assert all("ip" not in e for e in sent)
    # The referrer travels as its origin only: never a path or query string.
    assert {e.get("referrer") for e in sent} == {origin}
