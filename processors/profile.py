"""The user's interest profile: what the ad server and the audience/loyalty models read.

Written to Redis as the ``profile`` field of the user hash (versioned like the slates).

>>> from processors.events import PageView
>>> from processors.user_state import UserState, UserStateConfig, apply_event
>>> state = UserState(user_id="u1", partition=0)
>>> for i, (category, tags) in enumerate([("pasta", ["quick"]), ("soup", ["vegan"])]):
...     _ = apply_event(state, PageView(event_id=f"e{i}", ts=1_000 * i, user_id="u1",
...         item_id=f"r{i}", item_type="recipe", category=category, tags=tags,
...         device="mobile", plan="free", dwell_ms=30_000), UserStateConfig())
>>> profile = profile_of(state)
>>> profile.session_categories[0][0], profile.segment, profile.sessions, profile.dwell_ms
('soup', 'mobile-free', 1, 60000)
>>> sorted(current_interests(state))
['pasta', 'soup']
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import NamedTuple

import msgspec

from processors.decay import DecayedCounter
from processors.loyalty import win_back as is_win_back
from processors.slates import round_scores
from processors.user_state import UserState

#: Weight of the current session in the interest the banners are matched against.
SESSION_SHARE = 0.7


# gc=False: not scanned by the cyclic collector, as UserState (processors/user_state.py)
class Profile(msgspec.Struct, frozen=True, gc=False):
    """The ``profile`` field of the user hash."""

    top_categories: list[tuple[str, float]]  # long-term (days), strongest = 1.0
    session_categories: list[tuple[str, float]]  # the current session (minutes)
    top_tags: list[tuple[str, float]]
    session_tags: list[tuple[str, float]]
    segment: str | None
    location: str | None
    sessions: int
    session_started: int
    session_events: int
    events: int
    dwell_ms: int
    last_seen: int
    version: int
    # Loyalty model (processors/loyalty.py): probability of another session within the
    # horizon (7 days), of reaching 3 sessions within 30 days (1.0 once reached), and the
    # win-back flag (a returning user now unlikely to return) banners can target.
    return_probability: float | None = None
    loyalty: float | None = None
    loyal: bool = False
    win_back: bool = False


#: How many categories and tags a profile lists (and the banners match against).
PROFILE_TOP = 5

Weights = list[tuple[str, float]]

_weight = itemgetter(1)


class InterestTops(NamedTuple):
    """A user's strongest categories and tags, each list normalised (the first 1.0):
    long-term and current session, unrounded. Computed once per user per batch, for the
    profile and the banners' user context."""

    categories: Weights
    session_categories: Weights
    tags: Weights
    session_tags: Weights


def _normalised(counter: DecayedCounter | None, top: int) -> Weights:
    """``counter.normalised_top(top)`` ([] for no counter), its sort inlined (four per user
    and batch: the calls cost more than the sorts of a few keys)."""
    if counter is None or not counter.scores:
        return []
    best = sorted(counter.scores.items(), key=_weight, reverse=True)[:top]
    if not best:  # top 0
        return []
    peak = best[0][1]
    return [(key, weight / peak) for key, weight in best]


def interest_tops(state: UserState, top: int = PROFILE_TOP) -> InterestTops:
    return InterestTops(
        _normalised(state.interests, top),
        _normalised(state.session_interests, top),
        _normalised(state.tag_interests, top),
        _normalised(state.session_tags, top),
    )


def _rounded(pairs: Weights) -> Weights:
    return [(key, round(weight, 4)) for key, weight in pairs]


def profile_of(
    state: UserState, top: int = PROFILE_TOP, win_back_threshold: float = 0.3
) -> Profile:
    tops = InterestTops(*map(_rounded, interest_tops(state, top)))
    return _profile(state, tops, win_back_threshold)


def profiles_of(
    states: Sequence[UserState],
    tops: Sequence[InterestTops] | None = None,
    win_back_threshold: float = 0.3,
) -> list[Profile]:
    """``[profile_of(state, win_back_threshold=...) for state in states]``, the same profiles,
    with every weight of them rounded at once (``round`` with digits costs ~0.4 us a call,
    ~20 a user). ``tops``: the states' ``interest_tops``, when the caller has them.

    >>> from processors.events import Click
    >>> from processors.user_state import UserStateConfig, apply_event
    >>> states = [UserState(user_id=f"u{i}", partition=0) for i in range(2)]
    >>> for i, state in enumerate(states):
    ...     _ = apply_event(state, Click(event_id="e", ts=1_000, user_id=state.user_id,
    ...         item_id="r1", item_type="recipe", category="pasta", tags=["quick"]),
    ...         UserStateConfig())
    >>> profiles_of(states) == [profile_of(state) for state in states]
    True
    """
    if tops is None:
        tops = [interest_tops(state) for state in states]
    rounded = iter(
        round_scores(
            [weight for lists in tops for pairs in lists for _, weight in pairs], decimals=4
        )
    )
    return [
        _profile(
            state,
            InterestTops(*[[(key, next(rounded)) for key, _ in pairs] for pairs in lists]),
            win_back_threshold,
        )
        for state, lists in zip(states, tops, strict=True)
    ]


def _profile(state: UserState, rounded: InterestTops, win_back_threshold: float) -> Profile:
    loyalty = state.loyalty
    return Profile(
        top_categories=rounded.categories,
        session_categories=rounded.session_categories,
        top_tags=rounded.tags,
        session_tags=rounded.session_tags,
        segment=state.segment,
        location=state.location,
        sessions=state.sessions,
        session_started=state.session_start_ts,
        session_events=state.session_events,
        events=state.events_applied,
        dwell_ms=state.dwell_ms,
        last_seen=state.last_event_ts,
        version=state.version,
        return_probability=loyalty.return_probability if loyalty else None,
        loyalty=loyalty.loyalty if loyalty else None,
        loyal=loyalty.loyal if loyalty else False,
        win_back=is_win_back(loyalty, win_back_threshold) if loyalty else False,
    )


def current_interests(state: UserState, top: int = PROFILE_TOP) -> dict[str, float]:
    """Category -> 0..1: the current session's interest (weight 0.7) blended with the
    long-term one (0.3), so a new session's category leads at once."""
    return blended_interests(
        _normalised(state.session_interests, top), _normalised(state.interests, top)
    )


def blended_interests(session: Weights, long_term: Weights) -> dict[str, float]:
    """``current_interests`` from the user's normalised tops (``InterestTops``)."""
    blended: dict[str, float] = {}
    for pairs, share in ((session, SESSION_SHARE), (long_term, 1.0 - SESSION_SHARE)):
        for category, weight in pairs:
            blended[category] = blended.get(category, 0.0) + share * weight
    peak = max(blended.values(), default=0.0)
    return {c: w / peak for c, w in blended.items()} if peak > 0.0 else {}
