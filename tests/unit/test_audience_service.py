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

    def users() -> Iterator[tuple[str, UserState]]:
        for n in range(total):
            taken.append(len(sink.records))  # records sent when user n was read
            yield f"u{n}", UserState(user_id=f"u{n}", partition=0)

    service = AudienceService(AudienceConfig(), Metrics(CollectorRegistry()), None)
    asyncio.run(service._send_examples(sink, users(), now_ms=1_000))
    chunks = [msgspec.json.decode(r, type=list[AudienceExample]) for r in sink.records]
    assert [len(chunk) for chunk in chunks] == [EXAMPLES_PER_RECORD, EXAMPLES_PER_RECORD, 7]
    assert [e.u for chunk in chunks for e in chunk] == [f"u{n}" for n in range(total)]
    assert all(taken[n] == n // EXAMPLES_PER_RECORD for n in range(total))
