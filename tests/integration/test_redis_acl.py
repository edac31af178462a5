"""The Redis ACL users of docker-compose.yml, on a real redis-server: the workers' writer can
do everything the worker does (versioned CAS writes, segment moves, forget) on appetence keys
and nothing else; the ad server can read and not write; the default user is off."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import yaml

from state.redis_writer import FieldWrite, SegmentWrite, UserHashWriter
from stream.embedded import ManagedProcess, free_port, redis_server_binary, spawn, wait_for_port
from tests.unit.test_deploy import OPERATOR_ENV, compose

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITER = ("appetence-writer", OPERATOR_ENV["REDIS_WRITER_PASSWORD"])
ADSERVER = ("appetence-adserver", OPERATOR_ENV["REDIS_ADSERVER_PASSWORD"])


@pytest.fixture()
def acl_redis(tmp_path: Path) -> Iterator[int]:
    command = compose()["services"]["redis"]["command"]  # type: ignore[index]
    args = list(command[1:])
    # Loopback, a free port, no persistence in the test; the users exactly as deployed.
    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(tmp_path), *args]  # fmt: skip
    proc: ManagedProcess = spawn("redis-acl", argv, tmp_path / "redis.log")
    wait_for_port(port, 10, proc.popen)
    yield port
    proc.stop()


def test_the_compose_users_can_do_their_jobs_and_nothing_more(acl_redis: int) -> None:
    url = f"redis://127.0.0.1:{acl_redis}/0"

    async def worker_writes() -> None:
        client = aioredis.Redis.from_url(url, username=WRITER[0], password=WRITER[1])
        writer = UserHashWriter(client, "appetence:v1", ttl_seconds=600, max_retries=0)
        writer.stage("u1", FieldWrite("recipes", 5, b'{"items":[]}'))
        segment = writer.segment_key("brand", 1)
        writer.stage_segments("u1", SegmentWrite("audiences", 1, b"{}", ((None, segment, 0.9),)))
        flushed = await writer.flush()
        assert flushed.written >= 1
        assert await client.zscore(segment, "u1") == 0.9
        writer.stage("u2", FieldWrite("recipes", 5, b"{}"))
        await writer.flush()
        assert await writer.forget("u2", ["brand"], requested_at_ms=10)
        assert not await client.exists("appetence:v1:user:u2")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.set("other:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.flushall()
        await client.aclose()

    asyncio.run(worker_writes())

    reader = redis.Redis.from_url(url, username=ADSERVER[0], password=ADSERVER[1])
    assert reader.hget("appetence:v1:user:u1", "recipes") == b'{"items":[]}'
    assert reader.zrange("appetence:v1:audience:brand:decile:1", 0, -1) == [b"u1"]
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.hset("appetence:v1:user:u1", "recipes", "forged")
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.delete("appetence:v1:user:u1")
    reader.close()

    anonymous = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    assert "healthcheck" in shlex.join(yaml.safe_load((ROOT / "docker-compose.yml").read_text())
                                       ["services"]["redis"]["healthcheck"]["test"])  # fmt: skip
