"""Banner ranking for one user: content match, recipe-derived relevance, learned CTR, caps.

Pure: the caller owns the catalogue, the CTR statistics and the user's impression counts,
and passes a seeded random generator so a ranking is reproducible. A batch's users are ranked
at once (``rank_banners_many``: arrays of users x banners instead of a Python loop per banner
per user).

Score of an eligible banner, each term kept for the explanation:

- *content match* (the brand↔audience rule of the influencer-marketing origin project):
  +10 per banner category the user is into, +5 per targeted location that is the user's,
  +1 per shared tag, plus the banner's engagement rate; the category part is weighted by the
  user's current interest in that category (0..1);
- *recipe-derived relevance* (the e-shop banner thesis): ``|linked(b) ∩ TopN(u)| /
  |linked(b)|`` with the user's current recipe slate; the best linked item is carried along;
- *learned CTR*: a Thompson sample of the banner's Beta posterior in the user's segment.

The score is the sampled CTR lifted by relevance, ``ctr × (1 + content_weight × content +
recipe_weight × overlap) × 2 ** (priority / 10)``: multiplicative, so a banner nobody clicks
any more loses its traffic however well it matches (an additive content term kept a dead
banner at ~20% of its traffic in the closed-loop evaluation).

Eligibility: inside the active window, under the per-user daily frequency cap (counted
from impressions), and banners the user already clicked today are demoted.

>>> catalog = [
...     Banner("pasta-week", categories=("pasta",), linked_items=("r1", "r2")),
...     Banner("bbq", categories=("grill",)),
... ]
>>> ranking = rank_banners(
...     catalog,
...     UserContext(interests={"pasta": 1.0}, slate_items=("r1",), day=0),
...     CtrStats(),
...     BannerConfig(),
...     random.Random(1),
...     now_ms=0,
... )
>>> [(b.banner_id, b.content, b.recipe_overlap, b.via_item) for b in ranking]
[('pasta-week', 10.0, 0.5, 'r1'), ('bbq', 0.0, 0.0, None)]
"""

from __future__ import annotations

import functools
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from processors.profile import SESSION_SHARE


@dataclass(frozen=True, slots=True)
class Banner:
    banner_id: str
    advertiser: str = ""
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    linked_items: tuple[str, ...] = ()  # recipes/products the banner promotes
    active_from_ms: int | None = None
    active_to_ms: int | None = None
    daily_cap: int | None = None  # impressions per user per day; None: no cap
    priority: float = 0.0
    engagement_rate: float = 0.0
    win_back_only: bool = False  # shown only to users the loyalty model flags for win-back


@dataclass(frozen=True, slots=True)
class BannerConfig:
    category_points: float = 10.0
    location_points: float = 5.0
    tag_points: float = 1.0
    # Relevance lifts the sampled CTR: a full category match (10 points) multiplies it by 11.
    # Chosen in closed-loop simulation on seed 1 (docs/evaluation.md); seed 42 is reported.
    content_weight: float = 1.0
    recipe_weight: float = 1.0
    prior_clicks: float = 0.4  # Beta(alpha, beta) prior of every banner's CTR
    prior_impressions: float = 20.0  # prior mean = clicks / impressions
    # A (banner, segment) posterior starts from the banner's all-segment posterior mean with
    # this many pseudo-impressions (empirical-Bayes shrinkage): segments share what the
    # banner's overall CTR says until they have data of their own.
    segment_prior_strength: float = 50.0
    exploration_share: float = 0.1  # share of rankings that order by a pure posterior sample
    clicked_demotion: float = 0.5  # score multiplier once the user clicked the banner today
    size: int = 5


ALL_SEGMENTS = "*"


class CtrStats:
    """Impressions and clicks per (banner, segment) over a sliding window: the
    Beta-Bernoulli posterior of each banner's CTR, for sliding-window Thompson sampling.

    Only the last ``window_ms`` count (in ``buckets`` time buckets), so a banner that stops
    converting is judged on its recent impressions alone once the window has passed: with
    exponential forgetting (15 min half-life) old clicks lingered and a dead banner kept
    ~20% of its traffic for an hour (docs/evaluation.md). Keys are bounded (least recently
    updated dropped).

    >>> stats = CtrStats(window_ms=60_000, buckets=6)
    >>> for t in range(0, 60_000, 1_000):
    ...     stats.learn_one("b", "mobile-free", clicked=False, ts_ms=t)
    >>> stats.learn_one("b", "mobile-free", clicked=True, ts_ms=59_000)
    >>> stats.counts("b", "mobile-free", now_ms=59_999)
    (1.0, 60.0)
    >>> stats.counts("b", "mobile-free", now_ms=130_000)  # the window has passed
    (0.0, 0.0)
    """

    def __init__(
        self, window_ms: float = 45 * 60 * 1000, buckets: int = 9, max_keys: int = 100_000
    ) -> None:
        self.bucket_ms = max(1, int(window_ms // buckets))
        self.buckets = buckets
        self.max_keys = max_keys
        #: key -> {bucket index: [impressions, clicks]}
        # ordered by last update; an OrderedDict, whose first key is O(1) (see cooccurrence)
        self._windows: OrderedDict[str, dict[int, list[float]]] = OrderedDict()
        # Posteriors computed, per banner and (segment, bucket), until the banner learns: every
        # user of a batch reads the same ones (a quarter of the slice's time went here), and
        # a small live batch teaches only some of the banners (dropping every banner's on any
        # impression made 10-event batches spend 12% of their slice computing them again).
        self._posteriors: dict[str, dict[tuple[str, int], tuple[float, float]]] = {}
        self._posteriors_held = 0  # entries in all of them
        self._posteriors_config: BannerConfig | None = None
        # Each window's (clicks, impressions) at a bucket, until the window changes: a
        # banner's posteriors in every segment read its one all-segment window.
        self._window_counts: dict[str, tuple[int, float, float]] = {}

    @staticmethod
    def _key(banner_id: str, segment: str) -> str:
        return f"{banner_id}\x1f{segment}"

    def learn_one(self, banner_id: str, segment: str, clicked: bool, ts_ms: int) -> None:
        """One impression (``clicked`` False) or one click on a shown banner."""
        # a (banner, segment) posterior reads the banner's windows only (this one's and the
        # all-segment one): the banner's are dropped, the others' still hold
        held = self._posteriors.pop(banner_id, None)
        if held:
            self._posteriors_held -= len(held)
        bucket = ts_ms // self.bucket_ms
        windows = self._windows
        counted = self._window_counts
        for key in (self._key(banner_id, segment), self._key(banner_id, ALL_SEGMENTS)):
            counted.pop(key, None)
            window = windows.pop(key, None)  # re-inserted last: most recently updated
            if window is None:
                window = {}
                if len(windows) >= self.max_keys:
                    evicted = next(iter(windows))
                    del windows[evicted]
                    counted.pop(evicted, None)
                    self._drop_posteriors()  # another banner's window went
            windows[key] = window
            entry = window.get(bucket)
            if entry is None:
                entry = window[bucket] = [0.0, 0.0]
                if len(window) > self.buckets:
                    for old in [b for b in window if b <= bucket - self.buckets]:
                        del window[old]
            entry[1 if clicked else 0] += 1.0

    def _counts(self, key: str, now_ms: int) -> tuple[float, float]:
        window = self._windows.get(key)
        if not window:
            return 0.0, 0.0
        now_bucket = now_ms // self.bucket_ms
        held = self._window_counts.get(key)
        if held is not None and held[0] == now_bucket:
            return held[1], held[2]
        oldest = now_bucket - self.buckets
        impressions = clicks = 0.0
        for bucket, (shown, clicked) in window.items():
            if bucket > oldest:
                impressions += shown
                clicks += clicked
        impressions = max(impressions, clicks)
        self._window_counts[key] = (now_bucket, clicks, impressions)
        return clicks, impressions

    def counts(self, banner_id: str, segment: str, now_ms: int) -> tuple[float, float]:
        """(clicks, impressions) inside the window ending at ``now_ms``."""
        return self._counts(self._key(banner_id, segment), now_ms)

    def posterior(
        self, banner_id: str, segment: str, config: BannerConfig, now_ms: int
    ) -> tuple[float, float]:
        """Beta(alpha, beta) of the banner's CTR in ``segment``, shrunk to its overall CTR."""
        if self._posteriors_config is not config or self._posteriors_held > 100_000:
            self._drop_posteriors()
            self._posteriors_config = config
        held = self._posteriors.get(banner_id)
        if held is None:
            held = self._posteriors[banner_id] = {}
        key = (segment, now_ms // self.bucket_ms)
        cached = held.get(key)
        if cached is None:
            cached = held[key] = self._posterior(banner_id, segment, config, now_ms)
            self._posteriors_held += 1
        return cached

    def posteriors(
        self, banner_ids: Sequence[str], segments: Sequence[str], config: BannerConfig, now_ms: int
    ) -> npt.NDArray[np.float64]:
        """``posterior`` of every (segment, banner) pair, as an array (segments x banners x
        alpha and beta): what a batch's users are ranked with, read in one call."""
        if self._posteriors_config is not config or self._posteriors_held > 100_000:
            self._drop_posteriors()
            self._posteriors_config = config
        bucket = now_ms // self.bucket_ms
        keys = [(segment, bucket) for segment in segments]
        values: list[float] = []
        posteriors = self._posteriors
        for banner_id in banner_ids:  # banner by banner: its held posteriors looked up once
            held = posteriors.get(banner_id)
            if held is None:
                held = posteriors[banner_id] = {}
            overall = None  # the banner's all-segment estimate, once for its segments
            for key in keys:
                cached = held.get(key)
                if cached is None:
                    if overall is None:
                        overall = self._overall(banner_id, config, now_ms)
                    cached = self._posterior(banner_id, key[0], config, now_ms, overall)
                    held[key] = cached
                    self._posteriors_held += 1
                values += cached
        out = np.array(values, dtype=np.float64).reshape(len(banner_ids), len(segments), 2)
        return out.transpose(1, 0, 2)

    def _drop_posteriors(self) -> None:
        self._posteriors.clear()
        self._posteriors_held = 0

    def _posterior(
        self,
        banner_id: str,
        segment: str,
        config: BannerConfig,
        now_ms: int,
        overall: float | None = None,
    ) -> tuple[float, float]:
        """``overall``: the banner's all-segment CTR estimate (``_overall``), when known."""
        if overall is None:
            overall = self._overall(banner_id, config, now_ms)
        clicks, impressions = self._counts(self._key(banner_id, segment), now_ms)
        strength = config.segment_prior_strength
        alpha = strength * overall + clicks
        beta = strength * (1.0 - overall) + impressions - clicks
        return alpha, max(beta, 1e-9)

    def _overall(self, banner_id: str, config: BannerConfig, now_ms: int) -> float:
        clicks, impressions = self._counts(self._key(banner_id, ALL_SEGMENTS), now_ms)
        return (config.prior_clicks + clicks) / (config.prior_impressions + impressions)

    def size(self) -> int:
        return len(self._windows)


class UserContext(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What banner ranking knows of one user (the rules one user at a time, the evaluation;
    the slice hands a batch's users over as ``BannerUsers`` columns instead)."""

    interests: Mapping[str, float] = msgspec.field(default_factory=dict)  # category -> 0..1
    tags: frozenset[str] = frozenset()
    location: str | None = None
    segment: str = "all"
    slate_items: Sequence[str] = ()  # the user's current recipe slate, best first
    day: int = 0  # the day impressions_today / clicked_today count for
    impressions_today: Mapping[str, int] = msgspec.field(default_factory=dict)  # banner -> count
    clicked_today: frozenset[str] = frozenset()
    win_back: bool = False  # a returning user the loyalty model expects not to come back


class RankedBanner(msgspec.Struct, frozen=True, gc=False):
    """One ranked banner of a user's slate (a few per touched user and batch: a struct,
    ~10x cheaper to make than a frozen dataclass, and not tracked by the collector)."""

    banner_id: str
    score: float
    content: float
    recipe_overlap: float
    ctr_sample: float
    via_item: str | None  # the linked recipe/product that earned the overlap

    def reason(self) -> str:
        # one f-string, not parts joined: this runs for every banner of every slate
        if self.recipe_overlap > 0.0:
            return (
                f"content match {self.content:g}, {self.recipe_overlap:.0%} of its recipes in "
                f"your slate ({self.via_item}), CTR sample {self.ctr_sample:.3f}"
            )
        return f"content match {self.content:g}, CTR sample {self.ctr_sample:.3f}"


def eligible(banner: Banner, user: UserContext, now_ms: int) -> bool:
    """Active now, under the user's daily frequency cap for it, and for win-back banners
    only when the user is eligible for win-back."""
    if banner.win_back_only and not user.win_back:
        return False
    if banner.active_from_ms is not None and now_ms < banner.active_from_ms:
        return False
    if banner.active_to_ms is not None and now_ms >= banner.active_to_ms:
        return False
    cap = banner.daily_cap
    return cap is None or user.impressions_today.get(banner.banner_id, 0) < cap


def content_match(banner: Banner, user: UserContext, config: BannerConfig) -> float:
    """+10 per category (× the user's interest in it), +5 per location, +1 per shared tag,
    plus the banner's engagement rate.

    >>> user = UserContext(interests={"pasta": 0.5}, tags=frozenset({"quick"}), location="Lyon")
    >>> banner = Banner("b", categories=("pasta",), tags=("quick", "vegan"), locations=("Lyon",))
    >>> content_match(banner, user, BannerConfig())
    11.0
    """
    score = sum(config.category_points * user.interests.get(c, 0.0) for c in banner.categories)
    if user.location is not None and user.location in banner.locations:
        score += config.location_points
    score += config.tag_points * len(user.tags.intersection(banner.tags))
    return score + banner.engagement_rate


def relevance_lift(content: float, config: BannerConfig) -> float:
    """How much content match multiplies a banner's base CTR (1 without a match)."""
    return 1.0 + config.content_weight * content


def recipe_overlap(banner: Banner, slate_items: Sequence[str]) -> tuple[float, str | None]:
    """Share of the banner's linked items in the user's slate, and the best-ranked of them."""
    if not banner.linked_items:
        return 0.0, None
    linked = set(banner.linked_items)
    hits = [item for item in slate_items if item in linked]
    return len(set(hits)) / len(linked), (hits[0] if hits else None)


#: Users ranked per array pass: bounds the (users x banners) arrays to ~2M cells (16 MB each).
_MAX_CELLS = 2_000_000


def _index(names: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in names:
        out.setdefault(name, len(out))
    return out


class BannerTable:
    """The banners as arrays, one column per banner, sorted by id (so a stable sort breaks
    ties by id), for ranking a batch's users at once (``rank_banners_many``)."""

    def __init__(self, banners: Iterable[Banner]) -> None:
        self.banners = sorted(banners, key=lambda banner: banner.banner_id)
        self.ids = [banner.banner_id for banner in self.banners]
        self.column = {banner_id: j for j, banner_id in enumerate(self.ids)}
        n = len(self.banners)
        self.categories = _index(c for banner in self.banners for c in banner.categories)
        self.tags = _index(t for banner in self.banners for t in banner.tags)
        self.locations = _index(loc for banner in self.banners for loc in banner.locations)
        self.category_matrix = np.zeros((len(self.categories), n))
        self.tag_matrix = np.zeros((len(self.tags), n))
        self.location_matrix = np.zeros((len(self.locations), n))
        #: item -> the columns of the banners linking it
        self.linked_by_item: dict[str, list[int]] = {}
        for j, banner in enumerate(self.banners):
            for (
                category
            ) in banner.categories:  # a repeated category counts twice, as in content_match
                self.category_matrix[self.categories[category], j] += 1.0
            for tag in set(banner.tags):
                self.tag_matrix[self.tags[tag], j] = 1.0
            for location in set(banner.locations):
                self.location_matrix[self.locations[location], j] = 1.0
            for item in set(banner.linked_items):
                self.linked_by_item.setdefault(item, []).append(j)
        self.linked_count = np.array([len(set(b.linked_items)) or 1 for b in self.banners], float)
        self.engagement = np.array([b.engagement_rate for b in self.banners], float)
        self.priority_lift = np.array([2.0 ** (b.priority / 10.0) for b in self.banners], float)
        self.win_back_only = np.array([b.win_back_only for b in self.banners], bool)
        self.active_from = np.array(
            [-math.inf if b.active_from_ms is None else b.active_from_ms for b in self.banners],
            float,
        )
        self.active_to = np.array(
            [math.inf if b.active_to_ms is None else b.active_to_ms for b in self.banners], float
        )
        self.daily_cap = np.array(
            [math.inf if b.daily_cap is None else b.daily_cap for b in self.banners], float
        )

    def __len__(self) -> int:
        return len(self.ids)


def rank_banners(
    banners: Iterable[Banner],
    user: UserContext,
    ctr: CtrStats,
    config: BannerConfig,
    rng: random.Random | np.random.Generator,
    now_ms: int,
) -> list[RankedBanner]:
    """The user's top ``config.size`` eligible banners, best first (``rank_banners_many`` for
    one user; a ``random.Random`` seeds the sampler)."""
    generator = (
        rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng.getrandbits(64))
    )
    return rank_banners_many(BannerTable(banners), [user], ctr, config, generator, now_ms)[0]


@dataclass(slots=True)
class BannerUsers:
    """A batch's users as banner ranking reads them: one list per field, entry ``i`` the
    ``i``-th user's (what ``UserContext`` holds per user, gathered as columns by the caller in
    its one pass over the users, so that no object is made per user).

    The users' category interests are either given (``interests``: category -> 0..1, as
    ``UserContext.interests``) or blended here from their normalised session and long-term
    tops (``session_categories`` and ``categories``: ``profile.blended_interests``, as arrays
    over the batch, the same numbers)."""

    segments: list[str] = field(default_factory=list)
    locations: list[str | None] = field(default_factory=list)
    #: (tag, weight) pairs; only the tags count (a tag matches or not)
    tags: list[Sequence[tuple[str, float]]] = field(default_factory=list)
    impressions_today: list[Mapping[str, int]] = field(default_factory=list)
    clicked_today: list[Collection[str]] = field(default_factory=list)
    win_back: list[bool] = field(default_factory=list)
    #: the user's slates' item ids, slate by slate, best first (the recipe slate first)
    slate_items: list[Sequence[Sequence[str]]] = field(default_factory=list)
    interests: list[Sequence[tuple[str, float]]] | None = None
    session_categories: list[Sequence[tuple[str, float]]] = field(default_factory=list)
    categories: list[Sequence[tuple[str, float]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.segments)

    @classmethod
    def of(cls, users: Sequence[UserContext]) -> BannerUsers:
        """The columns of ``UserContext``s."""
        return cls(
            segments=[user.segment for user in users],
            locations=[user.location for user in users],
            tags=[[(tag, 1.0) for tag in user.tags] for user in users],
            impressions_today=[user.impressions_today for user in users],
            clicked_today=[user.clicked_today for user in users],
            win_back=[user.win_back for user in users],
            slate_items=[[user.slate_items] for user in users],
            interests=[list(user.interests.items()) for user in users],
        )


def rank_banners_many(
    table: BannerTable,
    users: Sequence[UserContext] | BannerUsers,
    ctr: CtrStats,
    config: BannerConfig,
    rng: np.random.Generator,
    now_ms: int,
) -> list[list[RankedBanner]]:
    """Each user's top ``config.size`` eligible banners, best first (ties by id): one
    Thompson sample per (user, banner) from the banner's posterior in the user's segment,
    times the relevance lift (``eligible``, ``content_match``, ``recipe_overlap`` and
    ``relevance_lift`` as array operations over the batch's users and the banners)."""
    columns = users if isinstance(users, BannerUsers) else BannerUsers.of(users)
    if not len(table):
        return [[] for _ in range(len(columns))]
    active = (table.active_from <= now_ms) & (now_ms < table.active_to)
    step = max(1, _MAX_CELLS // len(table))
    out: list[list[RankedBanner]] = []
    for start in range(0, len(columns), step):
        gathered = _gather(table, columns, start, min(start + step, len(columns)))
        out.extend(_rank_chunk(table, gathered, active, ctr, config, rng, now_ms))
    return out


class _Gathered(NamedTuple):
    """A chunk of users' banner inputs as (users x table rows or columns) arrays."""

    interests: npt.NDArray[np.float64]
    tags: npt.NDArray[np.float64]
    locations: npt.NDArray[np.float64]
    impressions: npt.NDArray[np.float64]
    clicked: npt.NDArray[np.bool_]
    win_back: npt.NDArray[np.bool_]
    hits: npt.NDArray[np.float64]
    via: list[dict[int, str]]
    segments: list[str]
    segment_of: npt.NDArray[np.intp]


def _cells(
    lists: Sequence[Iterable[tuple[str, float]]], code: Callable[[str], int | None]
) -> tuple[list[int], list[int], list[float]]:
    """The (row, column, value) cells of per-row (key, value) lists whose key has a column."""
    rows: list[int] = []
    columns: list[int] = []
    values: list[float] = []
    for i, pairs in enumerate(lists):
        for key, value in pairs:
            if (k := code(key)) is not None:
                rows.append(i)
                columns.append(k)
                values.append(value)
    return rows, columns, values


def _dense(
    shape: tuple[int, int], cells: tuple[list[int], list[int], list[float]]
) -> npt.NDArray[np.float64]:
    out = np.zeros(shape)
    out[cells[0], cells[1]] = cells[2]
    return out


def _blended(
    table: BannerTable,
    session: Sequence[Iterable[tuple[str, float]]],
    long_term: Sequence[Iterable[tuple[str, float]]],
) -> npt.NDArray[np.float64]:
    """``blended_interests`` of each row's session and long-term tops, over the table's
    categories: the same sums and quotients, elementwise (the peak is over every category
    of the user's, the table's or not)."""
    codes = dict(table.categories)  # the table's categories first, then the others seen
    code = functools.partial(_code_of, codes)
    session_cells = _cells(session, code)
    long_cells = _cells(long_term, code)
    shape = (len(session), len(codes))
    blended = SESSION_SHARE * _dense(shape, session_cells) + (1.0 - SESSION_SHARE) * _dense(
        shape, long_cells
    )
    peak = blended.max(axis=1, initial=0.0)[:, None]
    interests = blended[:, : len(table.categories)]
    out: npt.NDArray[np.float64] = np.zeros_like(interests)
    np.divide(interests, peak, out=out, where=peak > 0.0)
    return out


def _code_of(codes: dict[str, int], key: str) -> int:
    return codes.setdefault(key, len(codes))


def _gather(table: BannerTable, users: BannerUsers, start: int, stop: int) -> _Gathered:
    count, n = stop - start, len(table)
    part = slice(start, stop)
    if users.interests is not None:
        interests = _dense(
            (count, len(table.categories)), _cells(users.interests[part], table.categories.get)
        )
    else:
        interests = _blended(table, users.session_categories[part], users.categories[part])
    tags = np.zeros((count, len(table.tags)))
    tag_rows, tag_columns, _ = _cells(users.tags[part], table.tags.get)
    tags[tag_rows, tag_columns] = 1.0  # a tag matches or not, whatever its weight
    locations = np.zeros((count, len(table.locations)))
    location_row = table.locations.get
    for i, location in enumerate(users.locations[part]):
        if location is not None and (k := location_row(location)) is not None:
            locations[i, k] = 1.0
    column = table.column.get
    impressions = _dense(
        (count, n), _cells([shown.items() for shown in users.impressions_today[part]], column)
    )
    clicked = np.zeros((count, n), bool)
    for i, banner_ids in enumerate(users.clicked_today[part]):
        for banner_id in banner_ids:
            if (j := column(banner_id)) is not None:
                clicked[i, j] = True
    segments: dict[str, int] = {}
    segment_of = np.array(
        [segments.setdefault(segment, len(segments)) for segment in users.segments[part]],
        dtype=np.intp,
    )
    hits = np.zeros((count, n))
    via: list[dict[int, str]] = []
    linked_by_item = table.linked_by_item
    is_linked = linked_by_item.__contains__
    hit_rows: list[int] = []
    hit_columns: list[int] = []
    for i, slates in enumerate(users.slate_items[part]):
        best: dict[int, str] = {}  # banner column -> its best-ranked linked item in the slates
        if linked_by_item:
            # distinct, in slate order; the few linked ones picked out in C (a slate holds
            # ~20 items, a few of them linked to a banner)
            counted: set[str] = set()
            for ids in slates:
                for item in filter(is_linked, ids):
                    if item in counted:
                        continue
                    counted.add(item)
                    for j in linked_by_item[item]:
                        hit_rows.append(i)
                        hit_columns.append(j)
                        best.setdefault(j, item)
        via.append(best)
    np.add.at(hits, (hit_rows, hit_columns), 1.0)
    return _Gathered(
        interests,
        tags,
        locations,
        impressions,
        clicked,
        np.array(users.win_back[part], dtype=bool),
        hits,
        via,
        list(segments),
        segment_of,
    )


def _rank_chunk(
    table: BannerTable,
    users: _Gathered,
    active: npt.NDArray[np.bool_],
    ctr: CtrStats,
    config: BannerConfig,
    rng: np.random.Generator,
    now_ms: int,
) -> list[list[RankedBanner]]:
    count = len(users.via)
    interests, tags, locations = users.interests, users.tags, users.locations
    impressions, clicked, win_back = users.impressions, users.clicked, users.win_back
    hits, via, segment_of = users.hits, users.via, users.segment_of
    # (segments, banners, alpha and beta)
    posteriors = ctr.posteriors(table.ids, users.segments, config, now_ms)
    samples = rng.beta(posteriors[segment_of, :, 0], posteriors[segment_of, :, 1])
    explore = rng.random(count) < config.exploration_share
    content = (
        config.category_points * (interests @ table.category_matrix)
        + config.location_points * (locations @ table.location_matrix)
        + config.tag_points * (tags @ table.tag_matrix)
        + table.engagement
    )
    overlap = hits / table.linked_count
    lift = (1.0 + config.content_weight * content + config.recipe_weight * overlap) * (
        table.priority_lift
    )
    score = np.where(explore[:, None], samples, samples * lift)
    score = np.where(clicked, score * config.clicked_demotion, score)
    eligible = active & (~table.win_back_only | win_back[:, None]) & (impressions < table.daily_cap)
    order = np.argsort(np.where(eligible, -score, np.inf), axis=1, kind="stable")
    ranked: list[list[RankedBanner]] = []
    ids = table.ids
    # each user's first ``size`` columns and their values, as Python objects in one pass each
    top = order[:, : config.size]
    users_column = np.arange(count)[:, None]
    picked = [
        values[users_column, top].tolist()
        for values in (eligible, score, content, overlap, samples)
    ]
    for i, (columns, *values) in enumerate(zip(top.tolist(), *picked, strict=True)):
        user_via = via[i]
        row: list[RankedBanner] = []
        for j, ok, user_score, match, share, sample in zip(columns, *values, strict=True):
            if not ok:
                break
            row.append(RankedBanner(ids[j], user_score, match, share, sample, user_via.get(j)))
        ranked.append(row)
    return ranked
