"""``appetence simulate``: produce the traffic model to Kafka with kafka-python at a target rate.

Events are grouped per partition into batch envelopes (JSON arrays), the way the collector
sends them; ``single=True`` sends one record per event keyed by user_id instead. Event time
starts ``backfill`` in the past and runs as fast as ``rate`` allows until it reaches the
wall clock; from then on the simulation paces itself in real time.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from processors.events import Event, encode_batch, encode_event
from processors.simulator import SimulationConfig, TrafficModel, malformed_record
from stream.catalog_load import publish_catalog
from stream.config import Settings
from stream.topics import KafkaError, make_producer, partition_for

log = logging.getLogger(__name__)

#: How long a simulator that is told to stop waits for its last records to be delivered.
STOP_FLUSH_SECONDS = 10.0


@dataclass
class SimulationReport:
    events: int = 0
    records: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    users: int = 0
    seconds: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM before its events or duration

    def as_dict(self) -> dict[str, object]:
        return {
            "events": self.events,
            "records": self.records,
            "malformed": self.malformed,
            "malformed_by_reason": self.malformed_by_reason,
            "users": self.users,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds, 1) if self.seconds else None,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "interrupted": self.interrupted,
        }


def run_simulation(
    settings: Settings,
    config: SimulationConfig,
    events: int | None,
    rate: float,
    duration: float | None,
    batch_size: int = 100,
    malformed_rate: float = 0.0,
    single: bool = False,
    backfill_seconds: float = 3600.0,
    truth_out: Path | None = None,
    events_out: Path | None = None,
) -> SimulationReport:
    """Produce until ``events`` are sent or ``duration`` seconds pass (whichever first)."""
    producer = make_producer(settings)
    partitions = settings.partitions
    topic = settings.events_topic
    start_wall = time.time()
    model = TrafficModel(config, start_ms=int((start_wall - backfill_seconds) * 1000))
    publish_catalog(model.catalog_records(), producer, settings)  # the site's catalog first
    noise = random.Random(config.seed + 1)
    report = SimulationReport()
    buffers: dict[int, list[Event]] = defaultdict(list)
    dump = events_out.open("wb") if events_out else None

    def flush(partition: int) -> None:
        batch = buffers.pop(partition, [])
        if batch:
            producer.send(topic, value=encode_batch(batch), partition=partition)
            report.records += 1

    started = time.monotonic()
    try:
        try:
            for event in model.events():
                elapsed = time.monotonic() - started
                if (events is not None and report.events >= events) or (
                    duration is not None and elapsed >= duration
                ):
                    break
                # Pace: never faster than `rate`, never ahead of the wall clock.
                ahead = report.events / rate - elapsed
                if ahead > 0:
                    time.sleep(ahead)
                wait_for_clock = event.ts / 1000 - time.time()
                if wait_for_clock > 0:
                    for partition in list(buffers):
                        flush(partition)
                    time.sleep(min(wait_for_clock, 1.0))
                if malformed_rate and noise.random() < malformed_rate:
                    reason, raw = malformed_record(noise, int(time.time() * 1000), event.user_id)
                    producer.send(topic, value=raw, key=event.user_id.encode())
                    report.malformed += 1
                    report.malformed_by_reason[reason] = (
                        report.malformed_by_reason.get(reason, 0) + 1
                    )
                    report.records += 1
                report.events += 1
                report.first_ts = report.first_ts or event.ts
                report.last_ts = event.ts
                if dump:
                    dump.write(encode_event(event) + b"\n")
                if single:
                    producer.send(topic, value=encode_event(event), key=event.user_id.encode())
                    report.records += 1
                    continue
                partition = partition_for(event.user_id, partitions)
                buffers[partition].append(event)
                if len(buffers[partition]) >= batch_size:
                    flush(partition)
        except KeyboardInterrupt:  # Ctrl-C, or `up` stopping it (SIGTERM): end cleanly
            report.interrupted = True
        for partition in list(buffers):
            flush(partition)
        if not report.interrupted:
            producer.flush()
        else:  # stopping: a broker that is gone must not hold the exit for minutes
            try:
                producer.flush(timeout=STOP_FLUSH_SECONDS)
            except KafkaError as error:
                log.warning("stopped with records not delivered: %r", error)
    finally:
        producer.close()
        if dump:
            dump.close()
    report.seconds = time.monotonic() - started
    report.users = len(model.users)
    if truth_out:
        truth_out.write_bytes(msgspec.json.format(msgspec.json.encode(model.ground_truth())))
    log.info("simulation done: %s", json.dumps(report.as_dict()))
    return report
