"""The audience service's feature examples: chunked as the held users come, not all at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from processors.audiences import AudienceConfig
from processors.user_state import UserState
from stream.audience_service import EXAMPLES_PER_RECORD, AudienceExample, AudienceService
from stream.metrics import Metrics


class Sink:
    def __init__(self) -> None:
        self.records: list[bytes] = []

    async def send(self, key: Any, value: bytes) -> None:
        self.records.append(value)


def test_examples_go_out_a_record_per_chunk_while_the_users_are_read_one_by_one() -> None:
    """A backfill reads the held users from an iterator (the store decodes each as it is
    reached): at most one chunk of them is taken ahead of what is sent."""
    total = 2 * EXAMPLES_PER_RECORD + 7
    sink = Sink()
    taken: list[int] = []

    def users() -> Iterator[tuple[str, dict[str, float]]]:
        for n in range(total):
            taken.append(len(sink.records))  # records sent when user n was read
            yield f"u{n}", {"sessions": float(n)}

    service = AudienceService(AudienceConfig(), Metrics(CollectorRegistry()), None)
    asyncio.run(service._send_examples(sink, users()))
    chunks = [msgspec.json.decode(r, type=list[AudienceExample]) for r in sink.records]
    assert [len(chunk) for chunk in chunks] == [EXAMPLES_PER_RECORD, EXAMPLES_PER_RECORD, 7]
    assert [(e.u, e.f) for chunk in chunks for e in chunk] == [
        (f"u{n}", {"sessions": float(n)}) for n in range(total)
    ]
    assert all(taken[n] == n // EXAMPLES_PER_RECORD for n in range(total))


class Held:
    def __init__(self, names: list[str]) -> None:
        self.states = {name: UserState(user_id=name, partition=0) for name in names}

    def items(self) -> Iterator[tuple[str, UserState]]:
        return iter(list(self.states.items()))

    def user_ids(self) -> list[str]:
        return list(self.states)

    def get(self, user_id: str, /) -> UserState | None:
        return self.states.get(user_id)


def test_rescoring_goes_in_bounded_passes_and_a_newer_snapshot_waits_for_the_pass() -> None:
    """``limit`` users a call; a snapshot arriving mid-pass does not restart the pass (every
    held user is re-scored once per pass, however often snapshots come); the next pass
    starts once the pass ends, and only if a newer snapshot came."""
    held = Held([f"u{n}" for n in range(25)])
    service = AudienceService(AudienceConfig(), Metrics(CollectorRegistry()), None)
    rescored: list[str] = []

    def stage(user_id: str, *args: Any, **kwargs: Any) -> bool:
        rescored.append(user_id)
        return False

    service.stage = stage  # type: ignore[method-assign]

    def call() -> list[str]:
        rescored.clear()
        asyncio.run(service.maintain(held, None, None, now_ms=1_000, limit=10))  # type: ignore[arg-type]
        return list(rescored)

    assert call() == []  # no snapshot yet
    service.scorer.generation = 10
    first = call()
    service.scorer.generation = 11  # mid-pass
    second, third = call(), call()
    assert [len(first), len(second), len(third)] == [10, 10, 5]
    assert sorted(first + second + third) == sorted(held.states)  # each user once
    assert len(call()) == 10  # the newer snapshot's pass
    assert [len(call()), len(call()), len(call())] == [10, 5, 0]  # and no pass after it
