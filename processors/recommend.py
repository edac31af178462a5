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
r3 because you viewed r1 (1 time together)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

from processors import slate_kernel
from processors.cooccurrence import KEY_SPACE, BatchCandidates, CooccurrenceModel
from processors.popularity import RankedSnapshot
from processors.ranking import NameOrder
from processors.slates import (
    SLATE_SCHEMA_VERSION,
    AnySlate,
    EncodedSlate,
    Slate,
    as_slate,
    decode_slate,
    round_scores,
)
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
        # ordered by recency; an OrderedDict, whose first key is O(1) (see cooccurrence)
        self._items: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        # (type, category) of an item, or None: the dict's own get, as this runs per candidate
        self.get: Callable[[str], tuple[str, str | None] | None] = self._items.get
        #: a small code per item type and per category, for ``codes``
        self.type_ids: dict[str, int] = {}
        self.category_ids: dict[str, int] = {}
        # codes' arrays, what they were built for, and the items whose entry changed since
        self._types = np.zeros(0, dtype=np.int16)
        self._categories = np.zeros(0, dtype=np.int32)
        self._codes_for: tuple[int, int] | None = None
        self._changed: list[str] = []

    def remember(self, item_id: str, item_type: str, category: str | None) -> None:
        items = self._items
        known = items.pop(item_id, None)  # re-inserted: insertion order doubles as recency
        entry = items[item_id] = (item_type, category)
        if known != entry:
            self._changed.append(item_id)
        while len(items) > self.max_items:
            stale = next(iter(items))
            del items[stale]
            self._changed.append(stale)
        if len(self._changed) > self.max_items:  # nobody asked for codes lately: rebuild then
            self._changed.clear()
            self._codes_for = None

    def category_code(self, category: str | None) -> int:
        """The category's code in ``category_ids`` (added when new); -1 for None."""
        if category is None:
            return -1
        return self.category_ids.setdefault(category, len(self.category_ids))

    def codes(
        self, names: list[str], index: dict[str, int], generation: int
    ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int32]]:
        """The type and the category of every item of a model's item index (``names``,
        ``index``) as ``type_ids`` and ``category_ids`` codes, -1 when unknown (or no
        category); kept up to date incrementally (the catalog's changes since the last call,
        the index's new items), rebuilt when ``generation`` says the index was."""
        types, categories = self._types, self._categories
        if self._codes_for != (id(names), generation):
            types, categories = np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.int32)
            self._changed.clear()
            self._codes_for = (id(names), generation)
        known = len(types)
        for item_id in self._changed:
            at = index.get(item_id)
            if at is not None and at < known:
                types[at], categories[at] = self._code(item_id)
        self._changed.clear()
        if len(names) > known:
            added = [self._code(name) for name in names[known:]]
            types = np.concatenate([types, np.array([t for t, _ in added], dtype=np.int16)])
            categories = np.concatenate(
                [categories, np.array([c for _, c in added], dtype=np.int32)]
            )
        self._types, self._categories = types, categories
        return types, categories

    def _code(self, item_id: str) -> tuple[int, int]:
        entry = self._items.get(item_id)
        if entry is None:
            return -1, -1
        return self.type_ids.setdefault(entry[0], len(self.type_ids)), self.category_code(entry[1])

    def __len__(self) -> int:
        return len(self._items)


_ITEM_ID = attrgetter("item_id")


def current_session(recent: list[RecentItem], gap_ms: int, last: int | None = None) -> list[str]:
    """The items of the user's latest session (no gap longer than ``gap_ms``), oldest first;
    only its ``last`` items when given.

    >>> from processors.user_state import RecentItem
    >>> recent = [RecentItem(f"r{i}", "recipe", None, ts) for i, ts in enumerate([0, 90, 95, 99])]
    >>> current_session(recent, gap_ms=10), current_session(recent, gap_ms=10, last=2)
    (['r1', 'r2', 'r3'], ['r2', 'r3'])
    """
    session: list[str] = []
    later_ts: int | None = None
    limit = len(recent) if last is None else last
    for item in reversed(recent):
        if len(session) >= limit or (later_ts is not None and later_ts - item.ts > gap_ms):
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
    built = assemble_slates_many(
        [(user, list(item_types))], model, popularity, catalog, config, now_ms
    )[0]
    return {item_type: as_slate(slate) for item_type, slate in built.items()}


def assemble_slates_many(
    requests: Sequence[tuple[UserState, Sequence[str]]],
    model: CooccurrenceModel,
    popularity: RankedSnapshot,
    catalog: ItemCatalog,
    config: AssemblyConfig,
    now_ms: int,
    lists: PopularLists | None = None,
    interests: Sequence[Sequence[tuple[str, float]]] | None = None,
) -> list[dict[str, AnySlate]]:
    """The slates of many users, one per requested item type each, built together.

    Each user's next-click candidates (which mix types) are scored once for all users
    (``CooccurrenceModel.candidates_many``), scaled to the user's peak and split by type;
    each type's slate blends its candidates with popular items in the user's categories,
    best first (ties by id), skips the excluded, caps each category and explains every
    item. Only the head of each user's candidates is ranked in Python: the slate needs
    ``size`` items, so a user's ``2 * size`` best of a type that are not excluded almost
    always fill it; when they do not, the user's whole list is ranked.
    A user's slates do not depend on which other users share the batch. ``lists``: the
    popular lists as arrays, kept by the caller from batch to batch (made here when None).
    ``interests``: each user's ``interests.normalised_top(config.top_categories)``, when the
    caller has them.
    """
    out: list[dict[str, AnySlate]] = []
    if lists is None:
        lists = PopularLists(model)
    lists.snapshot = popularity
    gap, window = config.session_gap_ms, model.session_window
    for start in range(0, len(requests), CHUNK_USERS):
        chunk = requests[start : start + CHUNK_USERS]
        sessions = [current_session(user.recent, gap, window) for user, _ in chunk]
        batch = model.candidates_many(sessions)
        tops = None if interests is None else interests[start : start + CHUNK_USERS]
        out += _SlateTail(batch, chunk, model, catalog, config, lists, tops).slates(now_ms)
    return out


Ints = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float64]
# A ranked popularity list over the model's item index: items, their popularity, its peak.
_RankedArrays = tuple[Ints, Floats, float]


def json_strings(strings: Sequence[str]) -> tuple[Bytes, Ints, Ints]:
    """The strings as JSON (msgspec's encoding, quoted and escaped), back to back, as
    ``slate_kernel.write_slates`` reads them: (data, starts, ends), string i is
    ``data[starts[i]:ends[i]]`` (one encoding call for all of them).

    >>> data, starts, ends = json_strings(["a", 'b"'])
    >>> print(b" ".join(data[s:e].tobytes() for s, e in zip(starts, ends)).decode())
    "a" "b\\""
    """
    data = np.frombuffer(_json.encode(strings), dtype=np.uint8)
    starts, ends = slate_kernel.string_bounds(data, len(strings))
    return data, starts, ends


class JsonStrings:
    """A growing list of strings (the model's item names), each as JSON (msgspec's encoding,
    quoted and escaped), back to back in one byte array: what ``slate_kernel.write_slates``
    copies the slates' ids from. Appended to as the list grows; made anew when the list was
    replaced (``generation``).

    >>> names, strings = ["r1"], JsonStrings()
    >>> data, starts, ends = strings.arrays(names, generation=0)
    >>> names.append('say "hi"')
    >>> data, starts, ends = strings.arrays(names, generation=0)
    >>> print(b" ".join(data[s:e].tobytes() for s, e in zip(starts, ends)).decode())
    "r1" "say \\"hi\\""
    """

    def __init__(self) -> None:
        self._for: tuple[int, int] | None = None
        self.data = np.zeros(0, dtype=np.uint8)
        self.starts = np.zeros(0, dtype=np.int64)
        self.ends = np.zeros(0, dtype=np.int64)

    def arrays(self, strings: list[str], generation: int) -> tuple[Bytes, Ints, Ints]:
        """(data, starts, ends): string i is ``data[starts[i]:ends[i]]``."""
        known = len(self.starts)
        if self._for != (id(strings), generation) or len(strings) < known:
            self._for = (id(strings), generation)
            self.data, self.starts, self.ends = self.data[:0], self.starts[:0], self.ends[:0]
            known = 0
        if len(strings) > known:
            added, starts, ends = json_strings(strings[known:])
            shift = len(self.data) - starts[0]
            self.data = np.concatenate([self.data, added[starts[0] : ends[-1]]])
            self.starts = np.concatenate([self.starts, starts + shift])
            self.ends = np.concatenate([self.ends, ends + shift])
        return self.data, self.starts, self.ends


class PopularLists:
    """The popularity snapshot's ranked lists as arrays over the model's item index (their
    items interned there), kept while a list (the same object, see
    ``PopularityIndex.ranked``) and the index are unchanged."""

    def __init__(self, model: CooccurrenceModel) -> None:
        self.model = model
        self.snapshot: RankedSnapshot | None = None  # the batch's (assemble_slates_many)
        self.name_order = NameOrder()  # the model's item names in order, as int keys
        self.json_names = JsonStrings()  # the model's item names as JSON
        # (type, category) -> (the list, the index generation, its arrays)
        self._arrays: dict[
            tuple[str, str | None], tuple[list[tuple[str, float]], int, _RankedArrays]
        ] = {}

    def get(self, item_type: str, category: str | None) -> _RankedArrays:
        """A category's list; ``None``: the item type's overall (trending) list."""
        snapshot, model = self.snapshot, self.model
        assert snapshot is not None
        ranked = (
            snapshot.overall(item_type)
            if category is None
            else snapshot.in_category(item_type, category)
        )
        key = (item_type, category)
        held = self._arrays.get(key)
        if held is not None and held[0] is ranked and held[1] == model.index_generation:
            return held[2]
        items = [item for item, _ in ranked]
        codes = list(map(model.item_index.get, items))
        if None in codes:
            codes = [model.intern(item) for item in items]
        arrays = (
            np.array(codes, dtype=np.int64),
            np.array([pop for _, pop in ranked], dtype=np.float64),
            ranked[0][1] if ranked else 0.0,
        )
        self._arrays[key] = (ranked, model.index_generation, arrays)
        return arrays


#: ``_Rows.listed`` of a next-click candidate no popularity list brought, and of a trending item
_NOT_LISTED, _TRENDING = slate_kernel.NOT_LISTED, slate_kernel.TRENDING
assert (_NOT_LISTED, _TRENDING) == (-2, -1)  # ``_SlateTail.slates``' reasons table
_NO_INTS, _NO_FLOATS = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
#: The name of the model behind the recipe and product slates (the slates' ``model`` field).
SLATE_MODEL = "cooccurrence+popular"
_json = msgspec.json.Encoder()
_SLATE_JSON = slate_kernel.slate_json_parts(_json.encode(SLATE_MODEL), SLATE_SCHEMA_VERSION)


@dataclass(slots=True)
class _Rows:
    """Slate rows of many (user, item type) groups: ``group`` = user position x the number of
    types + the type's position; items as indexes into the model's item index."""

    group: Ints
    item: Ints
    total: Floats  # the blended score
    share: Floats  # the popularity share of it (0.0 when no list brought the item)
    listed: Ints  # the category code of the list that brought it, _TRENDING or _NOT_LISTED
    category: Ints  # the category code it is shown and capped under, -1: none
    voted: npt.NDArray[np.bool_]  # whether it has a next-click score

    def take(self, at: Ints | npt.NDArray[np.bool_]) -> _Rows:
        return _Rows(
            self.group[at],
            self.item[at],
            self.total[at],
            self.share[at],
            self.listed[at],
            self.category[at],
            self.voted[at],
        )

    @staticmethod
    def join(parts: Sequence[_Rows]) -> _Rows:
        return _Rows(
            *(
                np.concatenate([getattr(part, name) for part in parts])
                for name in ("group", "item", "total", "share", "listed", "category", "voted")
            )
        )


class _SlateTail:
    """The slates of a chunk of users, built as arrays over all their (user, item type)
    groups at once: next-click candidates scaled to each user's peak, popular candidates from
    the user's categories and trending ones, blended, sorted (best first, ties by id), capped
    per category and cut to size; only the explanations and the slate items are made per
    item in Python."""

    def __init__(
        self,
        batch: BatchCandidates,
        requests: Sequence[tuple[UserState, Sequence[str]]],
        model: CooccurrenceModel,
        catalog: ItemCatalog,
        config: AssemblyConfig,
        lists: PopularLists,
        interests: Sequence[Sequence[tuple[str, float]]] | None = None,
    ) -> None:
        self.batch, self.requests, self.model = batch, requests, model
        self.catalog, self.config = catalog, config
        count = len(requests)
        owners = batch.sessions
        peak = slate_kernel.peak_per_session(owners, batch.scores, count, 0.0)  # scores > 0
        scale = np.divide(config.cooccurrence_weight, peak, out=np.zeros(count), where=peak > 0.0)
        self.scaled = batch.scores * scale[owners]
        self.types = list(dict.fromkeys(t for _, types in requests for t in types))
        width = self.width = len(self.types)
        self.requested = np.zeros(count * width, dtype=bool)
        for position, (_, item_types) in enumerate(requests):
            for item_type in item_types:
                self.requested[position * width + self.types.index(item_type)] = True
        # The category lists are interned before the codes and exclusions (_index_items).
        self.lists = lists
        self._category_segments(lists, interests)
        self._index_items()
        code_of = {item_type: code for code, item_type in enumerate(self.types)}
        # catalog type code -> position in ``types``; the extra last slot maps unknown (-1)
        remap = np.full(len(catalog.type_ids) + 1, -1, dtype=np.int64)
        for item_type, code in catalog.type_ids.items():
            remap[code] = code_of.get(item_type, -1)
        # each (user, type) group's next-click candidates, best first
        self.group_starts, self.candidate_items, self.candidate_scores = (
            slate_kernel.group_candidates(
                count,
                width,
                batch.bounds,
                batch.items,
                self.scaled,
                self.item_types,
                remap,
                self.excluded_keys,
                2 * config.size,
            )
        )

    def _index_items(self) -> None:
        """The catalog's type and category of every item of the model's index, each slate
        type's catalog code, and the excluded (user position, item) keys; again whenever
        more items were interned (a trending list read late)."""
        model, catalog, config = self.model, self.catalog, self.config
        self.indexed = len(model.item_names)
        self.item_types, self.item_categories = catalog.codes(
            model.item_names, model.item_index, model.index_generation
        )
        # each type position's catalog code (-3: none, so nothing matches it)
        self.slate_types = np.array(
            [catalog.type_ids.get(item_type, -3) for item_type in self.types], dtype=np.int64
        )
        # an item seen twice is a key twice: the kernels only ask whether a key is there
        code = model.item_index.get
        always = [at for at in map(code, config.exclude_items) if at is not None]
        excluded: list[int] = []
        for position, (user, _) in enumerate(self.requests):
            offset = position * KEY_SPACE
            if config.exclude_seen:
                seen = map(code, map(_ITEM_ID, user.recent))
                excluded += [offset + at for at in seen if at is not None]
            if always:
                excluded += [offset + at for at in always]
        self.excluded_keys = np.sort(np.array(excluded, dtype=np.int64))

    def _category_segments(
        self, lists: PopularLists, interests: Sequence[Sequence[tuple[str, float]]] | None
    ) -> None:
        """Each group's popular lists, one per top category of the user with a positive
        peak, as the kernels read them: the group's segments (``segment_starts``), each
        segment's list (in a table of the distinct lists, back to back), its scale (interest /
        the list's peak) and its category's code."""
        config, types = self.config, self.types
        category_code = self.catalog.category_code
        starts = [0]
        segment_list: list[int] = []
        scales: list[float] = []
        categories: list[int] = []
        table: dict[tuple[str, str], tuple[int, float, int]] = {}  # (list, peak, category)
        items: list[Ints] = []
        pops: list[Floats] = []
        top = config.top_categories
        for at, (user, item_types) in enumerate(self.requests):
            strongest: Sequence[tuple[str, float]] = ()
            if user.interests is not None:
                strongest = (
                    user.interests.normalised_top(top) if interests is None else interests[at]
                )
            for item_type in types:  # the user's groups, in order
                if strongest and item_type in item_types:
                    for category, interest in strongest:
                        key = (item_type, category)
                        held = table.get(key)
                        if held is None:
                            listed_items, values, peak = lists.get(item_type, category)
                            held = table[key] = (len(items), peak, category_code(category))
                            if peak > 0.0:  # else also an empty list: no segment
                                items.append(listed_items)
                                pops.append(values)
                        if held[1] > 0.0:
                            segment_list.append(held[0])
                            scales.append(interest / held[1])
                            categories.append(held[2])
                starts.append(len(segment_list))
        lengths = np.array([len(listed) for listed in items], dtype=np.int64)
        self.segment_starts = np.array(starts, dtype=np.int64)
        self.segment_list = np.array(segment_list, dtype=np.int64)
        self.segment_scale = np.array(scales, dtype=np.float64)
        self.segment_category = np.array(categories, dtype=np.int64)
        self.list_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.list_items = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
        self.list_pops = np.concatenate(pops) if pops else np.zeros(0)

    def _rows(self, lists: PopularLists) -> _Rows:
        """Every requested group's slate rows, sorted by group (``slate_kernel.merge_rows``,
        after ``popular_rows``; the trending lists are read only when a group needs them)."""
        config, size = self.config, 2 * self.config.size  # popular candidates: twice the slate
        group_count = len(self.requested)
        names = self.model.item_names
        name_rank = lists.name_order.keys(names, self.model.index_generation)
        slot = np.full(len(names), -1, dtype=np.int64)
        pop_item = np.empty(group_count * size, dtype=np.int64)
        pop_score = np.empty(group_count * size)
        pop_category = np.empty(group_count * size, dtype=np.int64)
        pop_count = np.zeros(group_count, dtype=np.int64)
        slate_kernel.popular_rows(
            group_count,
            self.width,
            size,
            self.segment_starts,
            self.segment_list,
            self.segment_scale,
            self.segment_category,
            self.list_starts,
            self.list_items,
            self.list_pops,
            self.excluded_keys,
            name_rank,
            slot,
            pop_item,
            pop_score,
            pop_category,
            pop_count,
        )
        # then trending items, below every category match, fill each group up to ``size``;
        # read only now (the type's whole counter is ranked): most groups need none
        short = np.flatnonzero(self.requested & (pop_count < size))
        trend_items: list[Ints] = []
        trend_pops: list[Floats] = []
        peaks = np.ones(self.width)
        needed = {g % self.width for g in short.tolist()}
        for position, item_type in enumerate(self.types):
            listed, values, peak = (
                lists.get(item_type, None) if position in needed else (_NO_INTS, _NO_FLOATS, 1.0)
            )
            trend_items.append(listed)
            trend_pops.append(values)
            peaks[position] = peak if len(listed) else 1.0
        if len(names) != self.indexed:  # a trending list interned new items
            self._index_items()
            name_rank = lists.name_order.keys(names, self.model.index_generation)
            slot = np.full(len(names), -1, dtype=np.int64)
        lengths = np.array([len(listed) for listed in trend_items], dtype=np.int64)
        rows = slate_kernel.merge_rows(
            group_count,
            self.width,
            config.size,
            config.max_per_category,
            config.popularity_weight,
            size,
            self.requested,
            pop_item,
            pop_score,
            pop_category,
            pop_count,
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            np.concatenate(trend_items),
            np.concatenate(trend_pops),
            peaks,
            self.group_starts,
            self.candidate_items,
            self.candidate_scores,
            self.batch.bounds,
            self.batch.items,
            self.scaled,
            self.excluded_keys,
            self.item_types,
            self.item_categories,
            self.slate_types,
            len(self.catalog.category_ids),
            name_rank,
            slot,
        )
        return _Rows(*rows)

    def slates(self, now_ms: int) -> list[dict[str, AnySlate]]:
        """Every user's slates, written as their JSON from the rows (``slate_kernel.
        write_slates``): the strings they copy (reasons, categories) encoded in one call;
        a slate with a score the kernel cannot write is made of slate items instead."""
        rows = self._rows(self.lists)
        by_list = (rows.listed != _NOT_LISTED) & (
            ~rows.voted | (rows.share > rows.total - rows.share)
        )
        model = self.model
        names = model.item_names
        category_ids = self.catalog.category_ids
        # the strings the rows' JSON copies: the popular lists' reasons by list code + 2
        # (_NOT_LISTED -2, _TRENDING -1, then the category codes), the next-click rows'
        # reasons, then the category names by code (only those the rows need, others "")
        texts: list[str] = ["", "trending now", *[""] * len(category_ids)]
        category_names = list(category_ids)
        for code in set(rows.listed.tolist()) - {_NOT_LISTED, _TRENDING}:
            texts[code - _NOT_LISTED] = f"popular in {category_names[code]}"
        reason = rows.listed - _NOT_LISTED
        kind = np.zeros(len(reason), dtype=np.int64)  # slate_kernel.TEXT
        count = np.zeros(len(reason), dtype=np.int64)
        voted = np.flatnonzero(~by_list)
        kind[voted], reason[voted], count[voted] = self._because(
            rows.group[voted] // self.width, rows.item[voted]
        )
        category_texts = len(texts)
        shown = [""] * len(category_ids)
        for code in set(rows.category.tolist()) - {-1}:
            shown[code] = category_names[code]
        texts += shown
        bounds = np.searchsorted(rows.group, np.arange(len(self.requested) + 1))
        versions = np.array([user.version for user, _ in self.requests], dtype=np.int64)
        data, offsets, unsure = slate_kernel.write_slates(
            bounds,
            (rows.item, rows.total, rows.category, kind, reason, count),
            self.lists.json_names.arrays(names, model.index_generation),
            json_strings(texts),
            category_texts,
            versions,
            self.width,
            now_ms,
            _SLATE_JSON,
        )
        written = data.tobytes()
        ids = list(map(names.__getitem__, rows.item.tolist()))
        starts, row_bounds = offsets.tolist(), bounds.tolist()
        redo = set(np.flatnonzero(unsure).tolist())
        type_position = {item_type: at for at, item_type in enumerate(self.types)}
        out: list[dict[str, AnySlate]] = []
        for position, ((_, item_types), version) in enumerate(
            zip(self.requests, versions.tolist(), strict=True)
        ):
            slates: dict[str, AnySlate] = {}
            for item_type in item_types:
                group = position * self.width + type_position[item_type]
                first, last = row_bounds[group], row_bounds[group + 1]
                encoded = written[starts[group] : starts[group + 1]]
                if group in redo:  # a score round_scores leaves to round: msgspec writes it
                    slate = decode_slate(encoded)
                    scores = round_scores(rows.total[first:last])
                    slates[item_type] = msgspec.structs.replace(
                        slate,
                        items=[
                            msgspec.structs.replace(item, score=score)
                            for item, score in zip(slate.items, scores, strict=True)
                        ],
                    )
                    continue
                slates[item_type] = EncodedSlate(
                    encoded,
                    ids[first:last],
                    version,
                    now_ms,
                    SLATE_MODEL,
                )
            out.append(slates)
        return out

    def _because(self, sessions: Ints, items: Ints) -> tuple[Ints, Ints, Ints]:
        """Why each next-click candidate (its session position and index) is recommended, as
        ``slate_kernel.write_slates`` writes it (kind, named item, count): the session item
        behind its strongest vote, with the co-occurrence evidence when there is some
        (``BECAUSE``, else ``VISITORS``); else the candidate whose own votes brought it (the
        second hop, ``OFTEN``)."""
        batch, model = self.batch, self.model
        source, bridge = batch.explain_rows(sessions * KEY_SPACE + items)
        codes = batch.voter_codes
        named = np.where(source >= 0, codes[source], -1)
        paired = named.copy()  # whose co-occurrence with the item counts
        # no vote and no bridge (rare): the session's last item stands in
        for at in np.flatnonzero((source < 0) & (bridge < 0)).tolist():
            last = batch.session_items[int(sessions[at])]
            if last:
                code = model.item_index.get(last[-1])
                paired[at] = -1 if code is None else code
                named[at] = model.intern(last[-1]) if code is None else code
        count = model.times_together(model.pair_values_at(paired, items))
        kind = np.where(count > 0, slate_kernel.BECAUSE, slate_kernel.VISITORS)
        often = (source < 0) & (bridge >= 0)  # brought by the second hop
        kind[often] = slate_kernel.OFTEN
        named[often] = codes[bridge[often]]
        return kind, named, count
