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

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from processors.cooccurrence import KEY_SPACE, BatchCandidates, CooccurrenceModel
from processors.popularity import RankedSnapshot
from processors.slates import PopularCandidate, Slate, SlateItem, popular_candidates
from processors.user_state import RecentItem, UserState

#: Users whose slates are built together: ~700 gathered votes each, so a chunk's arrays
#: stay near 10 MB however large the batch (in-process, 5,000-event batches peaked at
#: 270 MB unchunked, 225 MB in chunks of 256, 208 MB before batching; same speed).
CHUNK_USERS = 256

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
        #: a small code per item type, for ``type_codes``
        self.type_ids: dict[str, int] = {}
        # type_codes' array, what it was built for, and the items whose type changed since
        self._codes = np.zeros(0, dtype=np.int16)
        self._codes_for: tuple[int, int] | None = None
        self._changed: list[str] = []

    def remember(self, item_id: str, item_type: str, category: str | None) -> None:
        items = self._items
        known = items.pop(item_id, None)  # re-inserted: insertion order doubles as recency
        items[item_id] = (item_type, category)
        if known is None or known[0] != item_type:
            self._changed.append(item_id)
        while len(items) > self.max_items:
            stale = next(iter(items))
            del items[stale]
            self._changed.append(stale)
        if len(self._changed) > self.max_items:  # nobody asked for codes lately: rebuild then
            self._changed.clear()
            self._codes_for = None

    def type_codes(
        self, names: list[str], index: dict[str, int], generation: int
    ) -> npt.NDArray[np.int16]:
        """The type of every item of a model's item index (``names``, ``index``) as its
        ``type_ids`` code, -1 when unknown; kept up to date incrementally (the catalog's
        changes since the last call, the index's new items), rebuilt when ``generation``
        says the index was."""
        codes = self._codes
        if self._codes_for != (id(names), generation):
            codes = np.zeros(0, dtype=np.int16)
            self._changed.clear()
            self._codes_for = (id(names), generation)
        known = len(codes)
        for item_id in self._changed:
            at = index.get(item_id)
            if at is not None and at < known:
                codes[at] = self._code(item_id)
        self._changed.clear()
        if len(names) > known:
            codes = np.concatenate(
                [codes, np.array([self._code(n) for n in names[known:]], dtype=np.int16)]
            )
        self._codes = codes
        return codes

    def _code(self, item_id: str) -> int:
        entry = self._items.get(item_id)
        if entry is None:
            return -1
        return self.type_ids.setdefault(entry[0], len(self.type_ids))

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
    """One slate per item type for one user (``assemble_slates_many`` for one)."""
    return assemble_slates_many(
        [(user, list(item_types))], model, popularity, catalog, config, now_ms
    )[0]


def assemble_slates_many(
    requests: Sequence[tuple[UserState, Sequence[str]]],
    model: CooccurrenceModel,
    popularity: RankedSnapshot,
    catalog: ItemCatalog,
    config: AssemblyConfig,
    now_ms: int,
) -> list[dict[str, Slate]]:
    """The slates of many users, one per requested item type each, built together.

    Each user's next-click candidates (which mix types) are scored once for all users
    (``CooccurrenceModel.candidates_many``), scaled to the user's peak and split by type;
    each type's slate blends its candidates with popular items in the user's categories,
    best first (ties by id), skips the excluded, caps each category and explains every
    item. Only the head of each user's candidates is ranked in Python: the slate needs
    ``size`` items, so a user's ``2 * size`` best of a type that are not excluded almost
    always fill it; when they do not, the user's whole list is ranked.
    A user's slates do not depend on which other users share the batch.
    """
    out: list[dict[str, Slate]] = []
    for start in range(0, len(requests), CHUNK_USERS):
        chunk = requests[start : start + CHUNK_USERS]
        sessions = [current_session(user.recent, config.session_gap_ms) for user, _ in chunk]
        batch = model.candidates_many(sessions)
        out += _SlateTail(batch, chunk, model, catalog, config).slates(popularity, now_ms)
    return out


class _SlateTail:
    """The batch's candidates scaled to each user's peak, split by item type and ranked, with
    what the per-user slate loop needs."""

    def __init__(
        self,
        batch: BatchCandidates,
        requests: Sequence[tuple[UserState, Sequence[str]]],
        model: CooccurrenceModel,
        catalog: ItemCatalog,
        config: AssemblyConfig,
    ) -> None:
        self.batch, self.requests, self.model = batch, requests, model
        self.catalog, self.config = catalog, config
        self.excluded: list[set[str]] = []
        for user, _ in requests:
            exclude = set(config.exclude_items)
            if config.exclude_seen:
                exclude |= user.seen_items()
            self.excluded.append(exclude)
        count = len(requests)
        owners = batch.sessions
        peak = np.zeros(count)
        np.maximum.at(peak, owners, batch.scores)  # scores are > 0
        scale = np.divide(config.cooccurrence_weight, peak, out=np.zeros(count), where=peak > 0.0)
        self.scaled = batch.scores * scale[owners]
        # item type of every candidate, as a code: its position in ``types``, or -1
        self.types = list(dict.fromkeys(t for _, types in requests for t in types))
        code_of = {item_type: code for code, item_type in enumerate(self.types)}
        type_codes = catalog.type_codes(model.item_names, model.item_index, model.index_generation)
        # catalog type code -> position in ``types``; the extra last slot maps unknown (-1)
        remap = np.full(len(catalog.type_ids) + 1, -1, dtype=np.int64)
        for item_type, code in catalog.type_ids.items():
            remap[code] = code_of.get(item_type, -1)
        codes = remap[type_codes[batch.items]]
        # excluded candidates are dropped here, not in the slate loop, so the head is short
        index = model.item_index
        excluded_keys = [
            position * KEY_SPACE + index[item]
            for position, exclude in enumerate(self.excluded)
            for item in exclude
            if item in index
        ]
        self.keys = keys = owners * KEY_SPACE + batch.items  # sorted, as the batch's
        allowed = (codes >= 0) & ~np.isin(keys, np.array(excluded_keys, dtype=np.int64))
        # each (user, type) group best first; only its head (2 * size) is ranked in Python
        typed = np.flatnonzero(allowed)
        group = owners[typed] * len(self.types) + codes[typed]
        order = typed[np.lexsort((-self.scaled[typed], group))]
        self.group_of = group_sorted = owners[order] * len(self.types) + codes[order]
        self.order = order
        self.group_starts = np.searchsorted(group_sorted, np.arange(count * len(self.types) + 1))
        self.head = 2 * config.size

    def _ranked(self, group: int, limit: int | None) -> tuple[list[str], list[float], bool]:
        """A (user, type) group's candidates, best first: the first ``limit`` (all when None),
        and whether there are more."""
        start, end = int(self.group_starts[group]), int(self.group_starts[group + 1])
        more = limit is not None and end - start > limit
        if more:
            end = start + limit  # type: ignore[operator]
        positions = self.order[start:end]
        names = self.model.item_names
        return (
            [names[item] for item in self.batch.items[positions].tolist()],
            self.scaled[positions].tolist(),
            more,
        )

    def _popular(
        self, popularity: RankedSnapshot
    ) -> list[list[tuple[list[PopularCandidate], list[float | None]]]]:
        """Each user's popular candidates per requested type, with each one's scaled
        next-click score (any type), or None when it has none."""
        config, index = self.config, self.model.item_index
        lists: list[list[list[PopularCandidate]]] = []
        keys: list[int] = []
        for position, (user, item_types) in enumerate(self.requests):
            exclude = self.excluded[position]
            interests = (
                user.interests.normalised_top(config.top_categories) if user.interests else []
            )
            per_type = []
            for item_type in item_types:
                candidates = popular_candidates(
                    user,
                    popularity,
                    item_type,
                    config.size * 2,
                    config.top_categories,
                    exclude,
                    interests,
                )
                per_type.append(candidates)
                base = position * KEY_SPACE
                keys += [base + index.get(c[0], KEY_SPACE - 1) for c in candidates]
            lists.append(per_type)
        candidate_keys = self.keys
        wanted = np.array(keys, dtype=np.int64)
        scores = np.full(len(wanted), np.nan)
        if len(candidate_keys):
            at = np.minimum(np.searchsorted(candidate_keys, wanted), len(candidate_keys) - 1)
            found = candidate_keys[at] == wanted
            scores[found] = self.scaled[at[found]]
        voted = iter([None if math.isnan(v) else v for v in scores.tolist()])
        return [
            [(candidates, [next(voted) for _ in candidates]) for candidates in per_type]
            for per_type in lists
        ]

    def slates(self, popularity: RankedSnapshot, now_ms: int) -> list[dict[str, Slate]]:
        """Every user's slates."""
        out = []
        for position, per_type in enumerate(self._popular(popularity)):
            user, item_types = self.requests[position]
            slates = {}
            for item_type, (candidates, voted) in zip(item_types, per_type, strict=True):
                group = position * len(self.types) + self.types.index(item_type)
                items = self._slate_items(position, group, item_type, candidates, voted, True)
                if items is None:  # the head ran out before the slate was full: rank them all
                    items = self._slate_items(position, group, item_type, candidates, voted, False)
                assert items is not None
                slates[item_type] = Slate(
                    items=items,
                    version=user.version,
                    generated_at=now_ms,
                    model="cooccurrence+popular",
                )
            out.append(slates)
        return out

    def _slate_items(
        self,
        position: int,
        group: int,
        item_type: str,
        candidates: list[PopularCandidate],
        voted: list[float | None],
        truncate: bool,
    ) -> list[SlateItem] | None:
        """The slate of one item type: its next-click candidates plus popular in the user's
        categories, best first, filtered, diversified and explained; None when the ranked
        head (``truncate``) ran out before the slate was full."""
        config, exclude = self.config, self.excluded[position]
        names, scores, more = self._ranked(group, self.head if truncate else None)
        floor = scores[-1] if more else -1.0  # below it, unranked candidates may come first
        total = dict(zip(names, scores, strict=True))
        popular: dict[str, tuple[float, str | None, str, bool]] = {}
        weight = config.popularity_weight
        for (item_id, popularity_score, category, reason), score in zip(
            candidates, voted, strict=True
        ):
            share = weight * popularity_score
            popular[item_id] = (share, category, reason, score is not None)
            total[item_id] = (score or 0.0) + share
        # Best first, ties by id; the checks below run only until the slate is full.
        ordered = sorted(total)
        ordered.sort(key=total.__getitem__, reverse=True)

        catalog_get = self.catalog.get
        per_category: dict[str | None, int] = {}
        items: list[SlateItem] = []
        for item_id in ordered:
            score = total[item_id]
            if score <= floor:
                return None
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
            if from_popular is not None and (
                not from_popular[3] or from_popular[0] > score - from_popular[0]
            ):
                reason = from_popular[2]
            else:
                reason = self._because(position, item_id)
            items.append(SlateItem(item_id, round(score, 6), reason, category))
            if len(items) == config.size:
                break
        return items if not more or len(items) == config.size else None

    def _because(self, position: int, item_id: str) -> str:
        """Why a next-click candidate is recommended: the session item behind its strongest
        vote, with the co-occurrence evidence when there is some; else the candidate whose
        own votes brought it (the second hop)."""
        sources = self.batch.sources[position]
        source = sources.strongest(item_id)
        if source is None:
            bridge = self.batch.with_bridges(position, self.model).bridge(item_id)
            if bridge is not None:
                return f"often viewed with {bridge}"
            source = sources.last
        evidence = self.model.pairs.get(source, {}).get(item_id, 0.0)
        if evidence >= 0.5:
            return f"because you viewed {source} ({evidence:.0f} times together)"
        # voted by neighbour visitors only (no co-occurrence in one window)
        return f"visitors who viewed {source} also viewed it"
