"""Incremental item-item co-occurrence and sequential rules for next-click recommendation.

Learned one click at a time (``learn_one``), in the stream or in the evaluator:

- *sequential rules* ("after A, people clicked B"): for each of the previous ``steps`` items
  of the session, ``rules[prev][item] += 1 / distance`` (the weighting of session-rec's SR);
- *symmetric co-occurrence* within the same window, with per-item counts, from which the
  similarity indices raw count, Jaccard, cosine, lift and log-likelihood ratio are computed;
- bounded: each item keeps at most ``2 * max_neighbours`` entries and is pruned to its top
  ``max_neighbours`` (heavy hitters) when it grows past that.

``predict_one(session)`` scores candidates from the session's last items, weighting the
most recent most, and fills up with popular items.

>>> model = CooccurrenceModel(CooccurrenceConfig())
>>> for session in (["a", "b", "c"], ["a", "b", "d"], ["x", "b", "c"]):
...     for position, item in enumerate(session):
...         model.learn_one(session[:position], item)
>>> [item for item, _ in model.predict_one(["a", "b"], k=2)]
['c', 'd']
>>> model.explain("b", "c")
('because you viewed b', 2.0)
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Literal

Similarity = Literal["rules", "count", "jaccard", "cosine", "lift", "llr"]


@dataclass(frozen=True, slots=True)
class CooccurrenceConfig:
    steps: int = 5  # how far back in the session a click is paired
    max_neighbours: int = 200  # M: neighbours kept per item
    similarity: Similarity = "rules"
    recent_items: int = 5  # how many of the session's last items generate candidates
    recency_decay: float = 0.3  # weight of the i-th last item: recency_decay ** i
    symmetric_weight: float = 0.1  # blend of symmetric similarity into the rule score
    # Time decay of evidence; None: counts never fade. 72 h was chosen on a validation split.
    half_life_ms: float | None = 72 * 3_600_000
    max_items: int = 100_000  # items with neighbour lists; the least clicked are dropped
    # Neighbour visitors (session-kNN in the spirit of V-SkNN, or user-user neighbours when
    # the worker keys them by user): past visitors sharing items with the current session
    # vote for their items. Needs visitor ids in learn_one; 0 disables.
    session_knn_weight: float = 1.5
    session_knn_sample: int = 300  # most recent visitors per item considered
    session_knn_neighbours: int = 200  # most similar visitors that vote
    max_visitor_items: int = 50  # items remembered per visitor (the oldest are forgotten)
    # Weight of the current session's item i places from the end when matching sessions:
    # exp(-i / decay); None: linear (position / length), as in V-SkNN.
    session_knn_position_decay: float | None = 1.0
    max_sessions: int = 100_000  # visitors remembered; the least recently active are forgotten
    # Of predict_one's k places, up to this many (at most k // 4) are kept for items the
    # session already viewed (most recent first) when they did not rank: ~10% of RSC15's next
    # clicks go back to an earlier item of the session, and some rank below 20 otherwise.
    revisit_slots: int = 5


def _llr(k11: float, k12: float, k21: float, k22: float) -> float:
    """Dunning's log-likelihood ratio of a 2x2 contingency table."""

    def xlogx(x: float) -> float:
        return x * math.log(x) if x > 0 else 0.0

    def entropy(*counts: float) -> float:
        return xlogx(sum(counts)) - sum(xlogx(c) for c in counts)

    row = entropy(k11 + k12, k21 + k22)
    col = entropy(k11 + k21, k12 + k22)
    mat = entropy(k11, k12, k21, k22)
    return max(0.0, 2.0 * (row + col - mat))


Evidence = tuple[Literal["rules", "pairs"], str, str, float]  # table, row, column, amount


def click_evidence(session_before: Sequence[str], item: str, steps: int) -> list[Evidence]:
    """The row updates one click makes (before time decay): what ``learn_one`` applies and
    what an item-keyed deployment would ship to each row's owner.

    >>> click_evidence(["a", "b"], "c", steps=5)
    [('rules', 'b', 'c', 1.0), ('pairs', 'b', 'c', 1.0), ('pairs', 'c', 'b', 1.0), \
('rules', 'a', 'c', 0.5), ('pairs', 'a', 'c', 1.0), ('pairs', 'c', 'a', 1.0)]
    """
    out: list[Evidence] = []
    window = session_before[-steps:] if steps > 0 else []
    for distance, previous in enumerate(reversed(window), start=1):
        # A repeat click (A then A) is a rule too: a quarter of RSC15's next clicks repeat
        # the current item, and a model that cannot predict that misses all of them.
        out.append(("rules", previous, item, 1.0 / distance))
        if previous == item:
            continue
        out.append(("pairs", previous, item, 1.0))
        out.append(("pairs", item, previous, 1.0))
    return out


class CooccurrenceModel:
    """Pure and incremental; all state bounded by ``max_neighbours`` per item."""

    def __init__(self, config: CooccurrenceConfig) -> None:
        self.config = config
        self.rules: dict[str, dict[str, float]] = {}
        self.pairs: dict[str, dict[str, float]] = {}
        self.item_counts: dict[str, float] = {}
        self.total = 0.0
        self._landmark: float | None = None
        # visitor id -> its items (a dict as an ordered set: the oldest first)
        self.sessions: dict[str, dict[str, None]] = {}
        self.item_sessions: dict[str, list[str]] = {}
        self._popular: list[tuple[str, float]] | None = None

    # --- learning ---------------------------------------------------------------------
    def _weight(self, ts_ms: float | None) -> float:
        """Forward-decay weight of evidence at ``ts_ms`` (1.0 without decay)."""
        half_life = self.config.half_life_ms
        if half_life is None or ts_ms is None:
            return 1.0
        if self._landmark is None:
            self._landmark = ts_ms
        exponent = (ts_ms - self._landmark) / half_life
        if exponent > 200.0:  # rescale everything so weights stay finite
            factor = 2.0**-exponent
            for table in (self.rules, self.pairs):
                for row in table.values():
                    for key in row:
                        row[key] *= factor
            self.item_counts = {k: v * factor for k, v in self.item_counts.items()}
            self.total *= factor
            self._landmark = ts_ms
            exponent = 0.0
        return float(2.0**exponent)

    def learn_one(
        self,
        session_before: Sequence[str],
        item: str,
        ts_ms: float | None = None,
        session_id: str | None = None,
    ) -> None:
        """Learn that ``item`` was clicked after ``session_before`` (oldest first)."""
        config = self.config
        if session_id is not None and config.session_knn_weight > 0.0:
            self._remember_session(session_id, item)
        weight = self._weight(ts_ms)
        self.item_counts[item] = self.item_counts.get(item, 0.0) + weight
        self.total += weight
        self._popular = None
        tables = {"rules": self.rules, "pairs": self.pairs}
        for table, row, column, amount in click_evidence(session_before, item, config.steps):
            self._bump(tables[table], row, column, amount * weight)
        if len(self.item_counts) > 2 * config.max_items:
            self._drop_rare_items()

    def _remember_session(self, session_id: str, item: str) -> None:
        sessions = self.sessions
        items = sessions.pop(session_id, None)  # re-inserted last: most recently active
        if items is None:
            items = {}
            if len(sessions) >= self.config.max_sessions:
                del sessions[next(iter(sessions))]  # the least recently active
        sessions[session_id] = items
        if item in items:
            return
        items[item] = None
        if len(items) > self.config.max_visitor_items:
            # The visitor stays listed under the forgotten item; votes only read live items.
            del items[next(iter(items))]
        recent = self.item_sessions.setdefault(item, [])
        recent.append(session_id)
        if len(recent) > 2 * self.config.session_knn_sample:
            del recent[: len(recent) - self.config.session_knn_sample]

    def forget_visitors(self, is_theirs: Callable[[str], bool]) -> int:
        """Erase every remembered visitor for which ``is_theirs(visitor_id)`` holds (a user
        asked to be forgotten): their item sets and every listing of them under an item.
        Aggregated counts (rules, pairs, popularity) are not personal and stay. Returns the
        visitors erased. Rare and O(remembered listings)."""
        gone = [visitor for visitor in self.sessions if is_theirs(visitor)]
        for visitor in gone:
            del self.sessions[visitor]
        for item, visitors in list(self.item_sessions.items()):
            if any(is_theirs(v) for v in visitors):
                kept = [v for v in visitors if not is_theirs(v)]
                if kept:
                    self.item_sessions[item] = kept
                else:
                    del self.item_sessions[item]
        return len(gone)

    def session_knn_votes(
        self, session: Sequence[str], exclude_session: str | None = None
    ) -> dict[str, float]:
        """Items of the most similar past sessions, weighted by similarity.

        Similarity of a past session = sum of the position weights (the most recent item
        weighs most, see ``session_knn_position_decay``) of the current session's items it
        contains.
        """
        config = self.config
        if not session:
            return {}
        length = len(session)
        decay = config.session_knn_position_decay
        weights = {
            item: (position + 1) / length
            if decay is None
            else math.exp((position + 1 - length) / decay)
            for position, item in enumerate(session)
        }
        candidates: set[str] = set()
        for item in session[-3:]:
            candidates.update(self.item_sessions.get(item, [])[-config.session_knn_sample :])
        candidates.discard(exclude_session or "")
        similar: list[tuple[float, str]] = []
        sessions = self.sessions
        weight_of = weights.__getitem__
        session_items = weights.keys()
        for session_id in candidates:
            items = sessions.get(session_id)
            if items:
                shared = session_items & items.keys()  # a C-level set intersection
                if shared:
                    similar.append((sum(map(weight_of, shared)), session_id))
        # Neighbours sharing the same items have the same similarity: count each group's
        # items at C speed (Counter), then weight the counts once per group.
        groups: dict[float, list[dict[str, None]]] = {}
        for similarity, session_id in heapq.nlargest(config.session_knn_neighbours, similar):
            groups.setdefault(similarity, []).append(sessions[session_id])
        votes: dict[str, float] = {}
        for similarity, members in groups.items():
            for item, count in Counter(chain.from_iterable(members)).items():
                votes[item] = votes.get(item, 0.0) + count * similarity
        return votes

    def _drop_rare_items(self) -> None:
        keep = dict(
            heapq.nlargest(self.config.max_items, self.item_counts.items(), key=lambda kv: kv[1])
        )
        self.item_counts = keep
        for table in (self.rules, self.pairs, self.item_sessions):
            for item in [i for i in table if i not in keep]:
                del table[item]

    def _bump(self, table: dict[str, dict[str, float]], a: str, b: str, amount: float) -> None:
        row = table.get(a)
        if row is None:
            row = table[a] = {}
        row[b] = row.get(b, 0.0) + amount
        if len(row) > 2 * self.config.max_neighbours:
            table[a] = dict(
                heapq.nlargest(self.config.max_neighbours, row.items(), key=lambda kv: kv[1])
            )

    # --- similarity -------------------------------------------------------------------
    def similarity(self, a: str, b: str, kind: Similarity | None = None) -> float:
        kind = kind or self.config.similarity
        if kind == "rules":
            return self.rules.get(a, {}).get(b, 0.0)
        both = self.pairs.get(a, {}).get(b, 0.0)
        if both == 0.0:
            return 0.0
        count_a = self.item_counts.get(a, 0.0)
        count_b = self.item_counts.get(b, 0.0)
        if kind == "count":
            return both
        if kind == "jaccard":
            return both / max(count_a + count_b - both, 1e-9)
        if kind == "cosine":
            return both / math.sqrt(max(count_a * count_b, 1e-9))
        if kind == "lift":
            return both * self.total / max(count_a * count_b, 1e-9)
        return _llr(both, count_a - both, count_b - both, self.total - count_a - count_b + both)

    def neighbours(self, item: str, kind: Similarity | None = None) -> dict[str, float]:
        kind = kind or self.config.similarity
        if kind == "rules":
            return self.rules.get(item, {})
        return {b: self.similarity(item, b, kind) for b in self.pairs.get(item, {})}

    def explain(self, source: str, target: str) -> tuple[str, float]:
        """Why ``target`` is recommended after ``source``: the reason and its evidence count."""
        return f"because you viewed {source}", self.pairs.get(source, {}).get(target, 0.0)

    # --- prediction -------------------------------------------------------------------
    def popular(self, n: int) -> list[tuple[str, float]]:
        if self._popular is None or len(self._popular) < n:
            self._popular = heapq.nlargest(n, self.item_counts.items(), key=lambda kv: kv[1])
        return self._popular[:n]

    def votes(self, item: str, limit: int | None = None) -> list[tuple[str, float]]:
        """What one session item says about the next click: its rule row normalised by its
        strongest rule, plus ``symmetric_weight`` times its normalised cosine row; the top
        ``limit`` of them (all when None).
        """
        out: dict[str, float] = {}
        row = self.rules.get(item)
        if row:
            peak = max(row.values())
            for candidate, value in row.items():
                out[candidate] = value / peak
        weight = self.config.symmetric_weight
        pairs = self.pairs.get(item)
        if weight > 0.0 and pairs:
            # cosine = both / sqrt(count_a * count_b); the count_a factor cancels in the
            # normalisation by the row's peak, so only count_b is needed here.
            counts = self.item_counts
            sims = {b: both / math.sqrt(counts.get(b, 0.0) or 1e-9) for b, both in pairs.items()}
            peak = max(sims.values())
            for candidate, value in sims.items():
                out[candidate] = out.get(candidate, 0.0) + weight * value / peak
        if limit is None:
            return list(out.items())
        return heapq.nlargest(limit, out.items(), key=lambda kv: kv[1])

    def candidates(
        self,
        session: Sequence[str],
        limit: int | None = None,
        memo: dict[str, list[tuple[str, float]]] | None = None,
        session_id: str | None = None,
    ) -> dict[str, tuple[float, str]]:
        """Scored next items for a session, each with the session item that voted most.

        The session's last ``recent_items`` items vote (see ``votes``), the most recent with
        weight 1, the one before with ``recency_decay``, and so on. ``memo`` caches votes
        while the model is not learning (one batch's slates); ``limit`` caps each vote list
        (and the neighbour visitors' votes at ``4 * limit``).
        """
        config = self.config
        scores: dict[str, float] = {}
        best_source: dict[str, tuple[float, str]] = {}
        weight = 1.0
        seen_recent: set[str] = set()
        for item in reversed(session[-config.recent_items :] if config.recent_items else []):
            if item in seen_recent:
                continue
            seen_recent.add(item)
            if memo is None:
                item_votes = self.votes(item, limit)
            else:
                cached = memo.get(item)
                if cached is None:
                    cached = memo[item] = self.votes(item, limit)
                item_votes = cached
            for candidate, vote in item_votes:
                share = weight * vote
                scores[candidate] = scores.get(candidate, 0.0) + share
                current = best_source.get(candidate)
                if current is None or current[0] < share:
                    best_source[candidate] = (share, item)
            weight *= config.recency_decay
        if config.session_knn_weight > 0.0:
            knn = self.session_knn_votes(session, exclude_session=session_id)
            if knn:
                # Scaled to the rule scores' peak so the weight means the same on any data.
                scale = config.session_knn_weight * max(scores.values(), default=1.0)
                scale /= max(knn.values())
                last = session[-1]
                knn_votes = (
                    knn.items()
                    if limit is None or len(knn) <= 4 * limit
                    else heapq.nlargest(4 * limit, knn.items(), key=lambda kv: kv[1])
                )
                for candidate, vote in knn_votes:
                    scores[candidate] = scores.get(candidate, 0.0) + vote * scale
                    best_source.setdefault(candidate, (0.0, last))
        return {c: (score, best_source[c][1]) for c, score in scores.items()}

    def predict_one(
        self, session: Sequence[str], k: int = 20, session_id: str | None = None
    ) -> list[tuple[str, float]]:
        """Top ``k`` next items for a session (oldest first): scored candidates, up to
        ``revisit_slots`` of the session's own items that did not rank, popular items as fill.
        """
        candidates = self.candidates(session, session_id=session_id)
        scores = {item: score for item, (score, _) in candidates.items()}
        ranked = heapq.nlargest(k, scores.items(), key=lambda kv: kv[1])
        if len(ranked) < k:
            have = {item for item, _ in ranked}
            floor = min((s for _, s in ranked), default=1.0)
            for item, count in self.popular(k + len(have)):
                if item not in have:
                    ranked.append((item, floor * 1e-6 * count / (self.total or 1.0)))
                    if len(ranked) == k:
                        break
        slots = min(self.config.revisit_slots, k // 4)  # never more than a quarter
        if slots > 0:
            have = {item for item, _ in ranked}
            missing = list(dict.fromkeys(i for i in reversed(session) if i not in have))[:slots]
            if missing:
                keep = min(len(ranked), k - len(missing))
                floor = ranked[keep - 1][1] if keep else 1.0
                ranked = ranked[:keep] + [(item, floor) for item in missing]
        return ranked

    def size(self) -> int:
        """Entries held: neighbour rows plus the visitor memory (the gauge of this state's size).

        Bounded: at most 2 * max_items rows of at most 2 * max_neighbours entries each, and
        max_sessions visitors of at most max_visitor_items items, each listed under at most
        2 * session_knn_sample visitors per item.
        """
        rows = sum(len(r) for r in self.rules.values()) + sum(len(r) for r in self.pairs.values())
        return rows + sum(len(v) for v in self.sessions.values())
