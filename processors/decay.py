"""Exponentially time-decayed scores with forward decay (Cormode et al., ICDE 2009).

An event at time ``t`` adds ``2 ** ((t - landmark) / half_life)``; comparing two stored
values then compares their decayed weights at any common query time, so updates are O(1),
order-independent and never need a sweep. Values are rescaled when the exponent grows.

>>> scores = DecayedCounter(half_life_ms=1000, max_keys=10)
>>> scores.add("a", t_ms=0)
>>> scores.add("b", t_ms=1000)   # one half-life later: weighs twice as much
>>> scores.top(2)
[('b', 2.0), ('a', 1.0)]
>>> round(scores.value_at("a", t_ms=2000), 3)  # decayed to the query time
0.25
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from processors.ranking import largest

_RESCALE_EXPONENT = 200.0


# gc=False: not scanned by the cyclic collector, as UserState (processors/user_state.py)
class DecayedCounter(msgspec.Struct, kw_only=True, gc=False):
    """A bounded map of key -> forward-decayed score.

    At most ``max_keys`` keys are kept: when the map grows past ``2 * max_keys`` the
    weakest keys are dropped down to ``max_keys`` (amortised O(1) per add).
    """

    half_life_ms: float
    max_keys: int
    landmark_ms: int | None = None
    scores: dict[str, float] = msgspec.field(default_factory=dict)

    def _weight(self, t_ms: int) -> float:
        if self.landmark_ms is None:
            self.landmark_ms = t_ms
        exponent = (t_ms - self.landmark_ms) / self.half_life_ms
        if exponent > _RESCALE_EXPONENT:
            self._rescale(t_ms)
            exponent = 0.0
        return math.pow(2.0, exponent)

    def _rescale(self, new_landmark_ms: int) -> None:
        assert self.landmark_ms is not None
        factor = math.pow(2.0, -(new_landmark_ms - self.landmark_ms) / self.half_life_ms)
        self.scores = {k: v * factor for k, v in self.scores.items() if v * factor > 1e-12}
        self.landmark_ms = new_landmark_ms

    def add(self, key: str, t_ms: int, amount: float = 1.0) -> None:
        """Add ``amount`` for ``key`` at event time ``t_ms``."""
        weight = self._weight(t_ms)  # may rescale, replacing self.scores
        scores = self.scores
        scores[key] = scores.get(key, 0.0) + amount * weight
        if len(scores) > 2 * self.max_keys:
            self._prune()

    def add_many(self, keys: Sequence[str], t_ms: int, amount: float = 1.0) -> None:
        """``add(key, t_ms, amount)`` for each key in turn, the weight computed once (an
        event's tags all count at its time)."""
        if not keys:
            return  # (no weight either: it would set the landmark)
        weight = amount * self._weight(t_ms)  # a rescale, if due, happens here once
        scores = self.scores
        limit = 2 * self.max_keys
        for key in keys:
            scores[key] = scores.get(key, 0.0) + weight
            if len(scores) > limit:
                self._prune()
                scores = self.scores

    def _prune(self) -> None:
        keep = largest(self.scores.items(), self.max_keys)
        self.scores = dict(keep)

    def value_at(self, key: str, t_ms: int) -> float:
        """The decayed score of ``key`` as seen at time ``t_ms``."""
        raw = self.scores.get(key, 0.0)
        if raw == 0.0 or self.landmark_ms is None:
            return 0.0
        return raw * math.pow(2.0, -(t_ms - self.landmark_ms) / self.half_life_ms)

    def top(
        self, n: int, exclude: frozenset[str] | set[str] = frozenset()
    ) -> list[tuple[str, float]]:
        """The ``n`` strongest keys not in ``exclude``, with scores relative to the landmark."""
        if not exclude:
            return largest(self.scores.items(), n)
        candidates = ((k, v) for k, v in self.scores.items() if k not in exclude)
        return largest(candidates, n)

    def normalised_top(self, n: int) -> list[tuple[str, float]]:
        """Top ``n`` keys with scores divided by the strongest one (1.0 first)."""
        best = self.top(n)
        if not best:
            return []
        peak = best[0][1]
        return [(k, v / peak) for k, v in best]

    def __len__(self) -> int:
        return len(self.scores)
