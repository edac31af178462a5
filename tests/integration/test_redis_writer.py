"""The Redis contract against a real Redis: versioned CAS, TTL, pipelining, coalescing."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from state.redis_writer import (
    FieldWrite,
    RedisUnavailable,
    SegmentWrite,
    UserHashWriter,
    pack_with_hiredis,
)
from stream.embedded import EmbeddedStack, free_port

pytestmark = pytest.mark.integration


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def write(
    url: str, prefix: str, writes: list[tuple[str, FieldWrite]], ttl: int = 600
) -> tuple[int, int]:
    client = aioredis.Redis.from_url(url)
    writer = UserHashWriter(client, prefix, ttl)
    for user_id, field_write in writes:
        writer.stage(user_id, field_write)
    result = await writer.flush()
    await client.aclose()
    return result.written, result.stale


def test_newer_versions_win_and_stale_ones_are_refused(
    stack: EmbeddedStack, redis_client: redis.Redis
) -> None:
    prefix = f"w{uuid.uuid4().hex[:6]}"
    key = f"{prefix}:user:u1"
    assert run(write(stack.redis_url, prefix, [("u1", FieldWrite("recipes", 5, b"v5"))])) == (1, 0)
    assert run(write(stack.redis_url, prefix, [("u1", FieldWrite("recipes", 3, b"v3"))])) == (0, 1)
    assert run(write(stack.redis_url, prefix, [("u1", FieldWrite("recipes", 5, b"again"))])) == (
        0,
        1,
    )
    assert redis_client.hget(key, "recipes") == b"v5"
    assert run(
        write(
            stack.redis_url,
            prefix,
            [("u1", FieldWrite("recipes", 9, b"v9")), ("u1", FieldWrite("profile", 1, b"p1"))],
        )
    ) == (2, 0)
    assert redis_client.hgetall(key) == {
        b"recipes": b"v9",
        b"recipes_version": b"9",
        b"profile": b"p1",
        b"profile_version": b"1",
    }
    assert 0 < redis_client.pttl(key) <= 600_000


def test_staging_coalesces_to_the_latest_version_per_user(
    stack: EmbeddedStack, redis_client: redis.Redis
) -> None:
    prefix = f"w{uuid.uuid4().hex[:6]}"
    writes = [("u1", FieldWrite("recipes", v, f"v{v}".encode())) for v in (1, 7, 3)]
    writes += [(f"u{i}", FieldWrite("recipes", 1, b"x")) for i in range(2, 500)]
    assert run(write(stack.redis_url, prefix, writes)) == (499, 0)
    assert redis_client.hget(f"{prefix}:user:u1", "recipes") == b"v7"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=15))
def test_any_delivery_order_ends_at_the_highest_version(
    stack: EmbeddedStack, versions: list[int]
) -> None:
    prefix = f"w{uuid.uuid4().hex[:6]}"

    async def deliver_one_by_one() -> None:
        client = aioredis.Redis.from_url(stack.redis_url)
        writer = UserHashWriter(client, prefix, 600)
        for version in versions:
            writer.stage("u", FieldWrite("recipes", version, str(version).encode()))
            await writer.flush()
        await client.aclose()

    run(deliver_one_by_one())
    client = redis.Redis.from_url(stack.redis_url)
    assert client.hget(f"{prefix}:user:u", "recipes") == str(max(versions)).encode()
    client.close()


def test_unreachable_redis_raises_after_retries_and_keeps_the_writes() -> None:
    async def scenario() -> int:
        client = aioredis.Redis.from_url(
            f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2
        )
        writer = UserHashWriter(client, "x", 60, max_retries=2, base_backoff_seconds=0.01)
        writer.stage("u", FieldWrite("recipes", 1, b"x"))
        with pytest.raises(RedisUnavailable):
            await writer.flush()
        await client.aclose()
        return writer.pending_users

    assert run(scenario()) == 1


async def write_segments(url: str, prefix: str, writes: list[tuple[int, int | None, int]]) -> int:
    """(version, decile to leave, decile to join) writes of user u1 in audience a."""
    client = aioredis.Redis.from_url(url)
    writer = UserHashWriter(client, prefix, 600)
    for version, old, new in writes:
        moves = (
            (
                None if old is None else writer.segment_key("a", old),
                writer.segment_key("a", new),
                0.5,
            ),
        )
        writer.stage_segments("u1", SegmentWrite("audiences", version, b"{}", moves))
    result = await writer.flush()
    await client.aclose()
    return result.written


def test_a_stale_segment_write_moves_no_one_back(
    stack: EmbeddedStack, redis_client: redis.Redis
) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"

    def deciles() -> list[int]:
        return [redis_client.zcard(f"{prefix}:audience:a:decile:{d}") for d in range(1, 4)]

    assert run(write_segments(stack.redis_url, prefix, [(1, None, 3), (2, 3, 1)])) == 2
    assert deciles() == [1, 0, 0]
    # a replay of version 1 (join 3) and a stale version 2: refused, nothing moves
    assert run(write_segments(stack.redis_url, prefix, [(1, None, 3), (2, 1, 2)])) == 0
    assert deciles() == [1, 0, 0]
    assert 0 < redis_client.pttl(f"{prefix}:audience:a:decile:1") <= 600_000


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=6),  # user
            st.sampled_from(["recipes", "banners", "profile"]),
            st.integers(min_value=0, max_value=9),  # version
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=2, max_value=9),
)
def test_chunked_script_calls_write_what_one_call_per_user_writes(
    stack: EmbeddedStack, writes: list[tuple[int, str, int]], users_per_call: int
) -> None:
    """Several users per script call (the hiredis-packing client the worker uses) leave
    every hash, version and TTL as one call per user does, with the same counts; flushed
    twice (the second a replay of half), so stale writes are met mid-chunk too."""
    prefixes = [f"c{uuid.uuid4().hex[:6]}", f"c{uuid.uuid4().hex[:6]}"]

    async def deliver(prefix: str, per_call: int) -> list[tuple[int, int]]:
        client = pack_with_hiredis(aioredis.Redis.from_url(stack.redis_url))
        writer = UserHashWriter(client, prefix, 600, users_per_call=per_call)
        counts = []
        for part in (writes, writes[::2]):
            for user, field, version in part:
                writer.stage(f"u{user}", FieldWrite(field, version, f"{field}{version}".encode()))
            result = await writer.flush()
            counts.append((result.written, result.stale))
        await client.aclose()
        return counts

    one_each = run(deliver(prefixes[0], 1))
    chunked = run(deliver(prefixes[1], users_per_call))
    assert chunked == one_each
    client = redis.Redis.from_url(stack.redis_url)
    for user in {user for user, _, _ in writes}:
        hashes = [client.hgetall(f"{prefix}:user:u{user}") for prefix in prefixes]
        assert hashes[0] == hashes[1] and hashes[0]
        assert all(0 < client.pttl(f"{prefix}:user:u{user}") <= 600_000 for prefix in prefixes)
    client.close()


def test_a_writer_refuses_an_empty_chunk() -> None:
    with pytest.raises(ValueError, match="users_per_call"):
        UserHashWriter(aioredis.Redis(), "x", 60, users_per_call=0)
