"""The A/B analysis of logged banner impressions: CTR per banner, per position, per day.

Input rows are ``(ts_ms, banner_id, position, clicked)``; a click is counted for the
impression it followed (the log is impression-level, as the thesis' A/B data was).

>>> rows = [(0, "b1", 0, True), (1, "b1", 1, False), (86_400_000, "b2", 0, False)]
>>> report = ctr_report(rows)
>>> [(r.key, r.impressions, r.clicks, r.ctr) for r in report["banner"]]
[('b1', 2, 1, 0.5), ('b2', 1, 0, 0.0)]
>>> [r.key for r in report["day"]]
['1970-01-01', '1970-01-02']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class CtrRow:
    key: str
    impressions: int
    clicks: int
    ctr: float
    ci_low: float  # 95% Wilson interval
    ci_high: float


def wilson(clicks: int, impressions: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a click-through rate."""
    if impressions == 0:
        return 0.0, 0.0
    p = clicks / impressions
    denominator = 1 + z * z / impressions
    centre = (p + z * z / (2 * impressions)) / denominator
    half = z * math.sqrt(p * (1 - p) / impressions + z * z / (4 * impressions**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _rows(counts: dict[str, list[int]]) -> list[CtrRow]:
    out = []
    for key in sorted(counts, key=lambda k: (len(k), k)):
        shown, clicked = counts[key]
        low, high = wilson(clicked, shown)
        out.append(CtrRow(key, shown, clicked, round(clicked / shown, 5), low, high))
    return out


def ctr_report(rows: Iterable[tuple[int, str, int, bool]]) -> dict[str, list[CtrRow]]:
    """CTR tables by ``banner``, ``position`` and ``day`` (UTC)."""
    tables: dict[str, dict[str, list[int]]] = {"banner": {}, "position": {}, "day": {}}
    for ts, banner_id, position, clicked in rows:
        day = datetime.fromtimestamp(ts / 1000, tz=UTC).strftime("%Y-%m-%d")
        for table, key in (("banner", banner_id), ("position", str(position)), ("day", day)):
            counts = tables[table].setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += int(clicked)
    return {name: _rows(counts) for name, counts in tables.items()}
