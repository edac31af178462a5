"""Closed-loop banner evaluation in simulation, where the true CTRs are known.

The traffic model decides *when* a banner can be shown (its page flow and banner slots);
the policy under test decides *which* banners fill the slots, and the known click
probabilities (``true_banner_ctr``) decide the clicks. Every policy sees the same seeded
page flow. Policies:

- ``live``: the worker's own code — the ``SliceProcessor`` learns from every event
  (including the impressions and clicks it caused) and the user's latest ``banners`` slate
  fills the slots, top first;
- ``random``: uniformly random eligible banners (active, under the user's daily cap);
- ``popular``: the eligible banners with the most clicks so far (global popularity);
- ``oracle`` (not run, computed at every slot): the eligible banners with the highest true
  CTR for this user — regret is the oracle's expected clicks minus the policy's.

A *dead banner* (the best banner on average) can have its true CTR set to 0 mid-run; its
share of impressions is tracked in 10-minute buckets to see how fast a policy drops it.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from processors.catalog import CatalogBanner
from processors.events import Click, Event, Impression
from processors.pipeline import SliceConfig, SliceProcessor
from processors.simulator import (
    POSITION_BIAS,
    BannerTruth,
    SimulationConfig,
    TrafficModel,
    UserTruth,
    true_banner_ctr,
)
from processors.user_state import DAY_MS, UserState

MINUTE_MS = 60_000
POLICIES = ("live", "random", "popular")


@dataclass(frozen=True, slots=True)
class BannerEvalConfig:
    seed: int = 42
    hours: float = 24.0
    users_per_minute: float = 5.0
    slots: int = 2  # banners per banner placement (positions 0, 1, ...)
    dead_banner_at_hours: float | None = 12.0  # the best banner's CTR drops to 0 here
    bucket_minutes: int = 10
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00Z: a simulated day is a UTC day


@dataclass(frozen=True, slots=True)
class LoggedImpression:
    ts: int
    user_id: str
    banner_id: str
    position: int
    clicked: bool


@dataclass
class PolicyResult:
    policy: str
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0
    oracle_expected_clicks: float = 0.0
    cap_violations: int = 0
    placements: int = 0
    unfilled_slots: int = 0
    dead_banner: str | None = None
    dead_at_ms: int | None = None
    #: bucket start (ms since the run's start) -> [impressions, dead banner impressions]
    buckets: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    log: list[LoggedImpression] = field(default_factory=list)

    def dead_banner_share(self, bucket_ms: int) -> list[tuple[int, float]]:
        """(minutes relative to the drop, dead banner's share of impressions) per bucket."""
        if self.dead_at_ms is None:
            return []
        out = []
        for start in sorted(self.buckets):
            shown, dead = self.buckets[start]
            out.append(((start - self.dead_at_ms) // MINUTE_MS, dead / shown if shown else 0.0))
        return out

    def summary(self, bucket_ms: int) -> dict[str, object]:
        shares = self.dead_banner_share(bucket_ms)
        before = [s for minute, s in shares if -60 <= minute < 0]
        hour_after = [s for minute, s in shares if 60 - bucket_ms // MINUTE_MS <= minute < 60]
        share_before = sum(before) / len(before) if before else None
        share_after = hour_after[0] if hour_after else None
        lost = (
            1.0 - share_after / share_before if share_before and share_after is not None else None
        )
        return {
            "impressions": self.impressions,
            "clicks": self.clicks,
            "ctr": round(self.clicks / self.impressions, 5) if self.impressions else 0.0,
            "expected_ctr": round(self.expected_clicks / self.impressions, 5)
            if self.impressions
            else 0.0,
            "regret_per_impression": round(
                (self.oracle_expected_clicks - self.expected_clicks) / self.impressions, 5
            )
            if self.impressions
            else 0.0,
            "cap_violations": self.cap_violations,
            "placements": self.placements,
            "unfilled_slots": self.unfilled_slots,
            "dead_banner": self.dead_banner,
            "dead_banner_share_hour_before": None
            if share_before is None
            else round(share_before, 4),
            "dead_banner_share_at_60_min": None if share_after is None else round(share_after, 4),
            "dead_banner_traffic_lost_within_hour": None if lost is None else round(lost, 4),
        }


Chooser = Callable[[Event, list[str]], list[str]]


class _Run:
    """One policy over one seeded simulated period."""

    def __init__(
        self, policy: str, config: BannerEvalConfig, slice_config: SliceConfig, log: bool
    ) -> None:
        self.policy = policy
        self.config = config
        self.keep_log = log
        self.model = TrafficModel(
            SimulationConfig(seed=config.seed, users_per_minute=config.users_per_minute),
            start_ms=config.start_ms,
        )
        self.banners: dict[str, BannerTruth] = {b.banner_id: b for b in self.model.banners}
        self.caps: dict[str, int | None] = {}
        self.processor = SliceProcessor(slice_config)
        for record in self.model.catalog_records():
            if isinstance(record, CatalogBanner):
                self.caps[record.id] = record.daily_cap
            self.processor.apply_catalog(record)
        self.rng = random.Random(config.seed + 1_000)  # clicks: same draws for every policy
        self.policy_rng = random.Random(config.seed + 2_000)
        self.shown_today: Counter[tuple[str, int, str]] = Counter()  # (user, day, banner)
        self.total_clicks: Counter[str] = Counter()
        self.states: dict[str, UserState] = {}
        self.banner_slates: dict[str, list[str]] = {}
        self.pending: list[Event] = []
        self.result = PolicyResult(policy)
        segments = {s for b in self.model.banners for s in b.ctr_by_segment}
        dead = max(
            self.model.banners,
            key=lambda b: sum(b.ctr_by_segment.values()) / len(segments),
        )
        if config.dead_banner_at_hours is not None:
            self.result.dead_banner = dead.banner_id
            self.result.dead_at_ms = int(config.dead_banner_at_hours * 3_600_000)

    # --- truth ---------------------------------------------------------------------------
    def _ctr(self, banner_id: str, user: UserTruth, position: int, ts: int) -> float:
        dead_at = self.result.dead_at_ms
        if (
            banner_id == self.result.dead_banner
            and dead_at is not None
            and ts - self.config.start_ms >= dead_at
        ):
            return 0.0
        return true_banner_ctr(self.banners[banner_id], user, position)

    def _eligible(self, user_id: str, day: int) -> list[str]:
        return [
            b
            for b, cap in self.caps.items()
            if cap is None or self.shown_today[(user_id, day, b)] < cap
        ]

    # --- policies ------------------------------------------------------------------------
    def _choose(self, event: Event, eligible: list[str]) -> list[str]:
        slots = self.config.slots
        if self.policy == "random":
            return self.policy_rng.sample(eligible, min(slots, len(eligible)))
        if self.policy == "popular":
            ties = {b: self.policy_rng.random() for b in eligible}
            return sorted(eligible, key=lambda b: (-self.total_clicks[b], ties[b]))[:slots]
        self._process_pending(event.ts)
        return self.banner_slates.get(event.user_id, [])[:slots]

    def _process_pending(self, now_ms: int) -> None:
        if not self.pending:
            return
        batch = [(0, e) for e in self.pending]
        self.pending = []
        result = self.processor.process_batch(batch, self.states, now_ms)
        self.states.update(result.touched)
        for user_id, slates in result.slates.items():
            banners = slates.get("banners")
            if banners is not None:
                self.banner_slates[user_id] = [item.id for item in banners.items]

    # --- the loop ------------------------------------------------------------------------
    def _events(self) -> Iterator[Event]:
        end = self.config.start_ms + int(self.config.hours * 3_600_000)
        for event in self.model.events():
            if event.ts >= end:
                return
            yield event

    def run(self) -> PolicyResult:
        result, config = self.result, self.config
        bucket_ms = config.bucket_minutes * MINUTE_MS
        users = self.model.users
        for event in self._events():
            if event.item_type == "banner" and isinstance(event, Click):
                continue  # the open-loop simulator's own banner clicks; the policy decides
            if not isinstance(event, Impression):
                if self.policy == "live":
                    self.pending.append(event)
                continue
            # A banner placement: the policy fills the slots.
            user = users[event.user_id]
            day = event.ts // DAY_MS
            eligible = self._eligible(event.user_id, day)
            chosen = self._choose(event, eligible)
            result.placements += 1
            result.unfilled_slots += config.slots - len(chosen)
            truth = sorted(
                (self._ctr(b, user, 0, event.ts) for b in eligible),
                reverse=True,
            )
            result.oracle_expected_clicks += sum(
                p * _slot_bias(position) for position, p in enumerate(truth[: len(chosen)])
            )
            bucket = (event.ts - config.start_ms) // bucket_ms * bucket_ms
            for position, banner_id in enumerate(chosen):
                key = (event.user_id, day, banner_id)
                cap = self.caps.get(banner_id)
                if cap is not None and self.shown_today[key] >= cap:
                    result.cap_violations += 1
                self.shown_today[key] += 1
                p = self._ctr(banner_id, user, position, event.ts)
                clicked = self.rng.random() < p
                result.impressions += 1
                result.expected_clicks += p
                counts = result.buckets[bucket]
                counts[0] += 1
                counts[1] += banner_id == result.dead_banner
                context = {
                    "user_id": event.user_id,
                    "session_id": event.session_id,
                    "device": event.device,
                    "plan": event.plan,
                    "country": event.country,
                    "placement": event.placement,
                    "position": position,
                }
                shown = Impression(
                    event_id=f"{event.event_id}-{position}", ts=event.ts, item_id=banner_id,
                    **context,  # type: ignore[arg-type]
                )  # fmt: skip
                if self.policy == "live":
                    self.pending.append(shown)
                if clicked:
                    result.clicks += 1
                    self.total_clicks[banner_id] += 1
                    if self.policy == "live":
                        self.pending.append(
                            Click(
                                event_id=f"{event.event_id}-{position}-click",
                                ts=event.ts + 1,
                                item_id=banner_id,
                                item_type="banner",
                                **context,  # type: ignore[arg-type]
                            )
                        )
                if self.keep_log:
                    result.log.append(
                        LoggedImpression(event.ts, event.user_id, banner_id, position, clicked)
                    )
        return result


def _slot_bias(position: int) -> float:
    """The slot's click propensity relative to slot 0 (the oracle puts its best first)."""
    return POSITION_BIAS[min(position, len(POSITION_BIAS) - 1)]


def evaluate_banners(
    config: BannerEvalConfig,
    slice_config: SliceConfig,
    policies: tuple[str, ...] = POLICIES,
    log_policy: str | None = "live",
    progress: Callable[[str], None] | None = None,
) -> dict[str, PolicyResult]:
    """Run each policy on the same seeded traffic; returns their results by name."""
    results = {}
    for policy in policies:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        if progress:
            progress(policy)
        results[policy] = _Run(policy, config, slice_config, log=policy == log_policy).run()
    return results
