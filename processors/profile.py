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

import msgspec

from processors.loyalty import win_back as is_win_back
from processors.user_state import UserState

#: Weight of the current session in the interest the banners are matched against.
SESSION_SHARE = 0.7


class Profile(msgspec.Struct, frozen=True):
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


def _rounded(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(key, round(weight, 4)) for key, weight in pairs]


def profile_of(state: UserState, top: int = 5, win_back_threshold: float = 0.3) -> Profile:
    loyalty = state.loyalty
    return Profile(
        top_categories=_rounded(state.interests.normalised_top(top) if state.interests else []),
        session_categories=_rounded(
            state.session_interests.normalised_top(top) if state.session_interests else []
        ),
        top_tags=_rounded(state.tag_interests.normalised_top(top) if state.tag_interests else []),
        session_tags=_rounded(state.session_tags.normalised_top(top) if state.session_tags else []),
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


def current_interests(state: UserState, top: int = 5) -> dict[str, float]:
    """Category -> 0..1: the current session's interest (weight 0.7) blended with the
    long-term one (0.3), so a new session's category leads at once."""
    blended: dict[str, float] = {}
    parts = (
        (state.session_interests, SESSION_SHARE),
        (state.interests, 1.0 - SESSION_SHARE),
    )
    for counter, share in parts:
        if counter is None:
            continue
        for category, weight in counter.normalised_top(top):
            blended[category] = blended.get(category, 0.0) + share * weight
    peak = max(blended.values(), default=0.0)
    return {c: w / peak for c, w in blended.items()} if peak > 0.0 else {}
