"""Evaluations of the loyalty processor, running the same code the worker runs.

- ``simulate_loyalty``: the traffic simulator's users each have a true return probability;
  the live (predict-then-learn) ROC AUC of the model is compared with the AUC that the true
  probabilities reach on the same resolved labels (the best any model could do).
- ``evaluate_activity_log``: any real activity log (user, time, optional extra columns):
  events up to a cutoff stream through the processor (learning only labels resolved before
  it); then every user seen is scored and compared with whether they have any event in
  (cutoff, cutoff + horizon].

>>> rows = [("a", 0, {}), ("a", 3_600_000 * 30, {}), ("b", 0, {}), ("a", 3_600_000 * 60, {})]
>>> result = evaluate_activity_log(rows, cutoff_ms=3_600_000 * 40, horizon_ms=None,
...                                config=LoyaltyConfig())
>>> result["users_scored"], result["base_rate"]
(2, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from processors.loyalty import (
    TARGETS,
    ExpiryQueue,
    LoyaltyConfig,
    LoyaltyModels,
    LoyaltyState,
    ResolvedExample,
    Signals,
    context_of,
    features_of,
    observe,
    roc_auc,
    signals_of,
    with_recency,
)
from processors.simulator import SimulationConfig, TrafficModel

DAY_MS = 86_400_000


def _live_summary(models: LoyaltyModels, target: str, kind: str) -> dict[str, Any]:
    live = models.live[(target, kind)]
    auc, loss, ece = live.roc_auc(), live.log_loss(), live.expected_calibration_error()
    return {
        "roc_auc": None if auc is None else round(auc, 4),
        "log_loss": None if loss is None else round(loss, 4),
        "ece": None if ece is None else round(ece, 4),
        "labels": live.count,
    }


def simulate_loyalty(
    config: LoyaltyConfig,
    simulation: SimulationConfig,
    days: float = 7.0,
    progress: Callable[[float], None] | None = None,
    examples_out: list[ResolvedExample] | None = None,
) -> dict[str, Any]:
    """Run ``days`` of simulated traffic through the processor; report live vs true AUC.

    Both targets' truth is a monotone function of the user's true return probability (the
    simulator draws every return with it), so the AUC of that probability on the window's
    labels is the ceiling the live AUC is compared with.
    """
    started = time.perf_counter()
    traffic = TrafficModel(simulation, start_ms=0)
    models = LoyaltyModels(config)
    states: dict[str, LoyaltyState] = {}
    queue = ExpiryQueue()
    truth: dict[str, deque[tuple[float, bool]]] = {
        t: deque(maxlen=config.metric_window) for t in TARGETS
    }
    resolved_by_outcome = {f"{t}:{o}": 0 for t in TARGETS for o in ("positive", "negative")}
    end = int(days * DAY_MS)
    events = 0
    daily: list[dict[str, Any]] = []
    next_day = DAY_MS

    def learn(user_id: str, example: ResolvedExample) -> None:
        models.learn(example)
        if examples_out is not None:
            examples_out.append(example)
        true_p = traffic.users[user_id].return_probability
        truth[example.target].append((true_p, example.label))
        outcome = "positive" if example.label else "negative"
        resolved_by_outcome[f"{example.target}:{outcome}"] += 1

    for event in traffic.events():
        if event.ts >= end:
            break
        while event.ts >= next_day:
            daily.append({"day": next_day // DAY_MS, **_auc_pair(models, truth, config)})
            next_day += DAY_MS
            if progress is not None:
                progress(event.ts / end)
        events += 1
        user_id = event.user_id
        state = states.get(user_id)
        if state is None:
            state = states[user_id] = LoyaltyState()
        for example in observe(
            state, event.ts, context_of(event), signals_of(event), config, models
        ):
            learn(user_id, example)
        queue.schedule(user_id, state)
        for owner, example in queue.expire_due(event.ts, states.get, config):
            learn(owner, example)
    report: dict[str, Any] = {
        "days": days,
        "seed": simulation.seed,
        "users": len(states),
        "events": events,
        "model": config.model,
        "labels_resolved": resolved_by_outcome,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for target in TARGETS:
        true_auc = _truth_auc(truth[target])
        report[target] = {
            "model": _live_summary(models, target, config.model),
            "frequency_baseline": _live_summary(models, target, "frequency"),
            "served": _live_summary(models, target, "served"),
            "true_probability_auc": true_auc,
            "positive_rate": _rounded(models.live[(target, config.model)].positive_rate()),
        }
        model_auc = report[target]["model"]["roc_auc"]
        report[target]["gap_to_truth"] = (
            None if model_auc is None or true_auc is None else round(true_auc - model_auc, 4)
        )
    report["by_day"] = daily
    report["strongest_features"] = {
        t: [(name, round(w, 3)) for name, w in models.strongest_features(t, 8)] for t in TARGETS
    }
    return report


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _truth_auc(pairs: Iterable[tuple[float, bool]]) -> float | None:
    pairs = list(pairs)
    return _rounded(roc_auc([p for p, _ in pairs], [y for _, y in pairs]))


def _auc_pair(
    models: LoyaltyModels, truth: Mapping[str, deque[tuple[float, bool]]], config: LoyaltyConfig
) -> dict[str, Any]:
    live = models.live[("returns", config.model)].roc_auc()
    return {
        "returns_live_auc": _rounded(live),
        "returns_true_auc": _truth_auc(truth["returns"]),
        "labels": models.live[("returns", config.model)].count,
    }


Row = tuple[str, int, Mapping[str, str]]


def evaluate_activity_log(
    rows: Iterable[Row],
    cutoff_ms: int,
    horizon_ms: int | None,
    config: LoyaltyConfig,
    scores_out: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """``rows``: (user_id, epoch ms, extra columns) in any order; extra string columns are
    categorical context features. Horizon None: to the end of the log. The model learns the
    question it is asked: its return horizon is set to the same window.
    """
    started = time.perf_counter()
    ordered = sorted(rows, key=lambda row: row[1])
    if horizon_ms is None:
        horizon_ms = max(ordered[-1][1] - cutoff_ms, 1) if ordered else DAY_MS
    config = dataclasses.replace(config, return_horizon_ms=horizon_ms)
    models = LoyaltyModels(config)
    states: dict[str, LoyaltyState] = {}
    queue = ExpiryQueue()
    future: set[str] = set()
    learned = 0
    end = cutoff_ms + horizon_ms
    for user_id, ts, extra in ordered:
        if ts > cutoff_ms:
            if ts <= end:
                future.add(user_id)
            continue
        state = states.get(user_id)
        if state is None:
            state = states[user_id] = LoyaltyState()
        resolved = observe(state, ts, extra, Signals(), config, models)
        queue.schedule(user_id, state)
        resolved += [example for _, example in queue.expire_due(ts, states.get, config)]
        for example in resolved:
            models.learn(example)
            learned += 1
    # Every user seen before the cutoff, scored with the final model on their features as
    # of their last event and the silence since (the check-in the model learned for it);
    # the baseline on the frequency alone.
    scores: list[float] = []
    baseline: list[float] = []
    frequency: list[float] = []
    silence: list[float] = []
    labels: list[bool] = []
    for user_id, state in states.items():
        features = with_recency(
            features_of(state, state.last_ts), (cutoff_ms - state.last_ts) / 3_600_000
        )
        model_p, baseline_p = models.predict("returns", features)
        scores.append(model_p)
        baseline.append(baseline_p)
        frequency.append(float(state.events))
        silence.append(float(state.last_ts - cutoff_ms))  # higher = seen more recently
        labels.append(user_id in future)
        if scores_out is not None:
            scores_out(user_id, model_p)
    loss = sum(
        -math.log(min(max(p if y else 1 - p, 1e-6), 1.0))
        for p, y in zip(scores, labels, strict=True)
    ) / max(len(labels), 1)
    return {
        "users_scored": len(labels),
        "base_rate": round(sum(labels) / len(labels), 4) if labels else None,
        "roc_auc": _rounded(roc_auc(scores, labels)),
        "log_loss": round(loss, 4),
        "frequency_baseline_auc": _rounded(roc_auc(baseline, labels)),
        "raw_frequency_auc": _rounded(roc_auc(frequency, labels)),
        "raw_recency_auc": _rounded(roc_auc(silence, labels)),
        "labels_learned": learned,
        "model": config.model,
        "seconds": round(time.perf_counter() - started, 2),
    }
