"""The collector's envelope coalescer with a recording stand-in for the producer (its Kafka
side is tested against the real broker in tests/integration/test_collector.py): what
concurrent requests send goes out as one envelope per partition, in order, each request
answered once its envelopes are acknowledged, and a failure reaches every request that
waited on it."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.events import PageView, encode_batch
from stream.collector import EnvelopeCoalescer
from stream.topics import partition_for

PARTITIONS = 4


class RecordingProducer:
    """``send`` as aiokafka's: returns (once queued) a future of the acknowledgement."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.acks: list[asyncio.Future[None]] = []
        self.fail = fail

    async def send(self, topic: str, **record: Any) -> asyncio.Future[None]:
        self.sent.append({"topic": topic, **record})
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    def acknowledge(self) -> None:
        for ack in self.acks:
            if not ack.done():
                if self.fail:
                    ack.set_exception(ConnectionError("broker gone"))
                else:
                    ack.set_result(None)


async def _partitions() -> int:
    return PARTITIONS


def _envelope(user: str, *ids: str) -> bytes:
    return encode_batch([PageView(event_id=i, ts=1, user_id=user) for i in ids])


def _coalescer(producer: RecordingProducer, linger: float, max_bytes: int = 1 << 20) -> Any:
    return EnvelopeCoalescer(producer.send, _partitions, "events", linger, max_bytes)


def _events_of(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["user_id"], e["event_id"]) for e in msgspec.json.decode(record["value"])]


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from([f"u{n}" for n in range(12)]), st.integers(1, 3)),
        min_size=1,
        max_size=40,
    )
)
def test_concurrent_requests_go_out_as_one_envelope_per_partition_in_order(
    requests: list[tuple[str, int]],
) -> None:
    async def run() -> RecordingProducer:
        producer = RecordingProducer()
        coalescer = _coalescer(producer, linger=0.01)
        waits = []
        for number, (user, count) in enumerate(requests):
            ids = [f"r{number}-{k}" for k in range(count)]
            waits.append(await coalescer.add(user, _envelope(user, *ids)))
        assert not producer.sent  # gathered, not sent yet
        await asyncio.sleep(0.05)
        assert not any(wait.done() for wait in waits)  # answered only once acknowledged
        producer.acknowledge()
        await asyncio.gather(*waits)
        return producer

    producer = asyncio.run(run())
    partitions = {partition_for(user, PARTITIONS) for user, _ in requests}
    # one record per partition that had events; each on its users' partition, in request order
    assert sorted(record["partition"] for record in producer.sent) == sorted(partitions)
    expected = [
        (user, f"r{number}-{k}")
        for number, (user, count) in enumerate(requests)
        for k in range(count)
    ]
    for record in producer.sent:
        events = _events_of(record)
        assert {partition_for(user, PARTITIONS) for user, _ in events} == {record["partition"]}
        assert events == [
            e for e in expected if partition_for(e[0], PARTITIONS) == record["partition"]
        ]


def test_a_full_gathering_goes_at_once_and_the_next_starts_anew() -> None:
    async def run() -> RecordingProducer:
        producer = RecordingProducer()
        envelope = _envelope("u1", "a")
        coalescer = _coalescer(producer, linger=10.0, max_bytes=2 * len(envelope))
        first = await coalescer.add("u1", envelope)
        second = await coalescer.add("u1", _envelope("u1", "b"))  # full: sent without waiting
        await asyncio.sleep(0)
        assert len(producer.sent) == 1
        third = await coalescer.add("u1", _envelope("u1", "c"))
        coalescer.flush_all()
        await asyncio.sleep(0)
        producer.acknowledge()
        await asyncio.gather(first, second, third)
        return producer

    producer = asyncio.run(run())
    assert [_events_of(record) for record in producer.sent] == [
        [("u1", "a"), ("u1", "b")],
        [("u1", "c")],
    ]


def test_a_failed_send_reaches_every_request_of_the_envelope() -> None:
    async def run() -> list[BaseException | None]:
        producer = RecordingProducer(fail=True)
        coalescer = _coalescer(producer, linger=0.005)
        waits = [await coalescer.add(user, _envelope(user, "x")) for user in ("u1", "u1")]
        await asyncio.sleep(0.03)
        producer.acknowledge()
        return list(await asyncio.gather(*waits, return_exceptions=True))

    outcomes = asyncio.run(run())
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)


def test_a_request_that_gives_up_does_not_cancel_the_others() -> None:
    async def run() -> None:
        producer = RecordingProducer()
        coalescer = _coalescer(producer, linger=0.01)
        impatient = await coalescer.add("u1", _envelope("u1", "a"))
        patient = await coalescer.add("u1", _envelope("u1", "b"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(impatient, 0.001)
        await asyncio.sleep(0.03)
        producer.acknowledge()
        await asyncio.wait_for(patient, 1.0)
        assert _events_of(producer.sent[0]) == [("u1", "a"), ("u1", "b")]

    asyncio.run(run())


def test_draining_sends_what_is_gathered_and_waits_for_its_acknowledgement() -> None:
    async def run() -> tuple[int, bool]:
        producer = RecordingProducer()
        coalescer = _coalescer(producer, linger=60.0)
        wait = await coalescer.add("u1", _envelope("u1", "a"))
        asyncio.get_running_loop().call_later(0.05, producer.acknowledge)
        await coalescer.drain(wait_seconds=5.0)
        return len(producer.sent), wait.done()

    assert asyncio.run(run()) == (1, True)


def test_without_linger_each_envelope_goes_at_once_keyed_by_its_user() -> None:
    async def run() -> RecordingProducer:
        producer = RecordingProducer()
        coalescer = _coalescer(producer, linger=0.0)
        wait = await coalescer.add("u7", _envelope("u7", "a"))
        producer.acknowledge()
        await wait
        return producer

    producer = asyncio.run(run())
    assert producer.sent == [{"topic": "events", "value": _envelope("u7", "a"), "key": b"u7"}]
