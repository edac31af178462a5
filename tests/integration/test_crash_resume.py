"""SIGKILL the worker mid-stream, start a new one: nothing lost, no version goes backwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from processors.simulator import SimulationConfig
from stream.simulate import run_simulation

from .conftest import WorkerHandle, versions_match
from .test_end_to_end import oracle_versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class VersionWatcher(threading.Thread):
    """Polls a sample of users' slate versions and records any that go backwards."""

    def __init__(self, client: redis.Redis, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.keys = client, keys
        self.highest: dict[str, int] = {}
        self.regressions: list[tuple[str, int, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            pipe = self.client.pipeline(transaction=False)
            for key in self.keys:
                pipe.hget(key, "recipes_version")
            for key, raw in zip(self.keys, pipe.execute(), strict=True):
                if raw is None:
                    continue
                version = int(raw)
                if version < self.highest.get(key, 0):
                    self.regressions.append((key, self.highest[key], version))
                self.highest[key] = max(version, self.highest.get(key, 0))
            time.sleep(0.05)


def test_worker_killed_mid_stream_resumes_to_the_oracle_state(
    worker: WorkerHandle, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = worker.settings
    first = worker.start()
    events_file = tmp_path / "events.jsonl"
    producer = threading.Thread(
        target=run_simulation,
        kwargs=dict(
            settings=settings,
            config=SimulationConfig(seed=23, users_per_minute=300),
            events=30_000,
            rate=3_000,
            duration=None,
            events_out=events_file,
        ),
    )
    producer.start()
    worker.wait_for(
        lambda: worker.metric("appetence_events_consumed_total") > 3_000,
        timeout=60,
        what="the first worker to make progress",
    )
    # Watch the users seen so far while we kill and replace the worker.
    seen = list(redis_client.scan_iter(match=f"{settings.redis_key_prefix}:user:*", count=1000))
    watcher = VersionWatcher(redis_client, [k.decode() for k in seen[:300]])
    watcher.start()
    first.kill()  # SIGKILL: no flush, no commit, no goodbye
    killed_at = time.monotonic()
    replacement = worker.start()
    producer.join()

    expected = oracle_versions(events_file, settings)

    worker.processes = [replacement]  # the killed one is expected to be dead
    worker.wait_for(
        lambda: versions_match(redis_client, settings, expected),
        timeout=180,
        what="Redis to match the oracle after the crash",
    )
    recovery_seconds = time.monotonic() - killed_at
    watcher.stopped.set()
    watcher.join()
    assert watcher.regressions == []
    assert len(watcher.highest) > 100
    print(f"recovered to the oracle state {recovery_seconds:.1f}s after SIGKILL")
