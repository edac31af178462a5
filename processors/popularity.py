"""Time-decayed popularity ("popular now"), globally and per category, bounded in memory.

>>> index = PopularityIndex(PopularityConfig(half_life_ms=3_600_000))
>>> index.observe("r1", "recipe", "pasta", t_ms=0, weight=1.0)
>>> index.observe("r2", "recipe", "pasta", t_ms=0, weight=1.0)
>>> index.observe("r2", "recipe", "pasta", t_ms=10, weight=1.0)
>>> [item for item, _ in index.top_in_category("recipe", "pasta", 5)]
['r2', 'r1']
"""

from __future__ import annotations

from dataclasses import dataclass

from processors.decay import DecayedCounter


@dataclass(frozen=True, slots=True)
class PopularityConfig:
    half_life_ms: float = 6 * 3600 * 1000
    max_items_per_category: int = 200
    max_items_global: int = 1000
    max_categories: int = 500


class PopularityIndex:
    """Decayed item popularity per (item_type, category) and per item_type overall."""

    def __init__(self, config: PopularityConfig) -> None:
        self.config = config
        self._by_category: dict[tuple[str, str], DecayedCounter] = {}
        self._global: dict[str, DecayedCounter] = {}
        # (item type, category or None: overall) -> (depth, its top list), dropped when the
        # list's counter changes: a batch of a few events reuses every list it did not touch
        self._tops: dict[tuple[str, str | None], tuple[int, list[tuple[str, float]]]] = {}

    def _counter(self, max_keys: int) -> DecayedCounter:
        return DecayedCounter(half_life_ms=self.config.half_life_ms, max_keys=max_keys)

    def observe(
        self, item_id: str, item_type: str, category: str | None, t_ms: int, weight: float
    ) -> None:
        overall = self._global.get(item_type)
        if overall is None:
            overall = self._global[item_type] = self._counter(self.config.max_items_global)
        overall.add(item_id, t_ms, weight)
        self._tops.pop((item_type, None), None)
        if category is None:
            return
        key = (item_type, category)
        counter = self._by_category.get(key)
        if counter is None:
            if len(self._by_category) >= self.config.max_categories:
                return  # bounded: a flood of new category names cannot grow memory
            counter = self._by_category[key] = self._counter(self.config.max_items_per_category)
        counter.add(item_id, t_ms, weight)
        self._tops.pop(key, None)

    def ranked(self, item_type: str, category: str | None, depth: int) -> list[tuple[str, float]]:
        """The top ``depth`` of a category (None: of the item type overall), the same list
        object until its counter changes (callers must not modify it)."""
        key = (item_type, category)
        held = self._tops.get(key)
        if held is None or held[0] != depth:
            ranked = (
                self.top_overall(item_type, depth)
                if category is None
                else self.top_in_category(item_type, category, depth)
            )
            held = self._tops[key] = (depth, ranked)
        return held[1]

    def top_in_category(
        self, item_type: str, category: str, n: int, exclude: set[str] | None = None
    ) -> list[tuple[str, float]]:
        counter = self._by_category.get((item_type, category))
        return counter.top(n, exclude or set()) if counter else []

    def top_overall(
        self, item_type: str, n: int, exclude: set[str] | None = None
    ) -> list[tuple[str, float]]:
        counter = self._global.get(item_type)
        return counter.top(n, exclude or set()) if counter else []

    def peak_in_category(self, item_type: str, category: str) -> float:
        best = self.top_in_category(item_type, category, 1)
        return best[0][1] if best else 0.0

    def peak_overall(self, item_type: str) -> float:
        best = self.top_overall(item_type, 1)
        return best[0][1] if best else 0.0

    def snapshot(self, depth: int) -> RankedSnapshot:
        """A memoising view of the current top ``depth`` items per list (one batch's worth)."""
        return RankedSnapshot(self, depth)

    def size(self) -> int:
        """Number of (counter, item) entries held: the gauge of this state's size."""
        return sum(len(c) for c in self._by_category.values()) + sum(
            len(c) for c in self._global.values()
        )


class RankedSnapshot:
    """Top-``depth`` lists computed once per batch and shared by every slate built in it.

    Building a slate then costs O(depth) per category instead of a scan of the whole counter.
    """

    def __init__(self, index: PopularityIndex, depth: int) -> None:
        self.index = index
        self.depth = depth
        self._category: dict[tuple[str, str], list[tuple[str, float]]] = {}
        self._overall: dict[str, list[tuple[str, float]]] = {}

    def in_category(self, item_type: str, category: str) -> list[tuple[str, float]]:
        key = (item_type, category)
        ranked = self._category.get(key)
        if ranked is None:
            ranked = self._category[key] = self.index.ranked(item_type, category, self.depth)
        return ranked

    def overall(self, item_type: str) -> list[tuple[str, float]]:
        ranked = self._overall.get(item_type)
        if ranked is None:
            ranked = self._overall[item_type] = self.index.ranked(item_type, None, self.depth)
        return ranked
