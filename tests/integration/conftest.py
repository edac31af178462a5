"""Fixtures that start a real Tansu broker and a real Redis on free loopback ports."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from processors.events import PageView, encode_event
from stream.config import Settings, load_settings
from stream.embedded import EmbeddedStack, ManagedProcess, embedded_stack, free_port
from stream.live import scrape, total
from stream.supervisor import spawn_worker, worker_env
from stream.topics import ensure_topics, make_producer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with embedded_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture()
def redis_client(stack: EmbeddedStack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


class WorkerHandle:
    """A real worker subprocess with its own app id and topics."""

    def __init__(self, stack: EmbeddedStack, log_dir: Path, extra_env: dict[str, str]) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.web_port = free_port()
        self.env = worker_env(stack.bootstrap, stack.redis_url, self.web_port)
        self.env.update(
            APPETENCE_APP_ID=f"test-{suffix}",
            APPETENCE_TOPIC_PREFIX=f"test-{suffix}",
            APPETENCE_REDIS_KEY_PREFIX=f"t{suffix}:v1",
            **extra_env,
        )
        self.settings: Settings = load_settings(
            **{
                k[len("APPETENCE_") :].lower(): v
                for k, v in self.env.items()
                if k.startswith("APPETENCE_")
            }
        )
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/metrics"

    def start(self) -> ManagedProcess:
        ensure_topics(self.settings)
        index = len(self.processes)
        # Faust's directory under the test's tmp_path: a SIGKILLed worker cannot remove the
        # temporary one it makes by default, and the fault tests kill workers by the dozen
        env = {"APPETENCE_DATA_DIR": str(self.log_dir / f"faust-{index}"), **self.env}
        proc = spawn_worker(env, self.log_dir / f"worker-{index}.log")
        self.processes.append(proc)
        return proc

    def metric(self, name: str) -> float:
        return total(scrape(self.metrics_url, names=[name]), name)

    def wait_for(self, predicate: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            for proc in self.processes:
                assert proc.alive(), f"worker died; see {proc.log_path}"
            time.sleep(0.25)
        logs = "\n".join(
            (p.log_path.read_text()[-3000:] if p.log_path else "") for p in self.processes
        )
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop(timeout=20)


def send_taste_groups(
    settings: Settings,
    groups: list[tuple[list[str], list[str]]],
    recipes: int,
    now: int,
    **context: str,
) -> int:
    """Each user of a group views one recipe of each of the group's categories (a minute
    ago); returns the events sent. Two groups of distinct tastes make a look-alike problem."""
    producer = make_producer(settings)
    sent = 0
    for users, categories in groups:
        for n, user in enumerate(users):
            for k, category in enumerate(categories):
                event = PageView(
                    event_id=f"{user}-{k}", ts=now - 60_000 + k * 1000, user_id=user,
                    item_id=f"r{(n + k) % recipes}", item_type="recipe", category=category,
                    **context,
                )  # fmt: skip
                producer.send(settings.events_topic, value=encode_event(event), key=user.encode())
                sent += 1
    producer.flush()
    producer.close()
    return sent


def versions_match(client: redis.Redis, settings: Settings, expected: dict[str, int]) -> bool:
    """True when every user's recipes_version in Redis equals the expected one."""
    pipe = client.pipeline(transaction=False)
    for user_id in expected:
        pipe.hget(settings.user_key(user_id), "recipes_version")
    return all(
        raw is not None and int(raw) == expected[user_id]
        for user_id, raw in zip(expected, pipe.execute(), strict=True)
    )


@pytest.fixture()
def worker(stack: EmbeddedStack, tmp_path: Path) -> Iterator[WorkerHandle]:
    handle = WorkerHandle(stack, tmp_path, {})
    yield handle
    handle.stop()


AUDIENCE_API_TOKEN = "audience-api-token-for-the-test"


@pytest.fixture()
def audience_worker(stack: EmbeddedStack, tmp_path: Path) -> Iterator[WorkerHandle]:
    """A worker that shares models (signing key) and takes seeds over HTTP (token)."""
    handle = WorkerHandle(
        stack,
        tmp_path,
        {
            "APPETENCE_MODEL_SIGNING_KEY": "audience-test-signing-key-0123456789",
            "APPETENCE_AUDIENCE_API_TOKEN": AUDIENCE_API_TOKEN,
            "APPETENCE_AUDIENCE_SNAPSHOT_SECONDS": "1",
        },
    )
    yield handle
    handle.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("APPETENCE_LOG_LEVEL", "info")
