"""Online loyalty and return prediction: time-respecting labels, River models, live metrics.

Two targets, each a question asked at a *prediction time* and answered later by event time:

- ``returns``: the user's session just ended (its last event so far is the prediction time);
  will they start another session within ``return_horizon_ms`` (7 days)?
- ``loyal``: a new user's first session (its last event); will they reach
  ``loyal_sessions`` (3) sessions within ``loyal_horizon_ms`` (30 days) of their first event?

A pending label keeps the features *as they were at the prediction time* (a snapshot updated
while the session goes on) and the probability served then. It is resolved positive when the
outcome happens, negative once event time (the user's own events or the worker's watermark)
passes its deadline. Nothing that happens after the prediction time reaches its features.
Resolved examples are then learned predict-then-learn (progressive validation): the stored
prediction is scored against the label before the model learns it.

>>> config = LoyaltyConfig(return_horizon_ms=10_000, session_gap_ms=1_000)
>>> state = LoyaltyState()
>>> models = LoyaltyModels(config)
>>> day = {"device": "mobile", "plan": "free"}
>>> observe(state, 0, day, Signals(), config, models)     # first session
[]
>>> [(e.target, e.label) for e in observe(state, 5_000, day, Signals(), config, models)]
[('returns', True)]
>>> [(e.target, e.label) for e in expire(state, 16_000, config)]   # horizon passed
[('returns', False)]
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal

import msgspec

from processors.signing import signed_pickle, verified_unpickle

TARGETS = ("returns", "loyal")
Target = Literal["returns", "loyal"]
ModelKind = Literal["logistic", "tree", "forest"]
DAY_MS = 86_400_000

#: The categorical context a session carries (event fields, or a log's extra columns).
CONTEXT_FIELDS = ("device", "os", "browser", "plan", "site", "country")
#: Numeric behaviour features (all known at the prediction time).
BEHAVIOUR_FEATURES = (
    "sessions",
    "events",
    "hours_since_previous",
    "session_minutes",
    "pages",
    "categories",
    "dwell_minutes",
    "banner_clicks",
    "tenure_days",
    "recency_hours",
    "recency_per_gap",
)
#: The popularity-free baseline sees only how often the user came: the frequency alone.
FREQUENCY_FEATURES = ("sessions", "events")
MAX_CONTEXT_KEYS = 16
MAX_SESSION_CATEGORIES = 16


@dataclass(frozen=True, slots=True)
class LoyaltyConfig:
    return_horizon_ms: int = 7 * DAY_MS
    loyal_sessions: int = 3
    loyal_horizon_ms: int = 30 * DAY_MS
    session_gap_ms: int = 30 * 60 * 1000
    model: ModelKind = "logistic"
    learning_rate: float = 0.1  # AdaGrad's, chosen on simulation seed 1 and two purchase logs
    metric_window: int = 5000  # resolved labels behind the live AUC / log loss / ECE
    calibration_bins: int = 10
    # A user whose return probability is below this is eligible for a win-back banner.
    win_back_threshold: float = 0.3
    seed: int = 7
    # The return question is asked again after this many hours of silence (0: at the
    # session's end, what the worker serves): a lapsed user and an active one then differ.
    recency_checkpoints_hours: tuple[float, ...] = (0, 24, 72, 168, 336, 720, 1440, 2160, 4320)


class Signals(msgspec.Struct, frozen=True, kw_only=True):
    """What one event says about engagement (beyond its time and context)."""

    page: bool = True  # a page view of any kind
    entry_type: str | None = None  # the page type (recipe, product, page...)
    referrer: str | None = None
    category: str | None = None
    dwell_ms: int = 0
    banner_click: bool = False


# gc=False: not scanned by the cyclic collector, as UserState (processors/user_state.py)
class PendingLabel(msgspec.Struct, kw_only=True, gc=False):
    """A question asked at ``ts`` that event time will answer by ``deadline``.

    A ``returns`` question is asked again at each check-in of ``recency_checkpoints_hours``
    while the user stays away: ``step`` is the next check-in to answer, at ``ts`` plus its
    hours, with the same features plus the silence so far (``recency_hours``).
    """

    target: str
    ts: int
    deadline: int
    features: dict[str, Any]
    prediction: float
    baseline: float
    step: int = 0


# gc=False: not scanned by the cyclic collector, as UserState (processors/user_state.py)
class ResolvedExample(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A label that event time answered, with what was predicted before it was known."""

    target: str
    ts: int  # the prediction time
    resolved_at: int
    label: bool
    features: dict[str, Any]
    prediction: float  # served at ``ts``; -1 for check-ins after it (nothing was served)
    baseline: float
    recency_hours: float = 0.0  # the check-in: hours of silence after the session ended

    @property
    def served(self) -> bool:
        return self.recency_hours == 0.0


# gc=False: not scanned by the cyclic collector, as UserState (processors/user_state.py)
class LoyaltyState(msgspec.Struct, kw_only=True, gc=False):
    """Per-user, bounded (a few hundred bytes): session bookkeeping and pending labels."""

    first_ts: int = -1
    last_ts: int = -1
    sessions: int = 0
    events: int = 0
    previous_session_end: int = -1
    session_start: int = 0
    session_pages: int = 0
    session_dwell_ms: int = 0
    session_banner_clicks: int = 0
    session_categories: list[str] = msgspec.field(default_factory=list)
    context: dict[str, str] = msgspec.field(default_factory=dict)
    pending: list[PendingLabel] = msgspec.field(default_factory=list)
    loyal: bool = False
    return_probability: float | None = None
    loyalty: float | None = None


def referrer_class(referrer: str | None) -> str:
    """A referrer URL reduced to a small vocabulary (never the URL itself).

    >>> referrer_class("https://www.google.com/search?q=x"), referrer_class(None)
    ('search', 'direct')
    """
    if not referrer:
        return "direct"
    host = referrer.split("//", 1)[-1].split("/", 1)[0].lower()
    if any(name in host for name in ("google.", "bing.", "duckduckgo.", "yahoo.", "ecosia.")):
        return "search"
    social = ("instagram.", "facebook.", "pinterest.", "tiktok.", "twitter.", "x.com", "t.co")
    if any(name in host for name in social):
        return "social"
    return "other"


def features_of(state: LoyaltyState, now_ms: int) -> dict[str, Any]:
    """The features at ``now_ms``: categorical context and behaviour so far, nothing later."""
    minutes = max(0, now_ms - state.session_start) / 60_000
    since = (
        (state.session_start - state.previous_session_end) / 3_600_000
        if state.previous_session_end >= 0
        else -1.0
    )
    out: dict[str, Any] = dict(state.context)
    out.update(
        sessions=state.sessions,
        events=state.events,
        hours_since_previous=since,
        session_minutes=minutes,
        pages=state.session_pages,
        categories=len(state.session_categories),
        dwell_minutes=state.session_dwell_ms / 60_000,
        banner_clicks=state.session_banner_clicks,
        tenure_days=max(0, now_ms - state.first_ts) / DAY_MS if state.first_ts >= 0 else 0.0,
    )
    return out


def with_recency(features: Mapping[str, Any], hours: float) -> dict[str, Any]:
    """``features`` asked ``hours`` after they were taken (the user silent since): the
    silence itself, and relative to the user's mean gap between sessions so far."""
    out = dict(features)
    out["recency_hours"] = hours
    sessions = int(features.get("sessions", 1))
    tenure_hours = float(features.get("tenure_days", 0.0)) * 24
    mean_gap = tenure_hours / (sessions - 1) if sessions > 1 else None
    out["recency_per_gap"] = hours / max(mean_gap, 1.0) if mean_gap is not None else -1.0
    return out


_CHECKINS = (0, 24, 72, 168, 336, 720, 1440, 2160, 4320)


def _checkin_of(hours: float) -> int:
    """The latest default check-in at or before ``hours`` of silence."""
    return max((c for c in _CHECKINS if c <= hours), default=0)


def encode(
    features: Mapping[str, Any], numeric: Sequence[str] = BEHAVIOUR_FEATURES
) -> dict[str, float]:
    """Hand-encoded features for the linear model: one-hot strings, log-scaled counts.

    About 7x cheaper per example than River's generic Select | OneHotEncoder |
    StandardScaler pipeline (docs/benchmarks.md); the transforms keep every value within ~0..2.

    >>> encode({"device": "mobile", "sessions": 3, "hours_since_previous": -1.0})
    {'device=mobile': 1.0, 'sessions': 0.6931471805599453, 'first_session': 1.0}
    """
    out: dict[str, float] = {}
    for name, value in features.items():
        if isinstance(value, str):
            out[f"{name}={value}"] = 1.0
    for name in numeric:
        value = features.get(name)
        if value is None:
            continue
        if name in ("hours_since_previous", "recency_per_gap"):
            if value < 0:
                out["first_session"] = 1.0
            elif value:
                out[name] = math.log1p(value) / 5.0
        elif name == "recency_hours":
            if value:
                out[name] = math.log1p(value) / 5.0
            # Silent for at least this check-in: one weight per step of silence, so the
            # linear model can bend with it (scoring maps any silence to its check-in).
            out[f"silent>={_checkin_of(value)}h"] = 1.0
        elif value:
            out[name] = math.log1p(float(value)) / 2.0
    return out


class _Model:
    """One River classifier per (target, kind); ``frequency`` is the baseline."""

    def __init__(self, kind: str, config: LoyaltyConfig) -> None:
        from river import forest, linear_model, optim, tree

        self.kind = kind
        self.examples = 0
        self.classifier: Any
        if kind in ("logistic", "frequency"):
            # AdaGrad: per-feature step sizes suit one-hot context next to dense counts;
            # plain SGD needed 0.01 on the simulation and 0.2 on purchase logs (evaluation.md).
            self.classifier = linear_model.LogisticRegression(
                optimizer=optim.AdaGrad(config.learning_rate),
                intercept_lr=0.01,
            )
        elif kind == "tree":
            self.classifier = tree.HoeffdingAdaptiveTreeClassifier(seed=config.seed)
        elif kind == "forest":
            self.classifier = forest.ARFClassifier(n_models=10, seed=config.seed)
        else:
            raise ValueError(f"unknown model kind {kind!r}")

    def x(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """The model's input for ``features`` (encode once, predict and learn with it)."""
        if self.kind == "frequency":
            return encode({k: features.get(k, 0) for k in FREQUENCY_FEATURES}, FREQUENCY_FEATURES)
        if self.kind == "logistic":
            return encode(features)
        # Trees split on raw values and categories themselves.
        return {k: v for k, v in features.items() if isinstance(v, str | int | float)}

    def predict(self, features: Mapping[str, Any], x: dict[str, Any] | None = None) -> float:
        if self.examples == 0:
            return 0.5
        proba = self.classifier.predict_proba_one(self.x(features) if x is None else x)
        return float(proba.get(True, 0.0))

    def learn(
        self, features: Mapping[str, Any], label: bool, x: dict[str, Any] | None = None
    ) -> None:
        self.classifier.learn_one(self.x(features) if x is None else x, label)
        self.examples += 1

    def weights(self) -> dict[str, float]:
        weights = getattr(self.classifier, "weights", None)
        return dict(weights) if weights is not None else {}


class LiveMetrics:
    """ROC AUC, log loss and expected calibration error over the last ``window`` labels.

    >>> live = LiveMetrics(window=4)
    >>> for p, y in [(0.9, True), (0.8, True), (0.3, False), (0.6, False)]:
    ...     live.update(p, y)
    >>> live.roc_auc(), round(live.log_loss(), 3), live.count
    (1.0, 0.4, 4)
    """

    def __init__(self, window: int, bins: int = 10) -> None:
        self.pairs: deque[tuple[float, bool]] = deque(maxlen=window)
        self.bins = bins

    def update(self, probability: float, label: bool) -> None:
        self.pairs.append((probability, label))

    @property
    def count(self) -> int:
        return len(self.pairs)

    def roc_auc(self) -> float | None:
        return roc_auc([p for p, _ in self.pairs], [y for _, y in self.pairs])

    def log_loss(self) -> float | None:
        if not self.pairs:
            return None
        total = 0.0
        for p, y in self.pairs:
            p = min(max(p, 1e-6), 1 - 1e-6)
            total -= math.log(p if y else 1 - p)
        return total / len(self.pairs)

    def expected_calibration_error(self) -> float | None:
        """Share-weighted |mean prediction - positive rate| over equal-width bins."""
        if not self.pairs:
            return None
        sums = [[0.0, 0.0, 0] for _ in range(self.bins)]
        for p, y in self.pairs:
            cell = sums[min(int(p * self.bins), self.bins - 1)]
            cell[0] += p
            cell[1] += y
            cell[2] += 1
        n = len(self.pairs)
        return sum(abs(s[0] - s[1]) / n for s in sums if s[2])

    def positive_rate(self) -> float | None:
        return sum(y for _, y in self.pairs) / len(self.pairs) if self.pairs else None


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Exact ROC AUC (Mann-Whitney U with tied scores counted half); None with one class.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    positives = sum(1 for y in labels if y)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average_rank = (i + j) / 2 + 1
        rank_sum += average_rank * sum(1 for k in range(i, j + 1) if labels[order[k]])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class LoyaltyModels:
    """The served and learned models of both targets, plus the frequency baseline.

    ``predict`` serves; ``learn`` is predict-then-learn on a resolved example: its stored
    prediction (made at the prediction time, possibly by another worker's copy of the model)
    is scored into the live metrics before the model learns the label.
    """

    def __init__(self, config: LoyaltyConfig) -> None:
        self.config = config
        self.models = {t: _Model(config.model, config) for t in TARGETS}
        self.baselines = {t: _Model("frequency", config) for t in TARGETS}
        self.live = {
            (t, kind): LiveMetrics(config.metric_window, config.calibration_bins)
            for t in TARGETS
            for kind in (config.model, "frequency", "served")
        }
        self.examples_learned = 0

    def predict(self, target: str, features: Mapping[str, Any]) -> tuple[float, float]:
        """(model probability, baseline probability)."""
        return self.models[target].predict(features), self.baselines[target].predict(features)

    def predict_targets(self, features: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
        """``predict`` for every target, encoding the features once per model kind."""
        x = self.models[TARGETS[0]].x(features)
        xb = self.baselines[TARGETS[0]].x(features)
        return {
            t: (self.models[t].predict(features, x), self.baselines[t].predict(features, xb))
            for t in TARGETS
        }

    def learn(self, example: ResolvedExample) -> None:
        """Progressive validation, then learning: the model and the baseline score the
        example's features (from its prediction time) before they learn its label, so no
        model is ever scored on a label it has seen. What was *served* at the prediction time
        is tracked apart (kind ``served``): early on it came from a younger model."""
        target, features = example.target, example.features
        model, baseline = self.models[target], self.baselines[target]
        x, xb = model.x(features), baseline.x(features)
        if example.served:  # live metrics judge the question the worker serves
            label = example.label
            self.live[(target, self.config.model)].update(model.predict(features, x), label)
            self.live[(target, "frequency")].update(baseline.predict(features, xb), label)
            self.live[(target, "served")].update(example.prediction, label)
        model.learn(features, example.label, x)
        baseline.learn(features, example.label, xb)
        self.examples_learned += 1

    def strongest_features(self, target: str, n: int = 10) -> list[tuple[str, float]]:
        """The linear model's largest weights by magnitude (empty for trees)."""
        weights = self.models[target].weights()
        return sorted(weights.items(), key=lambda kv: -abs(kv[1]))[:n]

    # --- snapshots: signed, so nothing unsigned is ever unpickled -------------------------
    def snapshot(self, key: bytes) -> bytes:
        """The models (not the live metrics) pickled and signed with HMAC-SHA256."""
        state = {
            "model": self.config.model,
            "examples_learned": self.examples_learned,
            "models": self.models,
            "baselines": self.baselines,
        }
        return signed_pickle(state, key)

    def load(self, blob: bytes, key: bytes) -> bool:
        """Adopt a snapshot if it is signed with ``key``, of the configured model kind and
        newer than what is held (more examples learned). Raises ``ValueError`` on a bad
        signature; returns False when the snapshot is not newer or of another kind."""
        state = verified_unpickle(blob, key)
        if state["model"] != self.config.model:
            return False
        if state["examples_learned"] <= self.examples_learned:
            return False
        self.models = state["models"]
        self.baselines = state["baselines"]
        self.examples_learned = state["examples_learned"]
        return True


def _context_update(state: LoyaltyState, context: Mapping[str, str | None]) -> None:
    for name, value in context.items():
        if value is None:
            continue
        if name in state.context or len(state.context) < MAX_CONTEXT_KEYS:
            state.context[name] = value[:64]


def _snapshot(
    state: LoyaltyState,
    target: str,
    ts: int,
    deadline: int,
    features: dict[str, Any],
    predictions: tuple[float, float],
) -> None:
    """Set ``target``'s pending label to this moment: features and what was served now."""
    prediction, baseline = predictions
    for pending in state.pending:
        if pending.target == target:
            pending.ts, pending.deadline, pending.features = ts, deadline, features
            pending.step = 0
            pending.prediction, pending.baseline = prediction, baseline
            return
    state.pending.append(
        PendingLabel(
            target=target,
            ts=ts,
            deadline=deadline,
            features=features,
            prediction=prediction,
            baseline=baseline,
        )
    )


def _example(pending: PendingLabel, label: bool, now: int, hours: float = 0.0) -> ResolvedExample:
    if hours == 0.0:
        return ResolvedExample(
            target=pending.target,
            ts=pending.ts,
            resolved_at=now,
            label=label,
            features=pending.features,
            prediction=pending.prediction,
            baseline=pending.baseline,
        )
    return ResolvedExample(
        target=pending.target,
        ts=pending.ts + int(hours * 3_600_000),
        resolved_at=now,
        label=label,
        features=with_recency(pending.features, hours),
        prediction=-1.0,
        baseline=-1.0,
        recency_hours=hours,
    )


def _resolve(state: LoyaltyState, target: str, label: bool, now: int) -> list[ResolvedExample]:
    out = [_example(p, label, now) for p in state.pending if p.target == target]
    state.pending = [p for p in state.pending if p.target != target]
    return out


def _returned(state: LoyaltyState, now: int, config: LoyaltyConfig) -> list[ResolvedExample]:
    """The user is back at ``now``: every open check-in of the ended session is answered."""
    out: list[ResolvedExample] = []
    checkpoints = config.recency_checkpoints_hours
    for pending in [p for p in state.pending if p.target == "returns"]:
        gap = now - pending.ts
        for step in range(pending.step, len(checkpoints)):
            hours = checkpoints[step]
            if hours * 3_600_000 >= gap:
                break  # the user was back before this check-in: never asked
            label = gap <= hours * 3_600_000 + config.return_horizon_ms
            out.append(_example(pending, label, now, hours))
    state.pending = [p for p in state.pending if p.target != "returns"]
    return out


def observe(
    state: LoyaltyState,
    ts: int,
    context: Mapping[str, str | None],
    signals: Signals,
    config: LoyaltyConfig,
    models: LoyaltyModels,
    score_now: bool = True,
) -> list[ResolvedExample]:
    """Fold one event of the user into ``state``; return the labels it resolves.

    A late event (older than the user's latest) updates counts but never moves session
    boundaries or prediction times: what was predicted stays predicted.

    ``score_now=False`` leaves the scoring (``score``) to the caller, who calls it once
    per user per batch for the user's last event — and before any of the user's later events
    that does not ``supersede`` it — with the same result as scoring every event.
    """
    resolved: list[ResolvedExample] = []
    new_user = state.first_ts < 0
    late = not new_user and ts < state.last_ts
    new_session = new_user or (not late and ts - state.last_ts > config.session_gap_ms)
    if new_session:
        if not new_user:
            # The previous session ended at last_ts: its return question is answered now.
            resolved += _returned(state, ts, config)
            state.previous_session_end = state.last_ts
        else:
            state.first_ts = ts
        state.sessions += 1
        state.session_start = ts
        state.session_pages = 0
        state.session_dwell_ms = 0
        state.session_banner_clicks = 0
        state.session_categories = []
        context = {**context, "entry": signals.entry_type or "page",
                   "referrer": referrer_class(signals.referrer)}  # fmt: skip
        if state.sessions >= config.loyal_sessions and not state.loyal:
            on_time = ts - state.first_ts <= config.loyal_horizon_ms
            resolved += _resolve(state, "loyal", on_time, ts)
            state.loyal = on_time
    state.events += 1
    if not late:
        state.last_ts = ts
    _context_update(state, context)
    if signals.page:
        state.session_pages += 1
    state.session_dwell_ms += min(signals.dwell_ms, config.session_gap_ms)
    if signals.banner_click:
        state.session_banner_clicks += 1
    category = signals.category
    if (
        category
        and category not in state.session_categories
        and len(state.session_categories) < MAX_SESSION_CATEGORIES
    ):
        state.session_categories.append(category[:64])
    if score_now:
        score(state, ts, late, config, models)
    return resolved


def observe_event(
    state: LoyaltyState, event: Any, config: LoyaltyConfig, models: LoyaltyModels
) -> list[ResolvedExample]:
    """``observe(state, event.ts, context_of(event), signals_of(event), config, models,
    score_now=False)``: the same state and labels, with the common case (a later event of
    the user's current session, which resolves nothing) folded in place, without building
    the event's context and signals (nine events in ten of the simulator's stream; 2.7 µs
    per event off the slice in-process, docs/benchmarks.md).

    >>> from processors.events import PageView
    >>> config = LoyaltyConfig()
    >>> state, models = LoyaltyState(), LoyaltyModels(config)
    >>> view = PageView(event_id="e1", ts=1_000, user_id="u", category="pasta", device="mobile")
    >>> observe_event(state, view, config, models), state.sessions, state.session_pages
    ([], 1, 1)
    >>> later = PageView(event_id="e2", ts=2_000, user_id="u", category="soup", dwell_ms=500)
    >>> observe_event(state, later, config, models), state.session_categories, state.events
    ([], ['pasta', 'soup'], 2)
    """
    ts = event.ts
    last = state.last_ts
    if state.first_ts < 0 or ts < last or ts - last > config.session_gap_ms:
        return observe(
            state, ts, context_of(event), signals_of(event), config, models, score_now=False
        )
    state.events += 1
    state.last_ts = ts
    context = state.context
    for name, value in zip(CONTEXT_FIELDS, _context_values(event), strict=True):
        if value is not None and (name in context or len(context) < MAX_CONTEXT_KEYS):
            context[name] = value[:64]
    event_type = getattr(event, "type", "pageview")
    if event_type == "pageview":
        state.session_pages += 1
    state.session_dwell_ms += min(getattr(event, "dwell_ms", None) or 0, config.session_gap_ms)
    if getattr(event, "item_type", None) == "banner":
        if event_type == "click":
            state.session_banner_clicks += 1
        return []
    category = getattr(event, "category", None)
    categories = state.session_categories
    if category and category not in categories and len(categories) < MAX_SESSION_CATEGORIES:
        categories.append(category[:64])
    return []


def _context_values(event: Any) -> tuple[Any, ...]:
    """The event's ``CONTEXT_FIELDS`` values in order (one C call for a typed event)."""
    try:
        return _CONTEXT_GETTER(event)
    except AttributeError:  # an object without some of them
        return tuple(getattr(event, name, None) for name in CONTEXT_FIELDS)


_CONTEXT_GETTER = attrgetter(*CONTEXT_FIELDS)


def score(
    state: LoyaltyState, ts: int, late: bool, config: LoyaltyConfig, models: LoyaltyModels
) -> None:
    """The scores served after the user's event at ``ts`` and, unless it was ``late``, the
    pending labels' prediction time (``observe`` calls it; see ``score_now``)."""
    features = features_of(state, state.last_ts)
    scores = models.predict_targets(features)
    returns = scores["returns"]
    state.return_probability = round(returns[0], 4)
    if state.loyal:
        state.loyalty = 1.0
    else:
        loyal = scores["loyal"]
        state.loyalty = round(loyal[0], 4)
        if state.sessions == 1 and not late:
            deadline = state.first_ts + config.loyal_horizon_ms
            _snapshot(state, "loyal", ts, deadline, features, loyal)
    if not late:
        _snapshot(state, "returns", ts, ts + config.return_horizon_ms, features, returns)


def supersedes(state: LoyaltyState, ts: int, config: LoyaltyConfig) -> bool:
    """Whether scoring an event at ``ts`` would overwrite everything scoring the user's
    previous event wrote (same session, not late): then the previous one need not be scored.

    >>> state = LoyaltyState(first_ts=0, last_ts=1_000)
    >>> config = LoyaltyConfig()
    >>> supersedes(state, 2_000, config), supersedes(state, 500, config)
    (True, False)
    >>> supersedes(state, 1_000 + config.session_gap_ms + 1, config)  # a new session
    False
    """
    return ts >= state.last_ts and ts - state.last_ts <= config.session_gap_ms


def expire(state: LoyaltyState, watermark: int, config: LoyaltyConfig) -> list[ResolvedExample]:
    """Resolve as negative every pending label whose deadline event time has passed.

    ``watermark``: the latest event time seen (by the worker, or the evaluator's clock).
    """
    resolved: list[ResolvedExample] = []
    checkpoints = config.recency_checkpoints_hours
    for pending in [p for p in state.pending if p.deadline < watermark]:
        if pending.target != "returns":
            resolved += _resolve(state, pending.target, False, watermark)
            continue
        while pending.step < len(checkpoints) and pending.deadline < watermark:
            resolved.append(_example(pending, False, watermark, checkpoints[pending.step]))
            pending.step += 1
            if pending.step < len(checkpoints):
                pending.deadline = (
                    pending.ts
                    + int(checkpoints[pending.step] * 3_600_000)
                    + config.return_horizon_ms
                )
        if pending.step >= len(checkpoints):
            state.pending.remove(pending)
    return resolved


def win_back(state: LoyaltyState, threshold: float) -> bool:
    """Eligible for a win-back banner: a returning user (2+ sessions) whose probability of
    coming back is now below ``threshold``."""
    return (
        state.sessions >= 2
        and state.return_probability is not None
        and state.return_probability < threshold
    )


_example_encoder = msgspec.json.Encoder()
_example_decoder = msgspec.json.Decoder(ResolvedExample)


def encode_example(example: ResolvedExample) -> bytes:
    return _example_encoder.encode(example)


def decode_example(data: bytes) -> ResolvedExample:
    return _example_decoder.decode(data)


# --- retention drivers ---------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default).

    >>> [round(x, 4) for x in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class RateRow:
    attribute: str
    value: str
    users: int
    returned: int
    rate: float
    low: float
    high: float


REPORT_ATTRIBUTES = ("os", "browser", "device", "plan", "entry", "referrer", "country")


def retention_rates(
    examples: Iterable[ResolvedExample],
    attributes: Sequence[str] = REPORT_ATTRIBUTES,
    target: str = "returns",
    min_users: int = 1,
) -> list[RateRow]:
    """Share of resolved ``target`` labels that were positive, per attribute value, with
    Wilson 95% intervals. An example with no value for an attribute counts as ``na``; the
    check-ins after a session's end are left out (the question is the session's)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for example in examples:
        if example.target != target or not example.served:
            continue
        for attribute in attributes:
            value = example.features.get(attribute)
            cell = counts.setdefault((attribute, str(value) if value is not None else "na"), [0, 0])
            cell[0] += 1
            cell[1] += int(example.label)
    rows = []
    for (attribute, value), (n, positives) in counts.items():
        if n < min_users:
            continue
        low, high = wilson_interval(positives, n)
        rows.append(RateRow(attribute, value, n, positives, positives / n, low, high))
    order = {name: i for i, name in enumerate(attributes)}
    rows.sort(key=lambda r: (order.get(r.attribute, 99), -r.rate))
    return rows


def retention_report(
    examples: Iterable[ResolvedExample],
    strongest: Mapping[str, Sequence[tuple[str, float]]],
    min_users: int = 20,
) -> dict[str, Any]:
    """The retention report as JSON-ready data (the CLI's ``--json`` and ``/retention``)."""
    examples = [e for e in examples if e.target == "returns" and e.served]
    rows = retention_rates(examples, min_users=min_users)
    return {
        "labels": len(examples),
        "rates": [
            {
                "attribute": r.attribute,
                "value": r.value,
                "users": r.users,
                "returned": r.returned,
                "rate": round(r.rate, 4),
                "ci95": [round(r.low, 4), round(r.high, 4)],
            }
            for r in rows
        ],
        "strongest_features": {
            t: [[name, round(w, 4)] for name, w in pairs] for t, pairs in strongest.items()
        },
    }


# --- glue shared by the worker and the evaluators ----------------------------------------
def context_of(event: Any) -> dict[str, str | None]:
    """The categorical context an event carries (any object with these attributes)."""
    return {name: getattr(event, name, None) for name in CONTEXT_FIELDS}


def signals_of(event: Any) -> Signals:
    """What an event says about engagement: pages, categories, dwell, banner clicks."""
    item_type = getattr(event, "item_type", None)
    event_type = getattr(event, "type", "pageview")
    is_banner = item_type == "banner"
    return Signals(
        page=event_type == "pageview",
        entry_type=item_type,
        referrer=getattr(event, "referrer", None),
        category=None if is_banner else getattr(event, "category", None),
        dwell_ms=getattr(event, "dwell_ms", None) or 0,
        banner_click=is_banner and event_type == "click",
    )


class ExpiryQueue:
    """Users with pending labels, ordered by their earliest deadline (one entry per user).

    Bounded by the users with pending labels; a user whose deadline moved on is re-queued
    when popped, so nothing needs deleting from the heap. A forgotten user's entry stays
    until it comes due, skipped then (or until the heap is rebuilt without the forgotten:
    when one of them is queued again, or they are half the heap): rebuilding the heap at
    every forget request cost ~1.9 s with a million users queued.

    >>> queue = ExpiryQueue()
    >>> config = LoyaltyConfig(return_horizon_ms=10, recency_checkpoints_hours=(0,))
    >>> state = LoyaltyState(pending=[PendingLabel(target="returns", ts=0, deadline=10,
    ...                      features={}, prediction=0.5, baseline=0.5)])
    >>> queue.schedule("u1", state)
    >>> [(user, e.label) for user, e in queue.expire_due(11, {"u1": state}.get, config)]
    [('u1', False)]
    >>> len(queue)
    0
    """

    def __init__(self) -> None:
        # A binary heap by (deadline, user) kept in two parallel arrays: 16 bytes per queued
        # user, where a heap of (deadline, user) tuples held ~90 (the tuple and its int).
        self._deadlines = array("q")
        self._users: list[str] = []
        self._queued: set[str] = set()
        self._forgotten: set[str] = set()  # their entries are still in the heap

    def __len__(self) -> int:
        return len(self._queued)

    def schedule(self, user_id: str, state: LoyaltyState) -> None:
        if state.pending and user_id not in self._queued:
            if user_id in self._forgotten:  # one entry per user: the old one goes first
                self._rebuild()
            self._push(min(p.deadline for p in state.pending), user_id)
            self._queued.add(user_id)

    def forget(self, user_id: str) -> None:
        """Drop a user (a forget request): its entry is skipped when it comes due."""
        if user_id in self._queued:
            self._queued.discard(user_id)
            self._forgotten.add(user_id)
            if 2 * len(self._forgotten) > len(self._users):
                self._rebuild()

    def _rebuild(self) -> None:
        """The heap without the forgotten users' entries."""
        kept = sorted(
            (deadline, user)
            for deadline, user in zip(self._deadlines, self._users, strict=True)
            if user not in self._forgotten
        )
        self._deadlines = array("q", [deadline for deadline, _ in kept])
        self._users = [user for _, user in kept]
        self._forgotten.clear()

    def _before(self, i: int, j: int) -> bool:
        deadlines = self._deadlines
        return deadlines[i] < deadlines[j] or (
            deadlines[i] == deadlines[j] and self._users[i] < self._users[j]
        )

    def _swap(self, i: int, j: int) -> None:
        deadlines, users = self._deadlines, self._users
        deadlines[i], deadlines[j] = deadlines[j], deadlines[i]
        users[i], users[j] = users[j], users[i]

    def _push(self, deadline: int, user_id: str) -> None:
        self._deadlines.append(deadline)
        self._users.append(user_id)
        at = len(self._users) - 1
        while at > 0:
            parent = (at - 1) // 2
            if not self._before(at, parent):
                break
            self._swap(at, parent)
            at = parent

    def _pop(self) -> str:
        """Remove the earliest entry; returns its user."""
        last = len(self._users) - 1
        self._swap(0, last)
        self._deadlines.pop()
        user = self._users.pop()
        at = 0
        while True:
            child = 2 * at + 1
            if child >= last:
                break
            if child + 1 < last and self._before(child + 1, child):
                child += 1
            if not self._before(child, at):
                break
            self._swap(at, child)
            at = child
        return user

    def expire_due(
        self,
        watermark: int,
        lookup: Callable[[str], LoyaltyState | None],
        config: LoyaltyConfig,
        limit: int | None = None,
    ) -> list[tuple[str, ResolvedExample]]:
        """Resolve every label whose deadline is before ``watermark``, as (user, example);
        the labels of at most ``limit`` users (the earliest due), the rest left queued."""
        out: list[tuple[str, ResolvedExample]] = []
        users = 0
        while self._users and self._deadlines[0] < watermark:
            if limit is not None and users >= limit:
                break
            users += 1
            user_id = self._pop()
            if user_id in self._forgotten:
                self._forgotten.discard(user_id)
                continue
            self._queued.discard(user_id)
            state = lookup(user_id)
            if state is None:
                continue  # forgotten (evicted or deleted)
            out.extend((user_id, example) for example in expire(state, watermark, config))
            self.schedule(user_id, state)
        return out
