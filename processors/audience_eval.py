"""Planted-audience evaluation of the look-alike learner, on the traffic simulator.

Users whose latent taste for the planted categories is strong form the audience; only part
of them are given as seeds (as a brand would match its customers). The same profile code the
worker runs (``apply_event``) builds their interests from the events; the learner sees their
features as their profiles change. Measured: held-out top-decile lift (seeds never learned),
the recall of the planted users that were *not* seeds in the top decile, and whether the
planted categories, and only they, come out over-represented.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from typing import Any

from processors.audiences import AudienceConfig, AudienceLearner, as_dicts, audience_features
from processors.simulator import CATEGORIES, SimulationConfig, TrafficModel
from processors.user_state import UserState, UserStateConfig, apply_event

AUDIENCE = "planted"


def simulate_audience(
    config: AudienceConfig,
    simulation: SimulationConfig,
    hours: float = 24.0,
    planted_categories: int = 2,
    planted_threshold: float = 0.5,
    seed_share: float = 0.5,
    refresh_minutes: float = 10.0,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    rng = random.Random(simulation.seed + 101)
    planted = sorted(rng.sample(CATEGORIES, planted_categories))
    traffic = TrafficModel(simulation, start_ms=0)
    learner = AudienceLearner(config)
    user_config = UserStateConfig()
    states: dict[str, UserState] = {}
    touched: set[str] = set()
    in_audience: set[str] = set()
    seeds: set[str] = set()
    end = int(hours * 3_600_000)
    step = int(refresh_minutes * 60_000)
    next_refresh = step
    events = 0

    def refresh(now: int) -> None:
        for user_id in sorted(touched):  # a set's order varies by process: keep runs identical
            learner.observe(user_id, audience_features(states[user_id], now))
        touched.clear()

    for event in traffic.events():
        if event.ts >= end:
            break
        while event.ts >= next_refresh:
            refresh(next_refresh)
            next_refresh += step
            if progress is not None:
                progress(event.ts / end)
        events += 1
        user_id = event.user_id
        state = states.get(user_id)
        if state is None:
            state = states[user_id] = UserState(user_id=user_id, partition=0)
            taste = traffic.users[user_id].taste
            if sum(taste[c] for c in planted) >= planted_threshold:
                in_audience.add(user_id)
                if zlib.crc32(user_id.encode()) % 1000 < seed_share * 1000:
                    seeds.add(user_id)
                    learner.member_added(AUDIENCE, user_id)
        apply_event(state, event, user_config)
        touched.add(user_id)
    refresh(end)

    lift = learner.lift_table(AUDIENCE)
    cuts = learner.decile_cuts(AUDIENCE)
    top = {
        user
        for user, features in learner.population.items()
        if cuts and learner.score(AUDIENCE, features) >= cuts[0]
    }
    prospects_planted = [u for u in learner.population if u in in_audience and u not in seeds]
    recall = (
        sum(1 for u in prospects_planted if u in top) / len(prospects_planted)
        if prospects_planted
        else 0.0
    )
    rows = learner.representation(AUDIENCE)
    planted_rows = [r for r in rows if r.feature in {f"cat={c}" for c in planted}]
    other_rows = [r for r in rows if r.feature.startswith("cat=") and r.feature[4:] not in planted]
    over = [r for r in other_rows if r.q_value < 0.01 and r.ratio > 1.0]
    return {
        "seed": simulation.seed,
        "hours": hours,
        "events": events,
        "users": len(learner.population),
        "planted_categories": planted,
        "audience_users": len(in_audience),
        "seeds": len(seeds),
        "held_out_seeds": sum(r.responders for r in lift),
        "top_decile_lift": round(lift[0].lift, 3) if lift else None,
        "top_decile_planted_recall": round(recall, 4),
        "planted_non_seed_users": len(prospects_planted),
        "planted_over_represented_q_below_0_01": all(
            r.q_value < 0.01 and r.ratio > 1.0 for r in planted_rows
        )
        and len(planted_rows) == planted_categories,
        "other_categories_over_represented": [r.feature for r in over],
        "lift": as_dicts(lift),
        "representation": as_dicts(rows[:30]),
        "learned_members": learner.examples_learned,
        "seconds": round(time.perf_counter() - started, 1),
    }
