"""Slates (ranked, explained recommendation lists) and the first scorer.

The first scorer is "popular now in your categories": the user's strongest categories
(decayed interest) each contribute their currently most popular items, excluding what the
user has already seen, with a trending fallback for users with no category signal yet.

>>> from processors.popularity import PopularityConfig, PopularityIndex
>>> from processors.user_state import UserState
>>> from processors.decay import DecayedCounter
>>> index = PopularityIndex(PopularityConfig())
>>> for item, category in [("r1", "pasta"), ("r2", "pasta"), ("r3", "soup")]:
...     index.observe(item, "recipe", category, t_ms=0, weight=1.0)
>>> user = UserState(user_id="u1", partition=0,
...                  interests=DecayedCounter(half_life_ms=1e9, max_keys=5))
>>> user.interests.add("pasta", 0)
>>> slate = popular_in_your_categories(user, index, SlateConfig(size=3), now_ms=5)
>>> [(item.id, item.reason) for item in slate.items]
[('r1', 'popular in pasta'), ('r2', 'popular in pasta'), ('r3', 'trending now')]
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from processors.popularity import PopularityIndex
from processors.user_state import UserState

SLATE_SCHEMA_VERSION = 1


class SlateItem(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    score: float
    reason: str
    category: str | None = None


class Slate(msgspec.Struct, frozen=True, kw_only=True):
    """What the ad server reads: ranked ids with scores and reasons, plus freshness data."""

    items: list[SlateItem]
    version: int
    generated_at: int
    model: str
    schema: int = SLATE_SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class SlateConfig:
    size: int = 20
    item_type: str = "recipe"
    top_categories: int = 3
    exclude_seen: bool = True


def popular_in_your_categories(
    user: UserState, popularity: PopularityIndex, config: SlateConfig, now_ms: int
) -> Slate:
    """Rank items popular now in the user's top categories, then trending items."""
    exclude = user.seen_items() if config.exclude_seen else set()
    scored: dict[str, SlateItem] = {}
    interests = user.interests.normalised_top(config.top_categories) if user.interests else []
    for category, interest in interests:
        peak = popularity.peak_in_category(config.item_type, category)
        if peak <= 0.0:
            continue
        for item_id, pop in popularity.top_in_category(
            config.item_type, category, config.size, exclude
        ):
            score = interest * pop / peak
            current = scored.get(item_id)
            if current is None or current.score < score:
                scored[item_id] = SlateItem(
                    item_id, round(score, 6), f"popular in {category}", category
                )
    ranked = sorted(scored.values(), key=lambda item: (-item.score, item.id))[: config.size]
    if len(ranked) < config.size:
        # Trending fill-in scores below every category match (at most 0.1 of the peak).
        peak = popularity.peak_overall(config.item_type)
        taken = exclude | {item.id for item in ranked}
        for item_id, pop in popularity.top_overall(
            config.item_type, config.size - len(ranked), taken
        ):
            ranked.append(SlateItem(item_id, round(0.1 * pop / peak, 6), "trending now"))
    return Slate(
        items=ranked, version=user.version, generated_at=now_ms, model="popular_in_category"
    )


_json = msgspec.json.Encoder()


def encode_slate(slate: Slate) -> bytes:
    return _json.encode(slate)


def decode_slate(data: bytes) -> Slate:
    return msgspec.json.decode(data, type=Slate)
