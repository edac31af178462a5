"""``appetence replay``: push a public session dataset through Kafka into the live system.

Clicks keep their order and their relative timing divided by ``speed``; each event is
stamped with the wall-clock time at which it is sent (dataset years are far older than the
accepted event age). Sessions become users (``user_id = "s<session id>"``).
"""

from __future__ import annotations

import csv
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from processors.events import Click, encode_event
from stream.config import Settings
from stream.datasets import Format
from stream.topics import make_producer


def read_clicks(path: Path, fmt: Format) -> list[tuple[float, str, str]]:
    """(time in seconds, session id, item id) for every click, sorted by time."""
    clicks: list[tuple[float, str, str]] = []
    with path.open() as handle:
        if fmt == "session-rec":
            for row in csv.DictReader(handle, delimiter="\t"):
                clicks.append((float(row["Time"]), row["SessionId"], row["ItemId"]))
        elif fmt == "csv":
            for row in csv.DictReader(handle):
                clicks.append((float(row["timestamp"]), row["session_id"], row["item_id"]))
        else:
            for row in csv.DictReader(handle, delimiter=";"):
                day = dt.datetime.fromisoformat(row["eventdate"]).replace(tzinfo=dt.UTC)
                seconds = day.timestamp() + float(row["timeframe"]) / 1000.0
                clicks.append((seconds, row["session_id"], row["item_id"]))
    clicks.sort()
    return clicks


def schedule(
    clicks: list[tuple[float, str, str]], speed: float
) -> Iterator[tuple[float, str, str, int]]:
    """(seconds after start to send, session, item, index) with gaps divided by ``speed``."""
    if not clicks:
        return
    first = clicks[0][0]
    for index, (seconds, session, item) in enumerate(clicks):
        yield (seconds - first) / speed, session, item, index


def replay(
    settings: Settings,
    clicks: list[tuple[float, str, str]],
    speed: float,
    progress: Callable[[int], None] | None = None,
) -> int:
    producer = make_producer(settings)
    started = time.monotonic()
    sent = 0
    try:
        for offset, session, item, index in schedule(clicks, speed):
            wait = offset - (time.monotonic() - started)
            if wait > 0:
                producer.flush()
                time.sleep(wait)
            user_id = f"s{session}"
            event = Click(
                event_id=f"replay-{index}",
                ts=int(time.time() * 1000),
                user_id=user_id,
                item_id=item,
                item_type="recipe",
            )
            producer.send(settings.events_topic, value=encode_event(event), key=user_id.encode())
            sent += 1
            if progress is not None and sent % 1000 == 0:
                progress(sent)
        producer.flush()
    finally:
        producer.close()
    if progress is not None:
        progress(sent)
    return sent
