"""Next-click evaluation (the session-rec / GRU4Rec protocol), pure over in-memory sessions.

For each test session in time order and each prefix ``s[0..p]``, the model ranks items and
we record where ``s[p+1]`` falls: HR@K (a.k.a. Recall@K) and MRR@K. In *streaming* mode the
model also learns each test click after it has been predicted, as in production.

>>> from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
>>> train = [["a", "b", "c"], ["a", "b", "c"], ["b", "d"]]
>>> test = [["a", "b", "c"]]
>>> result = evaluate_next_click(CooccurrenceModel(CooccurrenceConfig()), train, test, k=2)
>>> result.targets, result.hit_rate, result.mrr
(2, 1.0, 1.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class TimedSession(list[str]):
    """A session's items (oldest first) that also carries each click's time in ``times``
    (epoch milliseconds), so time-decayed models see the data's clock, not the evaluator's.

    >>> session = TimedSession(["a", "b"], times=[1_000.0, 2_000.0])
    >>> session[-1], session.times[-1]
    ('b', 2000.0)
    """

    def __init__(self, items: Sequence[str] = (), times: Sequence[float] = ()) -> None:
        super().__init__(items)
        if times and len(times) != len(self):
            raise ValueError("times must have one entry per item")
        self.times: list[float] | None = list(times) if times else None


def _time_of(session: Sequence[str], position: int) -> float | None:
    times = getattr(session, "times", None)
    return None if times is None else float(times[position])


class NextClickModel(Protocol):
    def learn_one(
        self,
        session_before: Sequence[str],
        item: str,
        ts_ms: float | None = None,
        session_id: str | None = None,
    ) -> None: ...

    def predict_one(
        self, session: Sequence[str], k: int = 20, session_id: str | None = None
    ) -> list[tuple[str, float]]: ...

    def popular(self, n: int) -> list[tuple[str, float]]: ...


@dataclass
class NextClickResult:
    k: int
    mode: str
    targets: int = 0
    hits: int = 0
    reciprocal_rank_sum: float = 0.0
    recommended_items: set[str] = field(default_factory=set)
    catalog_items: set[str] = field(default_factory=set)
    popular_share_numerator: int = 0
    recommendations: int = 0
    learned_events: int = 0
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.targets if self.targets else 0.0

    @property
    def mrr(self) -> float:
        return self.reciprocal_rank_sum / self.targets if self.targets else 0.0

    def as_dict(self) -> dict[str, object]:
        events = self.learned_events + self.targets
        return {
            "mode": self.mode,
            "k": self.k,
            f"hr@{self.k}": round(self.hit_rate, 4),
            f"mrr@{self.k}": round(self.mrr, 4),
            "targets": self.targets,
            "item_coverage": round(
                len(self.recommended_items) / max(len(self.catalog_items), 1), 4
            ),
            "popular_share": round(self.popular_share_numerator / max(self.recommendations, 1), 4),
            "seconds": round(self.seconds, 2),
            "events_per_second": round(events / self.seconds, 1) if self.seconds else None,
        }


def evaluate_next_click(
    model: NextClickModel,
    train: Sequence[Sequence[str]],
    test: Sequence[Sequence[str]],
    k: int = 20,
    streaming: bool = False,
    progress: Callable[[int], None] | None = None,
) -> NextClickResult:
    """Learn ``train`` sessions in order, then score every next click of ``test``.

    Sessions that are ``TimedSession``s pass their click times to ``learn_one``.
    """
    result = NextClickResult(k=k, mode="streaming" if streaming else "static")
    started = time.perf_counter()
    for number, session in enumerate(train):
        for position, item in enumerate(session):
            model.learn_one(
                session[:position], item, _time_of(session, position), f"train-{number}"
            )
            result.learned_events += 1
            result.catalog_items.add(item)
    popular = {item for item, _ in model.popular(100)}  # the top-100 items after training
    for index, session in enumerate(test):
        session_id = f"test-{index}"
        if streaming:
            model.learn_one([], session[0], _time_of(session, 0), session_id)
            result.learned_events += 1
        for position in range(len(session) - 1):
            prefix = session[: position + 1]
            target = session[position + 1]
            ranked = [item for item, _ in model.predict_one(prefix, k, session_id=session_id)]
            result.targets += 1
            result.recommendations += len(ranked)
            result.recommended_items.update(ranked)
            result.popular_share_numerator += sum(1 for item in ranked if item in popular)
            if target in ranked:
                result.hits += 1
                result.reciprocal_rank_sum += 1.0 / (ranked.index(target) + 1)
            if streaming:
                model.learn_one(prefix, target, _time_of(session, position + 1), session_id)
                result.learned_events += 1
        if progress is not None:
            progress(index + 1)
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class TopKResult:
    k: int
    users: int = 0
    precision_sum: float = 0.0
    recall_sum: float = 0.0
    ndcg_sum: float = 0.0
    ap_sum: float = 0.0
    recommendations: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        n = max(self.users, 1)
        return {
            "k": self.k,
            "users": self.users,
            f"precision@{self.k}": round(self.precision_sum / n, 4),
            f"recall@{self.k}": round(self.recall_sum / n, 4),
            f"ndcg@{self.k}": round(self.ndcg_sum / n, 4),
            f"map@{self.k}": round(self.ap_sum / n, 4),
        }


def ranking_metrics(ranked: Sequence[str], relevant: set[str], k: int) -> tuple[float, ...]:
    """Precision, recall, NDCG and average precision at ``k`` (binary relevance).

    >>> [round(x, 4) for x in ranking_metrics(["a", "x", "b"], {"a", "b", "c"}, k=3)]
    [0.6667, 0.6667, 0.7039, 0.5556]
    """
    hits = 0
    dcg = 0.0
    precision_sum = 0.0
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            dcg += 1.0 / math.log2(rank + 1)
            precision_sum += hits / rank
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return (
        hits / k,
        hits / len(relevant) if relevant else 0.0,
        dcg / ideal if ideal else 0.0,
        precision_sum / min(len(relevant), k) if relevant else 0.0,
    )


def evaluate_user_topk(
    model: NextClickModel,
    train: Sequence[tuple[str, str, float]],
    test: Sequence[tuple[str, str, float]],
    k: int = 10,
) -> TopKResult:
    """Learn ``(user, item, time)`` rows in time order, then recommend ``k`` unseen items to
    each test user from their history; every test interaction of the user is relevant.
    """
    history: dict[str, list[str]] = {}
    for user, item, _ in sorted(train, key=lambda row: row[2]):
        before = history.setdefault(user, [])
        model.learn_one(before, item)
        before.append(item)
    relevant: dict[str, set[str]] = {}
    for user, item, _ in test:
        relevant.setdefault(user, set()).add(item)
    result = TopKResult(k=k)
    for user, items in sorted(relevant.items()):
        seen = set(history.get(user, []))
        ranked = [
            item
            for item, _ in model.predict_one(history.get(user, []), k + len(seen))
            if item not in seen
        ][:k]
        precision, recall, ndcg, ap = ranking_metrics(ranked, items, k)
        result.users += 1
        result.precision_sum += precision
        result.recall_sum += recall
        result.ndcg_sum += ndcg
        result.ap_sum += ap
        result.recommendations[user] = ranked
    return result
