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
>>> slate = popular_in_your_categories(user, index.snapshot(10), SlateConfig(size=3), now_ms=5)
>>> [(item.id, item.reason) for item in slate.items]
[('r1', 'popular in pasta'), ('r2', 'popular in pasta'), ('r3', 'trending now')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from processors.popularity import RankedSnapshot
from processors.user_state import UserState

SLATE_SCHEMA_VERSION = 1


#: Slate scores carry this many decimals (``round(score, SCORE_DECIMALS)``).
SCORE_DECIMALS = 6
_SCALE = 10.0**SCORE_DECIMALS


#: Up to this many scores ``round`` them one by one: the arrays' set-up (~13 µs) costs more
#: than ``round``'s ~0.4 µs a score below ~35 scores.
_ROUND_ONE_BY_ONE = 24


def round_scores(
    scores: Sequence[float] | np.ndarray, decimals: int = SCORE_DECIMALS
) -> list[float]:
    """``[round(score, decimals) for score in scores]`` exactly, ~20x faster on many scores
    (``decimals`` from 0 to 6).

    ``round`` with digits formats each float as a decimal (~0.4 us a score, ~50 scores a
    user). Here: ``rint(score * 10**decimals) / 10**decimals`` for all at once, which is the
    same double unless the product's rounding error could have crossed a half (it is under
    1.2e-7 for scores below 1e3) or the score is large or not finite; those few take ``round``.

    >>> round_scores([0.1234565, 2.5e-7, 3.0, 1234.5678901])
    [0.123456, 0.0, 3.0, 1234.56789]
    >>> round_scores([0.12344, 0.99996, 0.5], decimals=4)
    [0.1234, 1.0, 0.5]
    """
    if not 0 <= decimals <= SCORE_DECIMALS:
        raise ValueError(f"decimals must be 0..{SCORE_DECIMALS}, not {decimals}")
    if len(scores) <= _ROUND_ONE_BY_ONE:  # a small batch's few banners: no array set-up
        return [round(float(score), decimals) for score in scores]
    values = np.asarray(scores, dtype=np.float64)
    scale = _SCALE if decimals == SCORE_DECIMALS else 10.0**decimals
    with np.errstate(all="ignore"):  # inf and huge values: ``round`` below decides those
        scaled = values * scale
        nearest = np.rint(scaled)
        out: list[float] = (nearest / scale).tolist()
        unsure = ~(np.abs(values) < 1e3) | (np.abs(np.abs(scaled - nearest) - 0.5) < 1e-6)
    for at in np.flatnonzero(unsure).tolist():
        out[at] = round(float(values[at]), decimals)
    return out


class SlateItem(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    id: str
    score: float
    reason: str
    category: str | None = None
    via: str | None = None  # banners: the linked recipe/product of the slate that earned it
    remaining_today: int | None = None  # banners: impressions left under the daily cap


class Slate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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


def _take(ranked: list[tuple[str, float]], n: int, exclude: set[str]) -> list[tuple[str, float]]:
    out = []
    for item_id, score in ranked:
        if item_id not in exclude:
            out.append((item_id, score))
            if len(out) == n:
                break
    return out


PopularCandidate = tuple[str, float, str | None, str]  # item, score, category, reason


def popular_candidates(
    user: UserState,
    popularity: RankedSnapshot,
    item_type: str,
    size: int,
    top_categories: int,
    exclude: set[str],
    interests: list[tuple[str, float]] | None = None,
) -> list[PopularCandidate]:
    """Up to ``size`` items popular now in the user's top categories (score = the user's
    interest in the category times the item's share of its category's peak), best first (ties
    by id), then trending items below every category match (at most 0.1 of the trending peak).

    ``interests``: the user's ``normalised_top(top_categories)``, when the caller has it.
    """
    if interests is None:
        interests = user.interests.normalised_top(top_categories) if user.interests else []
    out: list[PopularCandidate] = []
    if size > 0:
        for category, interest in interests:
            ranked = popularity.in_category(item_type, category)
            if not ranked or ranked[0][1] <= 0.0:
                continue
            scale = interest / ranked[0][1]
            reason = f"popular in {category}"
            kept = [entry for entry in ranked if entry[0] not in exclude][:size]
            out += [(item_id, pop * scale, category, reason) for item_id, pop in kept]
        if len({candidate[0] for candidate in out}) < len(out):
            out = _best_per_item(out)  # an item popular in two categories: its best score
        out.sort(key=_candidate_id)  # best first, ties by id (sorts are stable)
        out.sort(key=_candidate_score, reverse=True)
        del out[size:]
    if len(out) < size:
        trending = popularity.overall(item_type)
        peak = trending[0][1] if trending else 1.0
        taken = exclude | {candidate[0] for candidate in out}
        for item_id, pop in _take(trending, size - len(out), taken):
            out.append((item_id, 0.1 * pop / peak, None, "trending now"))
    return out


def _candidate_id(candidate: PopularCandidate) -> str:
    return candidate[0]


def _candidate_score(candidate: PopularCandidate) -> float:
    return candidate[1]


def _best_per_item(candidates: list[PopularCandidate]) -> list[PopularCandidate]:
    """One candidate per item: its highest score, from the first category that gave it."""
    best: dict[str, PopularCandidate] = {}
    for candidate in candidates:
        held = best.get(candidate[0])
        if held is None or candidate[1] > held[1]:
            best[candidate[0]] = candidate
    return list(best.values())


def popular_in_your_categories(
    user: UserState, popularity: RankedSnapshot, config: SlateConfig, now_ms: int
) -> Slate:
    """Rank items popular now in the user's top categories, then trending items.

    ``popularity`` lists must reach deeper than ``size`` plus the user's history so that
    excluding seen items still leaves ``size`` candidates.
    """
    exclude = user.seen_items() if config.exclude_seen else set()
    candidates = popular_candidates(
        user, popularity, config.item_type, config.size, config.top_categories, exclude
    )
    return Slate(
        items=[
            SlateItem(item_id, round(score, 6), reason, category)
            for item_id, score, category, reason in candidates
        ],
        version=user.version,
        generated_at=now_ms,
        model="popular_in_category",
    )


class EncodedSlate(msgspec.Struct, frozen=True, gc=False):
    """A slate already encoded: the JSON ``encode_slate`` gives for its ``Slate``, byte for
    byte, with its items' ids. The slate tail writes its slates so (``slate_kernel.
    write_slates``), with no ``SlateItem`` per item; what reads the items (tests, evaluation)
    gets them decoded. (A Struct for its cheap construction: never encode one with msgspec,
    ``encode_slate`` gives its JSON.)

    >>> slate = Slate(items=[SlateItem("r1", 0.5, "trending now")], version=3,
    ...               generated_at=7, model="m")
    >>> encoded = EncodedSlate(encode_slate(slate), ["r1"], 3, 7, "m")
    >>> encoded == slate, encoded.items[0].reason, encode_slate(encoded) == encode_slate(slate)
    (True, 'trending now', True)
    """

    encoded: bytes
    ids: list[str]
    version: int
    generated_at: int
    model: str

    def decoded(self) -> Slate:
        return decode_slate(self.encoded)

    @property
    def items(self) -> list[SlateItem]:
        return self.decoded().items

    @property
    def schema(self) -> int:
        return self.decoded().schema

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedSlate):
            return self.encoded == other.encoded
        if isinstance(other, Slate):
            return self.decoded() == other
        return NotImplemented


#: What the slice hands out per slate field: a ``Slate``, or one written already encoded.
AnySlate = Slate | EncodedSlate


def as_slate(slate: AnySlate) -> Slate:
    """The slate as a ``Slate`` (an encoded one decoded)."""
    return slate.decoded() if isinstance(slate, EncodedSlate) else slate


def item_ids(slate: AnySlate) -> list[str]:
    """The slate's item ids, best first."""
    if isinstance(slate, EncodedSlate):
        return slate.ids
    return [item.id for item in slate.items]


_json = msgspec.json.Encoder()


def encode_slate(slate: AnySlate) -> bytes:
    if isinstance(slate, EncodedSlate):
        return slate.encoded
    return _json.encode(slate)


def decode_slate(data: bytes) -> Slate:
    return msgspec.json.decode(data, type=Slate)
