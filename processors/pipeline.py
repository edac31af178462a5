"""The processing slice as one pure, batch-at-a-time step.

``SliceProcessor.process_batch`` folds a batch of decoded events into per-user state, the
popularity index and the next-click co-occurrence model, then builds the slates of every
touched user once (coalesced: a user with 30 events in the batch gets one recipe slate, plus
a product slate once they have viewed products). The worker and the in-process oracle share it.

>>> from processors.events import Click
>>> processor = SliceProcessor(SliceConfig())
>>> clicks = [("u1", "r1"), ("u1", "r3"), ("u0", "r1"), ("u2", "r5")]
>>> events = [Click(event_id=f"e{i}", ts=1_000 + i, user_id=user, item_id=item,
...                 item_type="recipe", category="pasta") for i, (user, item) in enumerate(clicks)]
>>> result = processor.process_batch([(0, e) for e in events], {}, now_ms=2_000)
>>> sorted(result.touched), result.duplicates
(['u0', 'u1', 'u2'], 0)
>>> [(item.id, item.reason) for item in result.slates["u0"]["recipes"].items]
[('r3', 'because you viewed r1 (1 time together)'), ('r5', 'popular in pasta')]
"""

from __future__ import annotations

import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from processors import row_kernel, slate_kernel
from processors.banners import (
    BannerConfig,
    BannerTable,
    BannerUsers,
    CtrStats,
    RankedBanner,
    rank_banners_many,
)
from processors.catalog import Catalog, CatalogItem, CatalogRecord
from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from processors.events import Event
from processors.loyalty import (
    ExpiryQueue,
    LoyaltyConfig,
    LoyaltyModels,
    LoyaltyState,
    ResolvedExample,
    observe_event,
    score,
    supersedes,
    win_back,
)
from processors.popularity import PopularityConfig, PopularityIndex
from processors.profile import (
    PROFILE_TOP,
    InterestTops,
    Profile,
    interest_tops,
    profiles_of,
)
from processors.recommend import (
    SLATE_FIELDS,
    AssemblyConfig,
    ItemCatalog,
    PopularLists,
    assemble_slates_many,
    current_session,
    visitor_id,
)
from processors.slates import AnySlate, Slate, SlateItem, item_ids, round_scores
from processors.user_state import DAY_MS, UserState, UserStateConfig, apply_event

#: How much each event type counts toward an item's popularity.
POPULARITY_WEIGHTS = {"click": 1.0, "pageview": 0.5, "impression": 0.0}


@dataclass(frozen=True, slots=True)
class SliceConfig:
    user: UserStateConfig = field(default_factory=UserStateConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    cooccurrence: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    banners: BannerConfig = field(default_factory=BannerConfig)
    loyalty: LoyaltyConfig = field(default_factory=LoyaltyConfig)
    ctr_window_ms: float = 45 * 60 * 1000  # sliding window of banner CTR evidence
    max_ctr_keys: int = 100_000  # banner x segment posteriors kept
    max_catalog_items: int = 200_000
    # Users whose loyalty labels expire per batch, the earliest due first (the rest wait for
    # the next batches): after downtime the watermark jumps by hours and every label due
    # meanwhile expires at once, each user decoded, resolved and persisted by one batch.
    max_expiring_users: int = 5_000


#: The steps of ``SliceProcessor.process_batch`` whose time it reports when given a clock:
#: applying the events (the user states, loyalty's observation, popularity, the next-click
#: model's learning queued), the next-click model's queued learning (its tables), scoring
#: loyalty once per user, expiring pending labels, the users' interest tops (with the
#: batch's popularity snapshot), their profiles, the recipe and product slates (with the
#: vote lists they rebuild), the banners' user contexts, and ranking the banners and writing
#: their slates.
SLICE_PHASES = (
    "apply", "learn", "loyalty", "expiry", "tops", "profiles", "slates", "banner_contexts",
    "banners",
)  # fmt: skip


class _PhaseLaps:
    """Charges the time of ``clock`` since the last lap to a phase (``SLICE_PHASES``)."""

    __slots__ = ("_clock", "_last", "spent")

    def __init__(self, clock: Callable[[], float], spent: dict[str, float]) -> None:
        self._clock, self.spent = clock, spent
        spent.update(dict.fromkeys(SLICE_PHASES, 0.0))
        self._last = clock()

    def __call__(self, phase: str) -> None:
        now = self._clock()
        self.spent[phase] += now - self._last
        self._last = now


def _no_lap(phase: str) -> None:
    pass


@dataclass(slots=True)
class BatchResult:
    touched: dict[str, UserState] = field(default_factory=dict)
    #: Seconds of the caller's clock spent in each of ``SLICE_PHASES`` (empty without one).
    phase_seconds: dict[str, float] = field(default_factory=dict)
    #: user_id -> Redis field ("recipes", "products") -> slate
    slates: dict[str, dict[str, AnySlate]] = field(default_factory=dict)
    #: user_id -> the ``profile`` field, for every touched user
    profiles: dict[str, Profile] = field(default_factory=dict)
    applied_by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    #: Per-user sequence gaps seen in this batch (events carrying ``seq``).
    seq_gaps: int = 0
    #: Loyalty labels this batch resolved (by the users' events or by the watermark).
    resolved: list[ResolvedExample] = field(default_factory=list)
    #: Users whose state changed only because a pending label expired: persist, no slates.
    expired: dict[str, UserState] = field(default_factory=dict)


class StateLookup(Protocol):
    def get(self, user_id: str, /) -> UserState | None: ...


class SliceProcessor:
    """Pure and synchronous: no I/O. State lives in the mapping the caller passes in."""

    def __init__(self, config: SliceConfig) -> None:
        self.config = config
        self.popularity = PopularityIndex(config.popularity)
        self.cooccurrence = CooccurrenceModel(config.cooccurrence)
        self.items = ItemCatalog(config.max_catalog_items)  # what events said about items
        self.popular_lists = PopularLists(self.cooccurrence)  # arrays, from batch to batch
        self.catalog = Catalog(max_items=config.max_catalog_items)  # the catalog topic
        self.ctr = CtrStats(config.ctr_window_ms, max_keys=config.max_ctr_keys)
        # Scores with the latest model snapshot; learning happens in the learner (stream/).
        self.loyalty = LoyaltyModels(config.loyalty)
        self.expiry = ExpiryQueue()
        self.watermark = 0  # the latest event time seen: horizons pass by event time
        self._banner_table: tuple[int, BannerTable] | None = None  # (catalog revision, table)

    def forget_user(self, user_id: str) -> int:
        """Erase what this processor holds about one user outside their UserState (which the
        caller deletes): the next-click model's memory of them as a visitor (by user, or each
        of their sessions ``user#n``) and their loyalty deadline. Returns visitors erased."""
        session_prefix = f"{user_id}#"
        self.expiry.forget(user_id)
        return self.cooccurrence.forget_visitors(
            lambda visitor: visitor == user_id or visitor.startswith(session_prefix)
        )

    def apply_catalog(self, record: CatalogRecord | None, key: str | None = None) -> None:
        """One catalog record (``None`` with its ``key``: a tombstone)."""
        if record is None:
            if key is not None:
                self.catalog.delete(key)
            return
        self.catalog.apply(record)
        if isinstance(record, CatalogItem):
            self.items.remember(record.id, record.item_type, record.category)

    def process_batch(
        self,
        events: Iterable[tuple[int, Event]],
        states: StateLookup,
        now_ms: int,
        clock: Callable[[], float] | None = None,
    ) -> BatchResult:
        """Apply ``(partition, event)`` pairs in order; one slate per touched user.

        ``states`` is only read; the caller persists ``result.touched`` (coalesced).
        ``clock``: where the batch's time goes, by ``SLICE_PHASES``, is measured with it
        (``result.phase_seconds``; the worker passes its thread's CPU clock).
        """
        result = BatchResult()
        lap = _no_lap if clock is None else _PhaseLaps(clock, result.phase_seconds)
        config = self.config
        unscored: dict[str, tuple[int, bool]] = {}  # user -> (ts, late) of its unscored event
        for partition, event in events:
            # One string object per user for everything held past the batch (the state
            # store's keys, the next-click model's visitors, the loyalty queue), not a copy
            # per structure: ~50 bytes per copy and user, more for long ids.
            user_id = sys.intern(event.user_id)
            state = result.touched.get(user_id) or states.get(user_id)
            if state is None:
                state = UserState(user_id=user_id, partition=partition)
            else:
                state.user_id = user_id
            previous_seq = state.last_seq
            weight = POPULARITY_WEIGHTS[event.type]
            item_id, item_type = event.item_id, event.item_type
            # what the next-click model learns the event after: the session's last ``steps``
            # items (all it pairs the click with), for the events it learns from only
            session_before: list[str] = []
            gap = config.assembly.session_gap_ms
            if (
                item_id is not None
                and item_type in SLATE_FIELDS
                and weight > 0.0
                and state.recent
                and event.ts - state.recent[-1].ts <= gap
            ):
                session_before = current_session(state.recent, gap, config.cooccurrence.steps)
            if not apply_event(state, event, config.user):
                result.duplicates += 1
                continue
            if event.seq is not None and previous_seq is not None and event.seq > previous_seq + 1:
                result.seq_gaps += 1
            result.touched[user_id] = state
            result.applied_by_type[event.type] += 1
            self._observe_loyalty(user_id, state, event, result, unscored)
            if item_type == "banner" and item_id is not None and event.type != "pageview":
                segment = state.segment or "na"
                self.ctr.learn_one(item_id, segment, event.type == "click", event.ts)
                continue
            if item_id is None or item_type is None or weight == 0.0:
                continue
            self.popularity.observe(item_id, item_type, event.category, event.ts, weight)
            if item_type in SLATE_FIELDS:
                self.items.remember(item_id, item_type, event.category)
                self.cooccurrence.learn_one(
                    session_before,
                    item_id,
                    event.ts,
                    session_id=visitor_id(state, config.assembly.neighbour_scope),
                )
        lap("apply")
        # the next-click model's queued learning now, not at the slates' first read of the
        # model (nothing reads it in between): its own phase, ~4-6 µs per learned event
        self.cooccurrence.learn_pending()
        lap("learn")
        for user_id, (ts, late) in unscored.items():
            loyalty = result.touched[user_id].loyalty
            if loyalty is not None:  # always: observed in this batch
                score(loyalty, ts, late, config.loyalty, self.loyalty)
                self.expiry.schedule(user_id, loyalty)
        lap("loyalty")
        self.expire_labels(states, result)
        lap("expiry")
        ranked = self.popularity.snapshot(2 * config.assembly.size + config.user.history_size)
        banner_users = BannerUsers()  # the touched users as banner ranking reads them
        banner_states: list[UserState] = []
        day = now_ms // DAY_MS
        requests = []
        for state in result.touched.values():
            types = {"recipe"} | {item.item_type for item in state.recent}
            requests.append((state, [t for t in SLATE_FIELDS if t in types]))
        # each user's categories and tags, ranked once for the slates, the profile and the
        # banners (the slates' top categories are the profile's first ones, ties included)
        tops = [interest_tops(state) for state, _ in requests]
        lap("tops")
        # the profiles now, while the states and their tops are in the caches (after the
        # slates' arrays they are not)
        profiles = profiles_of(
            [state for state, _ in requests], tops, config.loyalty.win_back_threshold
        )
        lap("profiles")
        top = config.assembly.top_categories
        built = assemble_slates_many(
            requests,
            self.cooccurrence,
            ranked,
            self.items,
            config.assembly,
            now_ms,
            self.popular_lists,
            [user_tops.categories[:top] for user_tops in tops] if top <= PROFILE_TOP else None,
        )
        lap("slates")
        ranks_banners = bool(self.catalog.banners)
        for (state, _), by_type, user_tops in zip(requests, built, tops, strict=True):
            slates = result.slates[state.user_id] = {
                SLATE_FIELDS[slate_type]: slate for slate_type, slate in by_type.items()
            }
            if ranks_banners:
                self._add_banner_user(banner_users, state, slates, day, user_tops)
                banner_states.append(state)
        lap("banner_contexts")
        result.profiles = {
            state.user_id: profile for (state, _), profile in zip(requests, profiles, strict=True)
        }
        if banner_states:
            rankings = self.rank_banners(banner_states, banner_users, now_ms)
            # every banner's score rounded at once (``round`` per score costs more)
            scores = iter(round_scores([entry.score for ranked in rankings for entry in ranked]))
            for state, impressions, banners in zip(
                banner_states, banner_users.impressions_today, rankings, strict=True
            ):
                result.slates[state.user_id]["banners"] = self._banner_slate(
                    state, impressions, banners, now_ms, scores
                )
        lap("banners")
        return result

    def _observe_loyalty(
        self,
        user_id: str,
        state: UserState,
        event: Event,
        result: BatchResult,
        unscored: dict[str, tuple[int, bool]],
    ) -> None:
        """Fold the event into the user's loyalty state; the scoring (two predictions per
        target) runs once per user per batch, for the user's last event, unless a later event
        of the batch needs the earlier one's scores first (a new session, a late event)."""
        loyalty = state.loyalty
        if loyalty is None:
            loyalty = state.loyalty = LoyaltyState()
        config = self.config.loyalty
        previous = unscored.pop(user_id, None)
        if previous is not None and not supersedes(loyalty, event.ts, config):
            score(loyalty, previous[0], previous[1], config, self.loyalty)
        late = loyalty.first_ts >= 0 and event.ts < loyalty.last_ts
        result.resolved += observe_event(loyalty, event, config, self.loyalty)
        unscored[user_id] = (event.ts, late)
        self.watermark = max(self.watermark, event.ts)

    def expire_labels(self, states: StateLookup, result: BatchResult) -> None:
        """Resolve (negative) the pending labels whose horizon the watermark has passed."""

        def lookup(user_id: str) -> LoyaltyState | None:
            state = result.touched.get(user_id) or states.get(user_id)
            if state is None:
                return None
            if user_id not in result.touched:
                result.expired[user_id] = state
            return state.loyalty

        for _, example in self.expiry.expire_due(
            self.watermark, lookup, self.config.loyalty, self.config.max_expiring_users
        ):
            result.resolved.append(example)

    def schedule_pending(self, states: Iterable[tuple[str, UserState]]) -> None:
        """Queue every user with pending labels (after a recovery, the queue starts empty)."""
        for user_id, state in states:
            if state.loyalty is not None and state.loyalty.pending:
                self.expiry.schedule(user_id, state.loyalty)

    def _add_banner_user(
        self,
        users: BannerUsers,
        state: UserState,
        slates: dict[str, AnySlate],
        day: int,
        tops: InterestTops,
    ) -> None:
        """Add the user to the batch's ``BannerUsers`` (what ``UserContext`` says of them:
        their current interest blended from the session's and the long-term tops, their
        strongest tags, today's impressions and clicks, their slates' items)."""
        today = state.banner_day == day
        users.session_categories.append(tops.session_categories)
        users.categories.append(tops.categories)
        users.tags.append(tops.tags)
        users.locations.append(state.location)
        users.segments.append(state.segment or "na")
        users.slate_items.append([item_ids(slate) for slate in slates.values()])
        users.impressions_today.append(state.banner_impressions if today else {})
        users.clicked_today.append(state.banners_clicked if today else ())
        loyalty = state.loyalty
        users.win_back.append(
            loyalty is not None and win_back(loyalty, self.config.loyalty.win_back_threshold)
        )

    def rank_banners(
        self, states: list[UserState], users: BannerUsers, now_ms: int
    ) -> list[list[RankedBanner]]:
        """Rank the banners for a batch's users (``states``, as ``users``) at once.
        Reproducible: the Thompson samples are seeded by the users and their states' versions,
        so a replayed batch yields the same slates."""
        if self._banner_table is None or self._banner_table[0] != self.catalog.banner_revision:
            table = BannerTable(self.catalog.banners.values())
            self._banner_table = (self.catalog.banner_revision, table)
        seed = zlib.crc32("\n".join(f"{s.user_id}:{s.version}" for s in states).encode())
        return rank_banners_many(
            self._banner_table[1],
            users,
            self.ctr,
            self.config.banners,
            np.random.default_rng(seed),
            now_ms,
        )

    def _banner_slate(
        self,
        state: UserState,
        impressions: Mapping[str, int],
        ranked: list[RankedBanner],
        now_ms: int,
        rounded: Iterator[float],
    ) -> Slate:
        """The user's banners, best first, each with its explanation and today's remaining cap
        (``impressions``: the user's impressions today; ``rounded``: the banners' rounded
        scores, in order, taken from a batch-wide list)."""
        banners = self.catalog.banners
        items = []
        for entry in ranked:
            cap = banners[entry.banner_id].daily_cap
            items.append(
                SlateItem(
                    entry.banner_id,
                    next(rounded),
                    entry.reason(),
                    via=entry.via_item,
                    remaining_today=None
                    if cap is None
                    else cap - impressions.get(entry.banner_id, 0),
                )
            )
        return Slate(items=items, version=state.version, generated_at=now_ms, model="banners")


def compile_kernels() -> int:
    """Compile (or load from numba's on-disk cache) the slice's kernels (``slate_kernel``,
    ``row_kernel``) by running the slice over a few sessions, so that a worker's first
    batch does not wait for them: ~40 s on first use after a change, ~2 s from the
    cache. ``make`` runs it whenever a kernel module changed; the worker at start.
    Returns how many kernels had to be compiled (not found in the cache)."""
    from processors.events import Click

    processor = SliceProcessor(SliceConfig())
    sessions = [("a", ["r1", "r2", "r3", "p1"]), ("b", ["r2", "r3", "r4"]), ("c", ["r1", "r3"])]
    events = [
        Click(
            event_id=f"warm-{user}-{at}",
            ts=1_000 + 1_000 * at,
            user_id=user,
            item_id=item,
            item_type="product" if item.startswith("p") else "recipe",
            category="pasta" if at % 2 else "soup",
        )
        for user, items in sessions
        for at, item in enumerate(items)
    ]
    states = processor.process_batch([(0, e) for e in events[:6]], {}, now_ms=20_000).touched
    processor.process_batch([(0, e) for e in events[6:]], states, now_ms=20_000)
    return sum(
        sum(kernel.stats.cache_misses.values())
        for module in (slate_kernel, row_kernel)
        for kernel in vars(module).values()
        if hasattr(kernel, "stats")
    )
