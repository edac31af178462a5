"""The first processing slice as one pure, batch-at-a-time step.

``SliceProcessor.process_batch`` folds a batch of decoded events into per-user state and
the popularity index, then builds one slate per touched user (coalesced: a user with 30
events in the batch gets one slate). The worker and the in-process oracle share it.

>>> from processors.events import Click
>>> processor = SliceProcessor(SliceConfig())
>>> states: dict[str, UserState] = {}
>>> events = [Click(event_id=f"e{i}", ts=1_000 + i, user_id=f"u{i % 2}",
...                 item_id=f"r{i}", item_type="recipe", category="pasta") for i in range(4)]
>>> result = processor.process_batch([(0, e) for e in events], states, now_ms=2_000)
>>> sorted(result.touched), result.duplicates
(['u0', 'u1'], 0)
>>> [item.id for item in result.slates["u0"].items]   # u0 saw r0, r2; r3 is newer
['r3', 'r1']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from processors.events import Event
from processors.popularity import PopularityConfig, PopularityIndex
from processors.slates import Slate, SlateConfig, popular_in_your_categories
from processors.user_state import UserState, UserStateConfig, apply_event

#: How much each event type counts toward an item's popularity.
POPULARITY_WEIGHTS = {"click": 1.0, "pageview": 0.5, "impression": 0.0}


@dataclass(frozen=True, slots=True)
class SliceConfig:
    user: UserStateConfig = field(default_factory=UserStateConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    slate: SlateConfig = field(default_factory=SlateConfig)


@dataclass(slots=True)
class BatchResult:
    touched: dict[str, UserState] = field(default_factory=dict)
    slates: dict[str, Slate] = field(default_factory=dict)
    applied_by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    #: Per-user sequence gaps seen in this batch (events carrying ``seq``).
    seq_gaps: int = 0


class StateLookup(Protocol):
    def get(self, user_id: str, /) -> UserState | None: ...


class SliceProcessor:
    """Pure and synchronous: no I/O. State lives in the mapping the caller passes in."""

    def __init__(self, config: SliceConfig) -> None:
        self.config = config
        self.popularity = PopularityIndex(config.popularity)

    def process_batch(
        self,
        events: Iterable[tuple[int, Event]],
        states: StateLookup,
        now_ms: int,
    ) -> BatchResult:
        """Apply ``(partition, event)`` pairs in order; one slate per touched user.

        ``states`` is only read; the caller persists ``result.touched`` (coalesced).
        """
        result = BatchResult()
        config = self.config
        for partition, event in events:
            user_id = event.user_id
            state = result.touched.get(user_id) or states.get(user_id)
            if state is None:
                state = UserState(user_id=user_id, partition=partition)
            previous_seq = state.last_seq
            if not apply_event(state, event, config.user):
                result.duplicates += 1
                continue
            if event.seq is not None and previous_seq is not None and event.seq > previous_seq + 1:
                result.seq_gaps += 1
            result.touched[user_id] = state
            result.applied_by_type[event.type] += 1
            weight = POPULARITY_WEIGHTS[event.type]
            if event.item_id is not None and event.item_type is not None and weight > 0.0:
                self.popularity.observe(
                    event.item_id, event.item_type, event.category, event.ts, weight
                )
        ranked = self.popularity.snapshot(config.slate.size + config.user.history_size)
        for user_id, state in result.touched.items():
            result.slates[user_id] = popular_in_your_categories(state, ranked, config.slate, now_ms)
        return result
