"""Idempotent, monotonic, pipelined writes of per-user fields into one Redis hash per user.

Key contract: ``{prefix}:user:{user_id}`` is a hash. Each logical field (``recipes``,
``banners``, ``profile``...) is stored as ``<field>`` (JSON) plus ``<field>_version``. The
Lua script writes a field only if its version is strictly greater than the stored one, so a
replayed or stale write never overwrites a newer one, and refreshes the key's TTL on write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import DataError, NoScriptError, RedisError

log = logging.getLogger(__name__)

CAS_SCRIPT = (Path(__file__).with_name("cas_hset.lua")).read_text()
SEGMENTS_SCRIPT = (Path(__file__).with_name("cas_segments.lua")).read_text()
FORGET_SCRIPT = (Path(__file__).with_name("forget_user.lua")).read_text()
DECILES = range(1, 11)


class FieldWrite(msgspec.Struct, frozen=True, gc=False):
    """One versioned field value bound for one user's hash (a struct: four per touched user
    and batch, ~80 ns each to make against ~400 for a frozen dataclass)."""

    field: str
    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SegmentWrite:
    """A versioned field plus the segment moves it implies: (old key or None, new key or
    None, score) each. Applied together, or not at all, by one script."""

    field: str
    version: int
    payload: bytes
    moves: tuple[tuple[str | None, str | None, float], ...]


@dataclass(frozen=True, slots=True)
class FlushResult:
    written: int
    stale: int


class _HiredisPacking:
    """Commands packed by hiredis' C ``pack_command`` (what redis-py's synchronous client
    does; its asyncio client packs in Python): a quarter less client CPU per flushed user."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD": the server wants the words apart
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        # hiredis takes str, int, float and bytes only (as redis-py's own hiredis packer
        # does): a bytearray is copied to bytes, on this path only (a scan of every argument
        # of every call cost a tenth of the client's CPU per flushed user)
        args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:
            raise DataError(str(error)) from error


def pack_with_hiredis(client: aioredis.Redis) -> aioredis.Redis:
    """The client, its connections (TCP, TLS or Unix socket, as its URL said) packing
    commands with hiredis. Returns the client."""
    pool = client.connection_pool
    base = pool.connection_class
    if not issubclass(base, _HiredisPacking):
        pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return client


class RedisUnavailable(RuntimeError):
    """Raised when a flush still fails after the configured retries."""


class UserHashWriter:
    """Coalesces writes per user (latest version wins) and flushes them in one pipeline."""

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        ttl_seconds: int,
        max_retries: int = 8,
        base_backoff_seconds: float = 0.05,
        max_backoff_seconds: float = 5.0,
        on_failed_attempt: Callable[[int], None] | None = None,
        users_per_call: int = 32,
    ) -> None:
        if users_per_call < 1:
            raise ValueError("users_per_call must be at least 1")
        self.client = client
        #: Users per script call: one call and one reply per chunk, not per user (Redis
        #: Cluster needs 1: a script's keys must share a slot).
        self.users_per_call = users_per_call
        #: Called with the number of users pending after every failed flush attempt (metrics).
        self.on_failed_attempt = on_failed_attempt
        self.key_prefix = key_prefix
        self.ttl_ms = ttl_seconds * 1000
        self.max_retries = max_retries
        self.base_backoff = base_backoff_seconds
        self.max_backoff = max_backoff_seconds
        self._sha: str | None = None
        self._segments_sha: str | None = None
        self._pending: dict[str, dict[str, FieldWrite]] = {}
        self._pending_segments: dict[str, list[SegmentWrite]] = {}

    def key(self, user_id: str) -> str:
        return f"{self.key_prefix}:user:{user_id}"

    def segment_key(self, audience_id: str, decile: int) -> str:
        return f"{self.key_prefix}:audience:{audience_id}:decile:{decile}"

    @property
    def pending_users(self) -> int:
        # counted over the (few) users with segment writes only: a union of both key sets
        # cost ~7 us at 500 users pending, which the bench's CAS pass paid per staged user
        pending, segments = self._pending, self._pending_segments
        if not segments:  # the common case: no generator (the bench's CAS pass asks per user)
            return len(pending)
        return len(pending) + sum(1 for user in segments if user not in pending)

    def stage_segments(self, user_id: str, write: SegmentWrite) -> None:
        """Queue a field-with-segments write. All are kept, in order (each carries moves
        the next one's builds on); the versions make a replay of any of them a no-op."""
        self._pending_segments.setdefault(user_id, []).append(write)

    def stage(self, user_id: str, write: FieldWrite) -> None:
        """Queue a write; a later version of the same field replaces an earlier one."""
        fields = self._pending.setdefault(user_id, {})
        current = fields.get(write.field)
        if current is None or current.version < write.version:
            fields[write.field] = write

    def discard(self, user_id: str) -> None:
        """Drop a user's staged writes (a forget request arrived before the flush)."""
        self._pending.pop(user_id, None)
        self._pending_segments.pop(user_id, None)

    async def forget(self, user_id: str, audience_ids: Iterable[str], requested_at_ms: int) -> bool:
        """Delete the user's hash and segment memberships in one script, unless the hash
        holds events newer than the request. True if anything was deleted or nothing was
        there; False when the user had come back after the request."""
        self.discard(user_id)
        keys = [self.key(user_id)] + [
            self.segment_key(audience, decile) for audience in audience_ids for decile in DECILES
        ]
        limit = requested_at_ms * 1000 + 999
        result = await self.client.eval(FORGET_SCRIPT, len(keys), *keys, limit, user_id)
        return int(result) > 0

    async def _load_script(self) -> str:
        sha: str = await self.client.script_load(CAS_SCRIPT)
        self._sha = sha
        self._segments_sha = await self.client.script_load(SEGMENTS_SCRIPT)
        return sha

    def _segment_calls(self, pipe: Any, sha: str) -> None:
        for user_id, writes in self._pending_segments.items():
            for write in writes:
                keys: list[str] = [self.key(user_id)]
                args: list[bytes | str | int | float] = [
                    self.ttl_ms,
                    write.field,
                    write.version,
                    write.payload,
                    user_id,
                ]
                for old, new, score in write.moves:
                    indices = []
                    for segment in (old, new):
                        if segment is None:
                            indices.append(0)
                        else:
                            keys.append(segment)
                            indices.append(len(keys))
                    args += [indices[0], indices[1], score]
                pipe.evalsha(sha, len(keys), *keys, *args)

    async def _flush_once(self) -> FlushResult:
        if self._sha is None or self._segments_sha is None:
            await self._load_script()
        sha, segments_sha = self._sha, self._segments_sha
        assert sha is not None and segments_sha is not None
        users = list(self._pending.items())
        pipe = self.client.pipeline(transaction=False)
        step = self.users_per_call
        for start in range(0, len(users), step):
            chunk = users[start : start + step]
            keys = [self.key(user_id) for user_id, _ in chunk]
            args: list[bytes | str | int] = [self.ttl_ms]
            for _, fields in chunk:
                args.append(len(fields))
                for write in fields.values():
                    args += [write.field, write.version, write.payload]
            pipe.evalsha(sha, len(keys), *keys, *args)
        self._segment_calls(pipe, segments_sha)
        try:
            replies = await pipe.execute()
        except NoScriptError:
            self._sha = self._segments_sha = None  # Redis restarted: its script cache is gone
            raise
        written = stale = 0
        for reply in replies:
            w, s = int(reply[0]), int(reply[1])
            written += w
            stale += s
        self._pending.clear()
        self._pending_segments.clear()
        return FlushResult(written, stale)

    async def flush(self) -> FlushResult:
        """Write everything staged, retrying with exponential backoff.

        Pending writes stay staged across failures (coalesced, so memory is bounded by the
        number of distinct users); ``RedisUnavailable`` after ``max_retries`` attempts.
        """
        if not self._pending and not self._pending_segments:
            return FlushResult(0, 0)
        delay = self.base_backoff
        for attempt in range(self.max_retries + 1):
            try:
                return await self._flush_once()
            except (RedisError, OSError) as error:
                if self.on_failed_attempt is not None:
                    self.on_failed_attempt(self.pending_users)
                if attempt == self.max_retries:
                    raise RedisUnavailable(f"Redis flush failed: {error}") from error
                log.warning("Redis flush failed (%s); retry %d in %.2fs", error, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")


async def read_user(client: aioredis.Redis, key: str) -> Mapping[bytes, bytes]:
    """What an ad server does: one HGETALL for all of a user's fields."""
    started = time.perf_counter()
    data = cast(Mapping[bytes, bytes], await client.hgetall(key))
    log.debug("read %s in %.3f ms", key, (time.perf_counter() - started) * 1e3)
    return data
