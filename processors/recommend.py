"""Slate assembly: "people who viewed what you just viewed clicked next", blended with
"popular now in your categories", filtered, diversified and explained.

>>> from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
>>> from processors.popularity import PopularityConfig, PopularityIndex
>>> from processors.user_state import RecentItem, UserState
>>> model = CooccurrenceModel(CooccurrenceConfig())
>>> for session in (["r1", "r2"], ["r1", "r2"], ["r1", "r3"]):
...     for position, item in enumerate(session):
...         model.learn_one(session[:position], item)
>>> catalog = ItemCatalog(max_items=100)
>>> for item in ("r1", "r2", "r3"):
...     catalog.remember(item, "recipe", "pasta")
>>> user = UserState(user_id="u", partition=0, recent=[RecentItem("r1", "recipe", "pasta", 0)])
>>> slate = assemble_slate(user, "recipe", model, PopularityIndex(PopularityConfig()).snapshot(40),
...                        catalog, AssemblyConfig(), now_ms=1)
>>> for item in slate.items:
...     print(item.id, item.reason)
r2 because you viewed r1 (2 times together)
r3 because you viewed r1 (1 times together)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

from processors.cooccurrence import CooccurrenceModel
from processors.popularity import RankedSnapshot
from processors.slates import Slate, SlateItem, popular_candidates
from processors.user_state import RecentItem, UserState

#: The Redis hash field of each item type's slate.
SLATE_FIELDS = {"recipe": "recipes", "product": "products"}


@dataclass(frozen=True, slots=True)
class AssemblyConfig:
    size: int = 20
    cooccurrence_weight: float = 1.0  # blend weight of next-click evidence
    popularity_weight: float = 0.3  # blend weight of "popular in your categories"
    exclude_seen: bool = True
    exclude_items: frozenset[str] = frozenset()  # never recommended (config-level list)
    max_per_category: int = 8  # diversity: at most this many items of one category
    session_gap_ms: int = 30 * 60 * 1000
    top_categories: int = 3
    candidates_per_item: int = 30  # strongest next-click votes considered per session item
    # Whose item sets the model's neighbour visitors are: each user's (user-user neighbours
    # across sessions) or each session's (session-kNN).
    neighbour_scope: Literal["user", "session"] = "user"


class ItemCatalog:
    """What the stream has told us about items (type and category), bounded."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: dict[str, tuple[str, str | None]] = {}

    def remember(self, item_id: str, item_type: str, category: str | None) -> None:
        items = self._items
        if item_id in items:
            del items[item_id]  # re-insert: insertion order doubles as recency
        items[item_id] = (item_type, category)
        if len(items) > self.max_items:
            for stale in list(items)[: len(items) - self.max_items]:
                del items[stale]

    def get(self, item_id: str) -> tuple[str, str | None] | None:
        return self._items.get(item_id)

    def __len__(self) -> int:
        return len(self._items)


def current_session(recent: list[RecentItem], gap_ms: int) -> list[str]:
    """The items of the user's latest session (no gap longer than ``gap_ms``), oldest first."""
    session: list[str] = []
    later_ts: int | None = None
    for item in reversed(recent):
        if later_ts is not None and later_ts - item.ts > gap_ms:
            break
        session.append(item.item_id)
        later_ts = item.ts
    session.reverse()
    return session


def visitor_id(user: UserState, scope: Literal["user", "session"]) -> str:
    """The id the model remembers this user's items under (and excludes from its own
    neighbours): the user, or the user's current session.

    >>> visitor_id(UserState(user_id="u7", partition=0, sessions=3), "session")
    'u7#3'
    """
    return user.user_id if scope == "user" else f"{user.user_id}#{user.sessions}"


@dataclass(slots=True)
class _Candidate:
    score: float
    category: str | None
    best_share: float
    source: str | None = None  # the session item behind the strongest next-click vote
    text: str | None = None  # or a ready reason from the popularity scorer


def assemble_slate(
    user: UserState,
    item_type: str,
    model: CooccurrenceModel,
    popularity: RankedSnapshot,
    catalog: ItemCatalog,
    config: AssemblyConfig,
    now_ms: int,
    votes_memo: dict[str, list[tuple[str, float]]] | None = None,
) -> Slate:
    """Blend next-click candidates with popular-in-category ones for one item type.

    ``votes_memo`` shares per-item vote lists between the slates of one batch.
    """
    exclude = set(config.exclude_items)
    if config.exclude_seen:
        exclude |= user.seen_items()
    candidates: dict[str, _Candidate] = {}  # reasons are formatted only for the winners

    scored = model.candidates(
        current_session(user.recent, config.session_gap_ms),
        limit=config.candidates_per_item,
        memo=votes_memo,
        session_id=visitor_id(user, config.neighbour_scope),
    )
    peak = max((score for score, _ in scored.values()), default=0.0)
    scale = config.cooccurrence_weight / peak if peak > 0.0 else 0.0
    # Only the strongest votes can make the slate: enough for the size after exclusions,
    # items of other types and the diversity cap; popular candidates fill the rest.
    keep = 4 * config.size + len(exclude)
    strongest = (
        heapq.nlargest(keep, scored.items(), key=lambda kv: kv[1][0])
        if len(scored) > keep
        else scored.items()
    )
    catalog_get = catalog.get
    for item_id, (score, source) in strongest:
        known = catalog_get(item_id)
        if known is None or known[0] != item_type or item_id in exclude:
            continue
        share = score * scale
        candidates[item_id] = _Candidate(share, known[1], share, source=source)

    popular = popular_candidates(
        user, popularity, item_type, config.size * 2, config.top_categories, exclude
    )
    for item_id, popularity_score, category, reason in popular:
        share = config.popularity_weight * popularity_score
        candidate = candidates.get(item_id)
        if candidate is None:
            candidates[item_id] = _Candidate(share, category, share, text=reason)
            continue
        candidate.score += share
        if share > candidate.best_share:
            candidate.best_share, candidate.source, candidate.text = share, None, reason

    per_category: dict[str | None, int] = {}
    items: list[SlateItem] = []
    ordered = sorted(candidates.items(), key=lambda kv: (-kv[1].score, kv[0]))
    for item_id, candidate in ordered:
        category = candidate.category
        if category is not None:
            if per_category.get(category, 0) >= config.max_per_category:
                continue
            per_category[category] = per_category.get(category, 0) + 1
        if candidate.source is not None:
            evidence = model.pairs.get(candidate.source, {}).get(item_id, 0.0)
            if evidence >= 0.5:
                reason = f"because you viewed {candidate.source} ({evidence:.0f} times together)"
            else:  # voted by neighbour visitors only (no co-occurrence in one window)
                reason = f"visitors who viewed {candidate.source} also viewed it"
        else:
            reason = candidate.text or ""
        items.append(SlateItem(item_id, round(candidate.score, 6), reason, category))
        if len(items) == config.size:
            break
    return Slate(
        items=items, version=user.version, generated_at=now_ms, model="cooccurrence+popular"
    )
