"""``appetence catalog load FILE.jsonl``: validate catalog records and publish them.

Valid records go to the compacted catalog topic keyed by ``{kind}:{id}``; invalid lines go
to the catalog dead-letter topic with their reason (source offset = line number), exactly
the treatment bad events get, and are counted in the report.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaProducer

from processors.catalog import (
    CatalogRecord,
    catalog_key,
    decode_catalog_record,
    encode_catalog_record,
)
from processors.events import dead_letter_bytes
from stream.config import Settings


@dataclass
class CatalogLoadReport:
    loaded: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "loaded": self.loaded,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
        }


def publish_catalog(
    records: Iterable[CatalogRecord], producer: KafkaProducer, settings: Settings
) -> int:
    sent = 0
    for record in records:
        producer.send(
            settings.catalog_topic,
            key=catalog_key(record).encode(),
            value=encode_catalog_record(record),
        )
        sent += 1
    return sent


def load_catalog_lines(
    lines: Iterable[bytes], producer: KafkaProducer, settings: Settings, source: str
) -> CatalogLoadReport:
    report = CatalogLoadReport()
    for number, line in enumerate(lines, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        decoded = decode_catalog_record(raw)
        if decoded.record is not None:
            report.loaded += publish_catalog([decoded.record], producer, settings)
            continue
        assert decoded.rejection is not None
        report.rejected[decoded.rejection.reason] += 1
        # source offset = the line number; no partition (-1): the record came from a file
        letter = dead_letter_bytes(decoded.rejection, source, -1, number, int(time.time() * 1000))
        producer.send(settings.catalog_dead_letter_topic, value=letter)
    producer.flush()
    return report


def delete_catalog_entries(keys: Iterable[str], producer: KafkaProducer, settings: Settings) -> int:
    """Tombstones: compaction then drops the entries, workers forget them at once."""
    sent = 0
    for key in keys:
        producer.send(settings.catalog_topic, key=key.encode(), value=None)
        sent += 1
    producer.flush()
    return sent
