"""What the Redis writer holds between flushes (no Redis needed: staging does no I/O)."""

from __future__ import annotations

import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from state.redis_writer import FieldWrite, SegmentWrite, UserHashWriter

stages = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.booleans(), st.integers(1, 3)),
    max_size=30,
)


@given(stages)
def test_pending_users_counts_each_user_once_whatever_it_staged(
    staged: list[tuple[str, bool, int]],
) -> None:
    """A user with field writes, segment writes or both is one pending user; a discarded
    user is none."""
    writer = UserHashWriter(aioredis.Redis(), "t", 60)  # never connects: nothing is flushed
    users: set[str] = set()
    for user, segments, version in staged:
        if segments:
            writer.stage_segments(user, SegmentWrite("audience:a", version, b"{}", ()))
        else:
            writer.stage(user, FieldWrite("recipes", version, b"{}"))
        users.add(user)
        assert writer.pending_users == len(users)
    if staged:
        writer.discard(staged[0][0])
        assert writer.pending_users == len(users) - 1
