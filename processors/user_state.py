"""Per-user state: bounded recent history, decayed category interest, dedup window, version.

The state is what a worker keeps per user in memory and persists (coalesced per batch) to
a changelog so it moves with its partition. ``apply_event`` is the only way to change it.

>>> from processors.events import Click
>>> config = UserStateConfig()
>>> state = UserState(user_id="u1", partition=0)
>>> click = Click(event_id="e1", ts=1_000, user_id="u1", item_id="r1",
...               item_type="recipe", category="pasta")
>>> apply_event(state, click, config)
True
>>> apply_event(state, click, config)   # same event_id again: a duplicate, ignored
False
>>> state.version, [item.item_id for item in state.recent]
(1000000, ['r1'])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from processors.decay import DecayedCounter
from processors.events import Event, EventBase
from processors.loyalty import LoyaltyState

#: The version encodes (newest event time, events applied since it advanced); see
#: ``UserState.version``. Up to 999 late events per millisecond keep it strictly growing.
_VERSION_SLOTS = 1000

#: How much an event of each type says about a user's interest.
INTEREST_WEIGHTS = {"click": 1.0, "pageview": 0.5, "impression": 0.0}


@dataclass(frozen=True, slots=True)
class UserStateConfig:
    history_size: int = 50
    dedup_window_ms: int = 3600 * 1000
    dedup_max_ids: int = 256
    interest_half_life_ms: float = 7 * 24 * 3600 * 1000
    max_categories: int = 20
    max_tags: int = 30
    session_gap_ms: int = 30 * 60 * 1000
    # Within a session interest decays fast: what the visitor is into *now*.
    session_interest_half_life_ms: float = 10 * 60 * 1000
    # The event fields whose values make the user's segment (banner CTRs are learned per
    # banner x segment); absent values read "na".
    segment_fields: tuple[str, ...] = ("device", "plan")
    max_banners_tracked: int = 200  # per user and day, for frequency caps


DAY_MS = 86_400_000


class RecentItem(msgspec.Struct, array_like=True, frozen=True, gc=False):
    item_id: str
    item_type: str
    category: str | None
    ts: int


# gc=False here and on the structs a state holds (LoyaltyState, PendingLabel, DecayedCounter)
# and a batch makes per user (Profile, ResolvedExample): the cyclic collector neither tracks
# nor scans them. They hold no reference cycle (tests/unit/test_pipeline.py checks), so
# reference counting frees them; tracked, a batch of site-paced traffic left ~80,000 young
# objects for each gen-0 collection to scan (~100 ms each; docs/benchmarks.md).
class UserState(msgspec.Struct, kw_only=True, gc=False):
    """Everything the worker remembers about one user (bounded; see UserStateConfig)."""

    user_id: str
    partition: int
    recent: list[RecentItem] = msgspec.field(default_factory=list)
    # event id (or its hash: ``dedup_key``) -> event time, for the dedup window
    seen_event_ids: dict[str | int, int] = msgspec.field(default_factory=dict)
    interests: DecayedCounter | None = None
    max_ts: int = 0
    applied_since_max: int = 0
    events_applied: int = 0
    sessions: int = 0
    last_event_ts: int = 0
    last_seq: int | None = None
    # --- profile (sessionised) ---
    session_start_ts: int = 0
    session_events: int = 0
    session_interests: DecayedCounter | None = None  # categories of the current session
    session_tags: DecayedCounter | None = None  # tags of the current session
    tag_interests: DecayedCounter | None = None
    dwell_ms: int = 0
    segment: str | None = None
    location: str | None = None
    # --- banners: impressions and clicks of the current (UTC) day, for caps and demotion ---
    banner_day: int = -1
    banner_impressions: dict[str, int] = msgspec.field(default_factory=dict)
    banners_clicked: list[str] = msgspec.field(default_factory=list)
    # --- loyalty: sessions as the loyalty processor sees them, pending labels, scores ---
    loyalty: LoyaltyState | None = None
    # --- audiences: the decile each audience put the user in, and the write version ---
    audience_deciles: dict[str, int] = msgspec.field(default_factory=dict)
    audience_version: int = 0

    @property
    def version(self) -> int:
        """Monotonic, replay-stable version of everything derived from this state.

        Replaying the same events (deduplicated) yields the same version; a new event either
        advances ``max_ts`` or bumps the late-event counter, so the version only grows.
        """
        return self.max_ts * _VERSION_SLOTS + min(self.applied_since_max, _VERSION_SLOTS - 1)

    def seen_items(self) -> set[str]:
        return {item.item_id for item in self.recent}


#: Event ids longer than this are remembered by a 64-bit hash of them (9 bytes in the state
#: record): random UUIDs compress poorly, so with UUID event ids the simulator's users'
#: records averaged 810 bytes held as ids and 592 as hashes (521 with its short ids, which
#: are kept as they are). Two ids of one user with the same hash inside the window would
#: make the second a duplicate: ~1e-15 at the window's 256 ids.
HASHED_ID_LENGTH = 16


def dedup_key(event_id: str) -> str | int:
    """What the dedup window remembers of an event id: the id, or its stable 64-bit hash.

    >>> dedup_key("e1"), dedup_key("9f1c2a4e-6b1d-4c8e-9a57-0d6f3b2e8c11")
    ('e1', 16462345880826760475)
    """
    if len(event_id) <= HASHED_ID_LENGTH:
        return event_id
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


#: segment fields -> a function of an event giving their values (a tuple)
_SEGMENT_VALUES: dict[tuple[str, ...], Callable[[Event], tuple[object, ...]]] = {}
#: values -> their segment string: a few distinct ones (devices x plans), made once
_SEGMENTS: dict[tuple[object, ...], str] = {}
_MAX_SEGMENTS = 4096


def segment_of(event: Event, fields: tuple[str, ...]) -> str:
    """The event's values of ``fields`` joined by "-", "na" for absent ones (the banners'
    CTRs are learned per segment).

    >>> from processors.events import PageView
    >>> view = PageView(event_id="e", ts=0, user_id="u", device="mobile")
    >>> segment_of(view, ("device", "plan")), segment_of(view, ("plan",))
    ('mobile-na', 'na')
    """
    values_of = _SEGMENT_VALUES.get(fields)
    if values_of is None:
        known = set(EventBase.__struct_fields__)
        if fields and all(name in known for name in fields):  # C getters, one tuple
            getter = attrgetter(*fields)
            values_of = getter if len(fields) > 1 else (lambda event: (getter(event),))
        else:
            values_of = lambda event: tuple(getattr(event, name, None) for name in fields)  # noqa: E731
        _SEGMENT_VALUES[fields] = values_of
    values = values_of(event)
    try:
        segment = _SEGMENTS.get(values)
    except TypeError:  # a field that is a list (tags): not kept
        return "-".join(str(value or "na") for value in values)
    if segment is None:
        if len(_SEGMENTS) >= _MAX_SEGMENTS:  # bounded: values come from the events
            _SEGMENTS.clear()
        segment = _SEGMENTS[values] = "-".join(str(value or "na") for value in values)
    return segment


def dedup_slack(max_ids: int) -> int:
    """How many ids past ``max_ids`` the dedup window holds before it is pruned back to the
    newest ``max_ids`` within the window: a quarter more, so a user past the cap (a bot, a
    load test, a site sending one shared id for every anonymous visitor) pays one prune per
    ``max_ids // 4`` events instead of one per event (~30 µs each at 256 ids: ten times the
    rest of the event's state update).

    >>> dedup_slack(256), dedup_slack(1)
    (64, 1)
    """
    return max(1, max_ids // 4)


def _remember_event_id(state: UserState, event: Event, config: UserStateConfig) -> bool:
    """Record the event id; False if it was already seen within the dedup window (the newest
    ``dedup_max_ids`` ids of the last ``dedup_window_ms`` at least; up to ``dedup_slack``
    more between prunes)."""
    seen = state.seen_event_ids
    key = dedup_key(event.event_id)
    # (a long id as itself: a record written before long ids were hashed)
    if key in seen or (isinstance(key, int) and event.event_id in seen):
        return False
    seen[key] = event.ts
    limit = config.dedup_max_ids
    if len(seen) > limit + dedup_slack(limit):
        horizon = state.max_ts - config.dedup_window_ms
        kept = {k: t for k, t in seen.items() if t >= horizon}
        if len(kept) > limit:
            newest = sorted(kept.items(), key=lambda kv: kv[1])[-limit:]
            kept = dict(newest)
        state.seen_event_ids = kept
    return True


def apply_event(state: UserState, event: Event, config: UserStateConfig) -> bool:
    """Fold one valid event into ``state``. Returns False for a duplicate (state unchanged)."""
    if not _remember_event_id(state, event, config):
        return False
    if event.ts > state.max_ts:
        state.max_ts = event.ts
        state.applied_since_max = 0
    else:
        state.applied_since_max += 1
    state.events_applied += 1
    if state.events_applied == 1 or event.ts - state.last_event_ts > config.session_gap_ms:
        state.sessions += 1
        state.session_start_ts = event.ts
        state.session_events = 0
        state.session_interests = None
        state.session_tags = None
    state.session_events += 1
    state.last_event_ts = max(state.last_event_ts, event.ts)
    if event.seq is not None:
        state.last_seq = event.seq if state.last_seq is None else max(state.last_seq, event.seq)
    if event.dwell_ms is not None:
        state.dwell_ms += min(event.dwell_ms, config.session_gap_ms)
    if config.segment_fields:
        state.segment = segment_of(event, config.segment_fields)
    if event.country is not None:
        state.location = event.country

    item_type = event.item_type
    if item_type == "banner" and event.item_id is not None:
        _count_banner_event(state, event, config)
        return True
    if event.item_id is None or item_type is None or item_type == "page":
        return True
    state.recent.append(RecentItem(event.item_id, item_type, event.category, event.ts))
    if len(state.recent) > config.history_size:
        del state.recent[: len(state.recent) - config.history_size]
    weight = INTEREST_WEIGHTS[event.type]
    if event.category is not None and weight > 0.0:
        if state.interests is None:
            state.interests = DecayedCounter(
                half_life_ms=config.interest_half_life_ms, max_keys=config.max_categories
            )
        state.interests.add(event.category, event.ts, weight)
        if state.session_interests is None:
            state.session_interests = DecayedCounter(
                half_life_ms=config.session_interest_half_life_ms, max_keys=config.max_categories
            )
        state.session_interests.add(event.category, event.ts, weight)
    if event.tags and weight > 0.0:
        if state.tag_interests is None:
            state.tag_interests = DecayedCounter(
                half_life_ms=config.interest_half_life_ms, max_keys=config.max_tags
            )
        if state.session_tags is None:
            state.session_tags = DecayedCounter(
                half_life_ms=config.session_interest_half_life_ms, max_keys=config.max_tags
            )
        state.tag_interests.add_many(event.tags, event.ts, weight)
        state.session_tags.add_many(event.tags, event.ts, weight)
    return True


def _count_banner_event(state: UserState, event: Event, config: UserStateConfig) -> None:
    """Impressions and clicks of today's banners (a late event of an earlier day is ignored:
    caps are per day and that day is over)."""
    day = event.ts // DAY_MS
    if day < state.banner_day:
        return
    if day > state.banner_day:
        state.banner_day = day
        state.banner_impressions = {}
        state.banners_clicked = []
    banner_id = event.item_id
    assert banner_id is not None
    if event.type == "impression":
        counts = state.banner_impressions
        if banner_id in counts or len(counts) < config.max_banners_tracked:
            counts[banner_id] = counts.get(banner_id, 0) + 1
    elif (
        event.type == "click"
        and banner_id not in state.banners_clicked
        and len(state.banners_clicked) < config.max_banners_tracked
    ):
        state.banners_clicked.append(banner_id)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UserState)


def encode_user_state(state: UserState) -> bytes:
    """Compact msgpack encoding (the changelog stores it compressed: ``state.records``)."""
    return _encoder.encode(state)


def decode_user_state(data: bytes | memoryview) -> UserState:
    return _decoder.decode(data)
