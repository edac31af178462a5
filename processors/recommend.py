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

from collections.abc import Callable, Iterable
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
    # Whose item sets the model's neighbour visitors are: each user's (user-user neighbours
    # across sessions) or each session's (session-kNN).
    neighbour_scope: Literal["user", "session"] = "user"


class ItemCatalog:
    """What the stream has told us about items (type and category), bounded."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: dict[str, tuple[str, str | None]] = {}
        # (type, category) of an item, or None: the dict's own get, as this runs per candidate
        self.get: Callable[[str], tuple[str, str | None] | None] = self._items.get

    def remember(self, item_id: str, item_type: str, category: str | None) -> None:
        items = self._items
        if item_id in items:
            del items[item_id]  # re-insert: insertion order doubles as recency
        items[item_id] = (item_type, category)
        if len(items) > self.max_items:
            for stale in list(items)[: len(items) - self.max_items]:
                del items[stale]

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


def assemble_slate(
    user: UserState,
    item_type: str,
    model: CooccurrenceModel,
    popularity: RankedSnapshot,
    catalog: ItemCatalog,
    config: AssemblyConfig,
    now_ms: int,
) -> Slate:
    """Blend next-click candidates with popular-in-category ones for one item type."""
    return assemble_slates(user, (item_type,), model, popularity, catalog, config, now_ms)[
        item_type
    ]


def assemble_slates(
    user: UserState,
    item_types: Iterable[str],
    model: CooccurrenceModel,
    popularity: RankedSnapshot,
    catalog: ItemCatalog,
    config: AssemblyConfig,
    now_ms: int,
) -> dict[str, Slate]:
    """One slate per item type for one user. The next-click candidates (which mix types) are
    scored once and shared: each type's slate takes its own items from them."""
    types = list(item_types)
    candidates = _UserCandidates(user, types, model, catalog, config)
    return {item_type: candidates.slate(item_type, popularity, now_ms) for item_type in types}


class _UserCandidates:
    """One user's next-click candidates, scored once (in blend units) and split by item type,
    with the exclusions and the vote sources their explanations name."""

    def __init__(
        self,
        user: UserState,
        item_types: list[str],
        model: CooccurrenceModel,
        catalog: ItemCatalog,
        config: AssemblyConfig,
    ) -> None:
        self.user, self.model, self.catalog, self.config = user, model, catalog, config
        self.exclude = set(config.exclude_items)
        if config.exclude_seen:
            self.exclude |= user.seen_items()
        session = current_session(user.recent, config.session_gap_ms)
        self.sources = model.vote_sources(session)
        scored = model.candidates(session, self.sources)
        peak = max(scored.values(), default=0.0)
        scale = config.cooccurrence_weight / peak if peak > 0.0 else 0.0
        self.voted: dict[str, float] = {}
        self.of_type: dict[str, dict[str, float]] = {item_type: {} for item_type in item_types}
        known = catalog.get
        for item_id, score in scored.items():
            self.voted[item_id] = scaled = score * scale
            entry = known(item_id)
            if entry is not None and entry[0] in self.of_type:
                self.of_type[entry[0]][item_id] = scaled

    def slate(self, item_type: str, popularity: RankedSnapshot, now_ms: int) -> Slate:
        """The slate of one item type: its next-click candidates plus popular in the user's
        categories, best first, filtered, diversified and explained."""
        user, config, voted, exclude = self.user, self.config, self.voted, self.exclude
        total = dict(self.of_type[item_type])
        popular: dict[str, tuple[float, str | None, str]] = {}  # item -> (share, category, why)
        weight = config.popularity_weight
        for item_id, popularity_score, category, reason in popular_candidates(
            user, popularity, item_type, config.size * 2, config.top_categories, exclude
        ):
            share = weight * popularity_score
            popular[item_id] = (share, category, reason)
            total[item_id] = voted.get(item_id, 0.0) + share
        # Best first, ties by id; the checks below run only until the slate is full.
        ordered = sorted(total)
        ordered.sort(key=total.__getitem__, reverse=True)

        catalog_get = self.catalog.get
        per_category: dict[str | None, int] = {}
        items: list[SlateItem] = []
        for item_id in ordered:
            if item_id in exclude:
                continue
            known = catalog_get(item_id)
            from_popular = popular.get(item_id)
            if known is not None and known[0] == item_type:
                category = known[1]
            elif from_popular is not None:
                category = from_popular[1]
            else:  # a next-click candidate of another type, or unknown to the catalog
                continue
            if category is not None:
                if per_category.get(category, 0) >= config.max_per_category:
                    continue
                per_category[category] = per_category.get(category, 0) + 1
            score = total[item_id]
            if from_popular is not None and (
                item_id not in voted or from_popular[0] > score - from_popular[0]
            ):
                reason = from_popular[2]
            else:
                reason = self._because(item_id)
            items.append(SlateItem(item_id, round(score, 6), reason, category))
            if len(items) == config.size:
                break
        return Slate(
            items=items, version=user.version, generated_at=now_ms, model="cooccurrence+popular"
        )

    def _because(self, item_id: str) -> str:
        """Why a next-click candidate is recommended: the session item behind its strongest
        vote, with the co-occurrence evidence when there is some; else the candidate whose
        own votes brought it (the second hop)."""
        source = self.sources.strongest(item_id)
        if source is None:
            bridge = self.sources.bridge(item_id)
            if bridge is not None:
                return f"often viewed with {bridge}"
            source = self.sources.last
        evidence = self.model.pairs.get(source, {}).get(item_id, 0.0)
        if evidence >= 0.5:
            return f"because you viewed {source} ({evidence:.0f} times together)"
        # voted by neighbour visitors only (no co-occurrence in one window)
        return f"visitors who viewed {source} also viewed it"
