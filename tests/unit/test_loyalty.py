"""Loyalty labels respect time, models learn, snapshots are signed, metrics are exact."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import example as case
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.banners import Banner, UserContext, eligible
from processors.events import Click, Impression, PageView
from processors.loyalty import (
    ExpiryQueue,
    LiveMetrics,
    LoyaltyConfig,
    LoyaltyModels,
    LoyaltyState,
    PendingLabel,
    ResolvedExample,
    Signals,
    context_of,
    decode_example,
    encode_example,
    expire,
    features_of,
    observe,
    observe_event,
    retention_rates,
    roc_auc,
    score,
    signals_of,
    wilson_interval,
    with_recency,
)
from processors.loyalty_eval import evaluate_activity_log

HOUR = 3_600_000
DAY = 24 * HOUR
CONFIG = LoyaltyConfig(return_horizon_ms=7 * DAY, loyal_horizon_ms=30 * DAY)
CTX = {"device": "mobile", "plan": "free"}


def feed(times: list[int], config: LoyaltyConfig = CONFIG) -> list[ResolvedExample]:
    state, models = LoyaltyState(), LoyaltyModels(config)
    out: list[ResolvedExample] = []
    for ts in times:
        out += observe(state, ts, CTX, Signals(), config, models)
    return out


def test_returns_is_positive_when_the_next_session_starts_within_the_horizon() -> None:
    served, checkin = feed([0, 60_000, 2 * DAY])
    assert (served.target, served.label, served.recency_hours) == ("returns", True, 0.0)
    # the snapshot is the end of the first session: two events, one session
    features = served.features
    assert (features["events"], features["sessions"], served.ts) == (2, 1, 60_000)
    # asked again after a day of silence (the 3-day check-in came after the return)
    assert (checkin.label, checkin.recency_hours, checkin.ts) == (True, 24, 60_000 + DAY)
    assert checkin.features["recency_hours"] == 24 and not checkin.served


def test_check_ins_tell_lapsed_users_from_active_ones() -> None:
    back_after_8_days = feed([0, 8 * DAY])
    assert [(e.recency_hours, e.label) for e in back_after_8_days] == [
        (0, False),  # not back within 7 days of the session's end
        (24, True),  # but within 7 days of the first day of silence
        (72, True),
        (168, True),
    ]
    state, models = LoyaltyState(), LoyaltyModels(CONFIG)
    observe(state, 0, CTX, Signals(), CONFIG, models)
    never = [e for e in expire(state, 400 * DAY, CONFIG) if e.target == "returns"]
    assert [e.recency_hours for e in never] == list(CONFIG.recency_checkpoints_hours)
    assert not any(e.label for e in never) and not state.pending[1:]


def test_returns_is_negative_once_event_time_passes_the_horizon() -> None:
    state, models = LoyaltyState(), LoyaltyModels(CONFIG)
    observe(state, 0, CTX, Signals(), CONFIG, models)
    assert expire(state, 7 * DAY, CONFIG) == []  # not yet past
    [late] = [e for e in expire(state, 7 * DAY + 1, CONFIG) if e.target == "returns"]
    assert late.label is False and late.served
    # a session starting after the horizon answers "no" too
    assert [(e.target, e.label) for e in feed([0, 8 * DAY]) if e.served] == [("returns", False)]


def test_loyal_needs_three_sessions_within_thirty_days() -> None:
    on_time = feed([0, 2 * DAY, 4 * DAY])
    assert ("loyal", True) in [(e.target, e.label) for e in on_time]
    spread_out = feed([0, 6 * DAY, 12 * DAY, 18 * DAY, 24 * DAY, 31 * DAY])
    loyal = [e for e in spread_out if e.target == "loyal"]
    assert [e.label for e in loyal] == [True]  # third session at day 12: within 30 days
    state, models = LoyaltyState(), LoyaltyModels(CONFIG)
    observe(state, 0, CTX, Signals(), CONFIG, models)
    observe(state, 10 * DAY, CTX, Signals(), CONFIG, models)
    [expired] = [e for e in expire(state, 30 * DAY + 1, CONFIG) if e.target == "loyal"]
    assert expired.label is False and expired.features["sessions"] == 1  # first session's


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20 * DAY), min_size=1, max_size=25))
def test_no_feature_contains_information_from_after_the_prediction_time(
    offsets: list[int],
) -> None:
    """Each resolved example's features equal those of a state fed only the events up to
    its prediction time: nothing later (in particular not the outcome) leaks in."""
    times = sorted(offsets)
    state, models = LoyaltyState(), LoyaltyModels(CONFIG)
    resolved: list[ResolvedExample] = []
    for ts in times:
        resolved += observe(state, ts, CTX, Signals(), CONFIG, models)
    resolved += expire(state, times[-1] + 40 * DAY, CONFIG)
    for example in resolved:
        replay, fresh = LoyaltyState(), LoyaltyModels(CONFIG)
        # a check-in is asked `recency_hours` after the snapshot, the user silent since
        taken = example.ts - int(example.recency_hours * HOUR)
        prefix = list(itertools.takewhile(lambda t, at=taken: t <= at, times))
        assert not [t for t in times if taken < t <= example.ts]
        for ts in prefix:
            observe(replay, ts, CTX, Signals(), CONFIG, fresh)
        expected = features_of(replay, taken)
        if not example.served:
            expected = with_recency(expected, example.recency_hours)
        assert example.features == expected
        assert example.resolved_at >= example.ts


def test_late_events_never_move_a_prediction_time() -> None:
    state, models = LoyaltyState(), LoyaltyModels(CONFIG)
    observe(state, 10 * HOUR, CTX, Signals(), CONFIG, models)
    observe(state, 1 * HOUR, CTX, Signals(), CONFIG, models)  # late, out of order
    [pending] = [p for p in state.pending if p.target == "returns"]
    assert pending.ts == 10 * HOUR and state.sessions == 1 and state.events == 2


def test_expiry_queue_holds_one_entry_per_user_and_resolves_in_deadline_order() -> None:
    states = {f"u{i}": LoyaltyState() for i in range(50)}
    models, queue = LoyaltyModels(CONFIG), ExpiryQueue()
    for i, (user, state) in enumerate(states.items()):
        for ts in (i * HOUR, i * HOUR + 60_000):  # two events: the deadline moves on
            observe(state, ts, CTX, Signals(), CONFIG, models)
            queue.schedule(user, state)
    assert len(queue) == 50
    due = queue.expire_due(7 * DAY + 10 * HOUR, states.get, CONFIG)
    assert sorted(user for user, e in due if e.target == "returns") == sorted(
        f"u{i}" for i in range(10)
    )


def synthetic_examples(n: int, seed: int) -> list[ResolvedExample]:
    """Premium desktop users return far more often; the rest is noise."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        plan = rng.choice(["free", "premium"])
        device = rng.choice(["mobile", "desktop"])
        p = 0.15 + 0.5 * (plan == "premium") + 0.2 * (device == "desktop")
        features = {"plan": plan, "device": device, "sessions": rng.randint(1, 5), "events": 3}
        out.append(
            ResolvedExample(
                target="returns", ts=i, resolved_at=i, label=rng.random() < p,
                features=features, prediction=0.5, baseline=0.5,
            )
        )  # fmt: skip
    return out


@pytest.mark.parametrize("kind", ["logistic", "tree"])
def test_models_learn_what_drives_returns_and_beat_the_frequency_baseline(kind: str) -> None:
    models = LoyaltyModels(LoyaltyConfig(model=kind, metric_window=2000))  # type: ignore[arg-type]
    for example in synthetic_examples(6000, seed=1):
        models.learn(example)
    live = models.live[("returns", kind)].roc_auc()
    baseline = models.live[("returns", "frequency")].roc_auc()
    assert live is not None and baseline is not None
    assert live > 0.7 and live > baseline + 0.1
    if kind == "logistic":
        top = dict(models.strongest_features("returns", 3))
        assert "plan=premium" in top or "plan=free" in top


def test_snapshots_are_signed_newer_only_and_score_the_same() -> None:
    key = b"k" * 32
    trained = LoyaltyModels(CONFIG)
    for example in synthetic_examples(500, seed=2):
        trained.learn(example)
    blob = trained.snapshot(key)
    replica = LoyaltyModels(CONFIG)
    assert replica.load(blob, key) is True
    probe = {"plan": "premium", "device": "desktop", "sessions": 2, "events": 3}
    assert replica.predict("returns", probe) == trained.predict("returns", probe)
    assert replica.load(blob, key) is False  # not newer: ignored
    with pytest.raises(ValueError, match="signature"):
        LoyaltyModels(CONFIG).load(blob, b"another key of 32 bytes........")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ValueError, match="signature"):
        LoyaltyModels(CONFIG).load(tampered, key)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9]), st.booleans()),
        min_size=2,
        max_size=40,
    )
)
def test_roc_auc_equals_the_pairwise_definition(pairs: list[tuple[float, bool]]) -> None:
    scores, labels = [p for p, _ in pairs], [y for _, y in pairs]
    positives = [s for s, y in pairs if y]
    negatives = [s for s, y in pairs if not y]
    expected = None
    if positives and negatives:
        wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
        expected = wins / (len(positives) * len(negatives))
    result = roc_auc(scores, labels)
    assert (result is None) == (expected is None)
    if expected is not None:
        assert result == pytest.approx(expected)


def test_calibration_error_is_zero_when_predictions_match_rates() -> None:
    live = LiveMetrics(window=100)
    for i in range(10):
        live.update(0.2, i < 2)  # 20% positive at p=0.2
        live.update(0.8, i < 8)
    assert live.expected_calibration_error() == pytest.approx(0.0)
    assert live.positive_rate() == 0.5


def test_examples_round_trip_and_rates_carry_wilson_intervals() -> None:
    examples = synthetic_examples(400, seed=3)
    assert decode_example(encode_example(examples[0])) == examples[0]
    rows = {(r.attribute, r.value): r for r in retention_rates(examples, ("plan",))}
    premium = rows[("plan", "premium")]
    assert (premium.low, premium.high) == wilson_interval(premium.returned, premium.users)
    assert premium.low < premium.rate < premium.high
    assert premium.rate > rows[("plan", "free")].rate


def test_win_back_banners_only_reach_win_back_users() -> None:
    banner = Banner("come-back", win_back_only=True)
    assert not eligible(banner, UserContext(win_back=False), now_ms=0)
    assert eligible(banner, UserContext(win_back=True), now_ms=0)


def test_activity_log_scores_every_user_seen_before_the_cutoff() -> None:
    rng = random.Random(5)
    rows = []
    for u in range(300):
        loyal = u % 3 == 0
        ts = rng.randint(0, 5 * DAY)
        for _ in range(6 if loyal else 1):
            rows.append((f"u{u}", ts, {"plan": "premium" if loyal else "free"}))
            ts += rng.randint(1, 3) * DAY
    scored: dict[str, float] = {}
    cutoff = 12 * DAY
    result = evaluate_activity_log(rows, cutoff, None, CONFIG, scores_out=scored.__setitem__)
    seen = {user for user, ts, _ in rows if ts <= cutoff}
    assert set(scored) == seen and result["users_scored"] == len(seen)
    assert result["labels_learned"] > 0
    assert result["roc_auc"] is not None and result["roc_auc"] > 0.5


def test_on_a_purchase_log_with_churn_the_model_beats_the_frequency_baseline() -> None:
    """Customers buy at their own rate until they silently churn (Pareto/NBD-like): how
    often someone bought cannot tell a lapsed customer from an active one; the check-ins
    teach the model what silence means. Without them the model only tied the baseline."""
    rng = random.Random(11)
    rows = []
    for u in range(3000):
        rate = rng.gammavariate(0.6, 1.0) / (20 * DAY)
        lifetime = rng.expovariate(1 / (rng.choice([60, 200, 600]) * DAY))
        ts = born = rng.uniform(0, 290 * DAY)
        while ts < 365 * DAY and ts - born < lifetime:
            rows.append((f"c{u}", int(ts), {}))
            ts += rng.expovariate(rate)
    result = evaluate_activity_log(rows, 273 * DAY, 60 * DAY, LoyaltyConfig())
    assert result["roc_auc"] > result["frequency_baseline_auc"] + 0.03


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["schedule", "forget", "expire"]),
            st.sampled_from([f"u{i}" for i in range(12)]),
            st.sampled_from([0, 0, 5, 10, 15, 20, 40]),  # few distinct times: ties are common
        ),
        max_size=80,
    )
)
@case(steps=[("schedule", "u1", 0), ("schedule", "u0", 0), ("expire", "u0", 11)])
# forgotten, then back with an earlier deadline than its old entry's: the old entry must
# not stand in for the new one (the queue drops forgotten entries lazily)
@case(steps=[("schedule", "u1", 40), ("schedule", "u2", 40), ("schedule", "u0", 40),
             ("forget", "u0", 0), ("schedule", "u0", 0), ("expire", "u0", 11),
             ("expire", "u0", 60)])  # fmt: skip
@case(steps=[*(("schedule", f"u{i}", t) for i, t in enumerate([40, 0, 20, 5, 15, 10])),
                ("expire", "u0", 100)])  # fmt: skip
def test_the_expiry_queue_resolves_due_users_earliest_first_ties_by_id(
    steps: list[tuple[str, str, int]],
) -> None:
    """The queue (a heap in two arrays) against a plain model: each call to expire_due
    resolves the queued users whose deadline is before the watermark, by (deadline, user)."""
    config = LoyaltyConfig(return_horizon_ms=10, recency_checkpoints_hours=(0,))
    queue = ExpiryQueue()
    states: dict[str, LoyaltyState] = {}
    queued: dict[str, int] = {}  # the model: user -> deadline queued
    for action, user, time in steps:
        if action == "schedule":
            state = states.setdefault(user, LoyaltyState())
            label = PendingLabel(
                target="returns", ts=time, deadline=time + 10, features={}, prediction=0.5,
                baseline=0.5,
            )  # fmt: skip
            state.pending.append(label)
            queue.schedule(user, state)
            queued.setdefault(user, min(p.deadline for p in state.pending))
        elif action == "forget":
            queue.forget(user)
            queued.pop(user, None)
            states.pop(user, None)
        else:
            due = sorted((deadline, u) for u, deadline in queued.items() if deadline < time)
            resolved = queue.expire_due(time, states.get, config)
            # (a user's examples come together: one per label resolved)
            assert [u for u, _ in itertools.groupby(u for u, _ in resolved)] == [u for _, u in due]
            for _, u in due:  # its due labels resolved; queued again for its next one
                del queued[u]
                assert all(p.deadline >= time for p in states[u].pending)
                if states[u].pending:
                    queued[u] = min(p.deadline for p in states[u].pending)
        assert len(queue) == len(queued)


@given(st.lists(st.integers(0, 30), min_size=1, max_size=25), st.integers(1, 6))
def test_expiring_at_most_limit_users_a_call_resolves_the_same_labels_in_the_same_order(
    starts: list[int], limit: int
) -> None:
    """After downtime every label due meanwhile would expire in one batch; ``limit`` spreads
    them over calls, the earliest due first, and together the calls resolve what one
    unlimited call does."""
    config = LoyaltyConfig(return_horizon_ms=10, recency_checkpoints_hours=(0,))

    def queued() -> tuple[ExpiryQueue, dict[str, LoyaltyState]]:
        queue, states = ExpiryQueue(), {}
        for n, start in enumerate(starts):
            state = states[f"u{n}"] = LoyaltyState()
            state.pending.append(
                PendingLabel(
                    target="returns",
                    ts=start,
                    deadline=start + 10,
                    features={},
                    prediction=0.5,
                    baseline=0.5,
                )
            )
            queue.schedule(f"u{n}", state)
        return queue, states

    queue, states = queued()
    everything = [(u, e.label) for u, e in queue.expire_due(100, states.get, config)]
    queue, states = queued()
    calls = []
    while len(queue):
        calls.append([(u, e.label) for u, e in queue.expire_due(100, states.get, config, limit)])
    assert all(len({u for u, _ in call}) <= limit for call in calls)
    assert [pair for call in calls for pair in call] == everything


_EVENT_KINDS = st.sampled_from(
    [
        ("pageview", "recipe"),
        ("click", "recipe"),
        ("click", "banner"),
        ("impression", "banner"),
        ("pageview", "page"),
        ("pageview", None),
    ]
)


@settings(deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-2 * HOUR, max_value=2 * DAY),  # a step back: late events
            _EVENT_KINDS,
            st.sampled_from([None, "pasta", "soup", "x" * 80]),
            st.sampled_from([None, "mobile", "desktop"]),
            st.sampled_from([None, "de", "fr"]),
            st.sampled_from([None, 0, 30_000, 10 * HOUR]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_observe_event_folds_like_observe_with_the_events_context_and_signals(
    steps: list[tuple[int, tuple[str, str | None], str | None, str | None, str | None, int | None]],
) -> None:
    """The fast path (a later event of the current session) leaves the same state and
    resolves the same labels as ``observe`` on the event's context and signals."""
    kinds = {"pageview": PageView, "click": Click, "impression": Impression}
    models = LoyaltyModels(CONFIG)
    fast, slow = LoyaltyState(), LoyaltyState()
    ts = 10 * DAY
    for n, (step, (kind, item_type), category, device, country, dwell) in enumerate(steps):
        ts += step
        item = None if item_type in (None, "page") else f"i{n % 3}"
        event = kinds[kind](
            event_id=f"e{n}", ts=ts, user_id="u", item_id=item, item_type=item_type,
            category=category, device=device, country=country, dwell_ms=dwell,
        )  # fmt: skip
        late = slow.first_ts >= 0 and ts < slow.last_ts
        expected = observe(
            slow, ts, context_of(event), signals_of(event), CONFIG, models, score_now=False
        )
        assert observe_event(fast, event, CONFIG, models) == expected
        assert fast == slow
        score(slow, ts, late, CONFIG, models)  # what the slice does before the next event
        score(fast, ts, late, CONFIG, models)
