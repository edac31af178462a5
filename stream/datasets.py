"""Readers for the public session datasets used by ``appetence evaluate`` (see shared/data)."""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from processors.evaluation import TimedSession

Format = Literal["session-rec", "diginetica", "csv"]
Sessions = list[TimedSession]


def _timed(events: list[tuple[float, str]]) -> TimedSession:
    """Clicks ``(epoch seconds, item)`` in time order (stable), times in milliseconds."""
    ordered = sorted(events, key=lambda e: e[0])
    return TimedSession([item for _, item in ordered], times=[t * 1000.0 for t, _ in ordered])


def _ordered(clicks: dict[str, list[tuple[float, str]]]) -> Sessions:
    """Sessions sorted by their first click time, clicks by time (stable)."""
    ordered = sorted(clicks.items(), key=lambda kv: min(t for t, _ in kv[1]))
    return [_timed(events) for _, events in ordered]


def read_session_rec(path: Path) -> Sessions:
    """Tab-separated ``SessionId ItemId Time`` (GRU4Rec / session-rec prepared files)."""
    clicks: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with path.open() as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        for row in reader:
            clicks[row["SessionId"]].append((float(row["Time"]), row["ItemId"]))
    return _ordered(clicks)


def read_csv(path: Path) -> Sessions:
    """Comma-separated with header ``session_id,item_id,timestamp``."""
    clicks: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with path.open() as handle:
        for row in csv.DictReader(handle):
            clicks[row["session_id"]].append((float(row["timestamp"]), row["item_id"]))
    return _ordered(clicks)


def read_diginetica_split(path: Path, test_days: int = 7) -> tuple[Sessions, Sessions]:
    """DIGINETICA item views with SR-GNN's preprocessing and split.

    Drop sessions of length 1 and items seen fewer than 5 times (then short sessions again);
    sessions dated in the last ``test_days`` days are the test set, restricted to items seen
    in training.
    """
    clicks: dict[str, list[tuple[float, str]]] = defaultdict(list)
    dates: dict[str, dt.date] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            session = row["session_id"]
            date = dt.date.fromisoformat(row["eventdate"])
            # timeframe: milliseconds since the session started, on its event date
            day = dt.datetime.combine(date, dt.time(), dt.UTC).timestamp()
            clicks[session].append((day + float(row["timeframe"]) / 1000.0, row["item_id"]))
            dates[session] = max(dates.get(session, date), date)
    clicks = {s: c for s, c in clicks.items() if len(c) > 1}
    counts = Counter(item for c in clicks.values() for _, item in c)
    clicks = {s: [(t, i) for t, i in c if counts[i] >= 5] for s, c in clicks.items()}
    clicks = {s: c for s, c in clicks.items() if len(c) >= 2}
    split = max(dates[s] for s in clicks) - dt.timedelta(days=test_days)
    by_date = sorted(clicks, key=lambda s: (dates[s], int(s) if s.isdigit() else s))
    train_ids = [s for s in by_date if dates[s] <= split]
    test_ids = [s for s in by_date if dates[s] > split]
    train = [_timed(clicks[s]) for s in train_ids]
    known = {item for session in train for item in session}
    test = [_timed([(t, i) for t, i in clicks[s] if i in known]) for s in test_ids]
    return train, [s for s in test if len(s) >= 2]


def read_sessions(path: Path, fmt: Format) -> Sessions:
    if fmt == "session-rec":
        return read_session_rec(path)
    if fmt == "csv":
        return read_csv(path)
    raise ValueError("diginetica files hold train and test: use read_diginetica_split")


def read_user_interactions(path: Path) -> list[tuple[str, str, float]]:
    """CSV with header ``user_id,item_id,timestamp`` (an optional ``rating`` is ignored)."""
    with path.open() as handle:
        return [
            (row["user_id"], row["item_id"], float(row["timestamp"]))
            for row in csv.DictReader(handle)
        ]
