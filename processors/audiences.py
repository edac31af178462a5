"""Seed audiences and streaming look-alike models, with honest decile lift and
over/under-representation of categories and tags.

A brand brings seed users (its customers, matched by id). Per audience, an online River
logistic regression learns positives = seed members, negatives = a reservoir sample of
non-members (``negative_ratio`` negatives per positive), on features of the user profile
(decayed category and tag interests, device, country, frequency). A fixed share of
seed members (chosen by a hash of audience and user, so it never changes) is **held out**:
never learned, only used to measure lift. Deciles are by rank over the scored population
(equal counts) excluding the seeds the model trained on; the lift of a decile is its rate of
held-out seed members over the overall rate, with the counts behind every number.

>>> learner = AudienceLearner(AudienceConfig(holdout_share=0.0, negative_ratio=1))
>>> learner.membership.apply("vegans", "u1", add=True)
True
>>> for user, vegan in [("u1", 1.0), ("u2", 0.0), ("u3", 0.1), ("u1", 0.9)]:
...     learner.observe(user, {"cat=vegan": vegan, "cat=pasta": 1.0 - vegan})
>>> learner.score("vegans", {"cat=vegan": 1.0}) > learner.score("vegans", {"cat=pasta": 1.0})
True
"""

from __future__ import annotations

import math
import random
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from processors.user_state import UserState

Features = dict[str, float]


@dataclass(frozen=True, slots=True)
class AudienceConfig:
    holdout_share: float = 0.2  # of seed members, never learned: they measure the lift
    negative_ratio: int = 3  # non-members learned per seed member learned
    reservoir_size: int = 5_000  # non-member feature vectors kept (reservoir sampling)
    max_audiences: int = 100
    max_members: int = 1_000_000  # per audience
    population_size: int = 200_000  # users whose latest features the learner keeps (LRU)
    learning_rate: float = 0.1  # AdaGrad
    min_support: int = 30  # users with a category (in audience or rest) to test it
    interest_threshold: float = 0.3  # "has the category": normalised interest at least this
    seed: int = 7


def audience_features(state: UserState, now_ms: int, top: int = 10) -> Features:
    """The profile as model features: decayed category and tag interests (strongest = 1),
    device and country, frequency (sessions, events). Nothing about audience membership.

    No recency: it moves every idle user's score with the clock, so the decile cut points the
    learner published would drift away from the scores workers compute later (every user
    slides down a decile between snapshots). Recency acts as a filter instead: a user's
    segments expire with their hash's TTL.

    >>> from processors.events import PageView
    >>> from processors.user_state import UserStateConfig, apply_event
    >>> state = UserState(user_id="u", partition=0)
    >>> _ = apply_event(state, PageView(event_id="e", ts=0, user_id="u", item_id="r1",
    ...     item_type="recipe", category="vegan", tags=["quick"], device="mobile",
    ...     country="fr"), UserStateConfig())
    >>> sorted(audience_features(state, now_ms=3_600_000).items())
    [('cat=vegan', 1.0), ('country=fr', 1.0), ('device=mobile', 1.0), ('events', 0.3466), \
('sessions', 0.3466), ('tag=quick', 1.0)]
    """
    out: Features = {}
    if state.interests is not None:
        for category, weight in state.interests.normalised_top(top):
            out[f"cat={category}"] = round(weight, 4)
    if state.tag_interests is not None:
        for tag, weight in state.tag_interests.normalised_top(top):
            out[f"tag={tag}"] = round(weight, 4)
    device = (state.segment or "").split("-", 1)[0]
    if device and device != "na":
        out[f"device={device}"] = 1.0
    if state.location:
        out[f"country={state.location}"] = 1.0
    out["sessions"] = round(math.log1p(state.sessions) / 2.0, 4)
    out["events"] = round(math.log1p(state.events_applied) / 2.0, 4)
    return out


def held_out(audience_id: str, user_id: str, share: float) -> bool:
    """Stable split: the same seed member is held out (or not) on every worker, forever.

    >>> held_out("a", "u1", 0.0), held_out("a", "u1", 1.0)
    (False, True)
    """
    return zlib.crc32(f"{audience_id}\x1f{user_id}".encode()) % 10_000 < share * 10_000


class Membership:
    """Seed members per audience (bounded: ``max_audiences`` x ``max_members``)."""

    def __init__(self, max_audiences: int = 100, max_members: int = 1_000_000) -> None:
        self.max_audiences = max_audiences
        self.max_members = max_members
        self.members: dict[str, set[str]] = {}

    def apply(self, audience_id: str, user_id: str, add: bool) -> bool:
        """Add or remove one member; False when a bound refused it (or nothing changed)."""
        members = self.members.get(audience_id)
        if not add:
            if members is None or user_id not in members:
                return False
            members.discard(user_id)
            return True
        if members is None:
            if len(self.members) >= self.max_audiences:
                return False
            members = self.members[audience_id] = set()
        if user_id in members or len(members) >= self.max_members:
            return False
        members.add(user_id)
        return True

    def forget_user(self, user_id: str) -> int:
        removed = 0
        for members in self.members.values():
            if user_id in members:
                members.discard(user_id)
                removed += 1
        return removed

    def audiences(self) -> list[str]:
        return sorted(self.members)

    def size(self) -> int:
        return sum(len(m) for m in self.members.values())


class _Model:
    def __init__(self, config: AudienceConfig) -> None:
        from river import linear_model, optim

        self.classifier: Any = linear_model.LogisticRegression(
            optimizer=optim.AdaGrad(config.learning_rate), intercept_lr=0.01
        )
        self.positives = 0
        self.negatives = 0

    def learn(self, features: Features, label: bool) -> None:
        self.classifier.learn_one(features, label)
        if label:
            self.positives += 1
        else:
            self.negatives += 1

    def score(self, features: Features) -> float:
        if self.positives == 0:
            return 0.0
        return float(self.classifier.predict_proba_one(features).get(True, 0.0))


@dataclass(frozen=True, slots=True)
class DecileRow:
    decile: int  # 1 = the highest scores
    users: int
    responders: int  # held-out seed members in the decile
    rate: float
    lift: float
    cumulative_capture: float  # share of all held-out members in deciles 1..d
    min_score: float


@dataclass(frozen=True, slots=True)
class RepresentationRow:
    feature: str  # "cat=vegan", "tag=quick"
    audience_users: int
    audience_share: float
    rest_users: int
    rest_share: float
    ratio: float
    p_value: float
    q_value: float  # Benjamini-Hochberg over the features tested


class AudienceLearner:
    """Pure and incremental: the state a single learner keeps for every audience."""

    def __init__(self, config: AudienceConfig) -> None:
        self.config = config
        self.membership = Membership(config.max_audiences, config.max_members)
        self.models: dict[str, _Model] = {}
        self.population: OrderedDict[str, Features] = OrderedDict()  # latest features, LRU
        self.reservoir: list[tuple[str, Features]] = []
        self._seen = 0
        self._rng = random.Random(config.seed)
        self.examples_learned = 0

    # --- learning ---------------------------------------------------------------------
    def observe(self, user_id: str, features: Features) -> None:
        """A user's current profile features: learned for every audience they are a
        (training) seed of; otherwise a candidate negative."""
        population = self.population
        population[user_id] = features
        population.move_to_end(user_id)
        if len(population) > self.config.population_size:
            population.popitem(last=False)
        member_of = [a for a, m in self.membership.members.items() if user_id in m]
        for audience_id in member_of:
            self._learn_member(audience_id, user_id, features)
        if not member_of:
            self._reservoir_add(user_id, features)
        # Keep each model near negative_ratio negatives per positive also when the seeds
        # were learned before any non-member was seen (the reservoir was empty then).
        ratio = self.config.negative_ratio
        for audience_id, model in self.models.items():
            if audience_id not in member_of and model.negatives < ratio * model.positives:
                model.learn(features, False)

    def member_added(self, audience_id: str, user_id: str) -> bool:
        """Apply a seed addition; a user already seen is learned at once."""
        if not self.membership.apply(audience_id, user_id, add=True):
            return False
        features = self.population.get(user_id)
        if features is not None:
            self._learn_member(audience_id, user_id, features)
        return True

    def forget_user(self, user_id: str) -> list[str]:
        """Erase a user from memberships, the population and the reservoir; returns the
        audiences they were a seed of (their seed records are to be tombstoned)."""
        audiences = [a for a, m in self.membership.members.items() if user_id in m]
        self.membership.forget_user(user_id)
        self.population.pop(user_id, None)
        self.reservoir = [pair for pair in self.reservoir if pair[0] != user_id]
        return audiences

    def member_removed(self, audience_id: str, user_id: str) -> bool:
        return self.membership.apply(audience_id, user_id, add=False)

    def _learn_member(self, audience_id: str, user_id: str, features: Features) -> None:
        if held_out(audience_id, user_id, self.config.holdout_share):
            return
        model = self.models.get(audience_id)
        if model is None:
            model = self.models[audience_id] = _Model(self.config)
        model.learn(features, True)
        members = self.membership.members[audience_id]
        candidates = [pair for pair in self.reservoir if pair[0] not in members]
        for _ in range(min(self.config.negative_ratio, len(candidates))):
            model.learn(self._rng.choice(candidates)[1], False)
        self.examples_learned += 1

    def _reservoir_add(self, user_id: str, features: Features) -> None:
        self._seen += 1
        if len(self.reservoir) < self.config.reservoir_size:
            self.reservoir.append((user_id, features))
            return
        slot = self._rng.randrange(self._seen)
        if slot < self.config.reservoir_size:
            self.reservoir[slot] = (user_id, features)

    # --- scoring ----------------------------------------------------------------------
    def score(self, audience_id: str, features: Features) -> float:
        model = self.models.get(audience_id)
        return 0.0 if model is None else model.score(features)

    def _prospects(self, audience_id: str) -> list[tuple[float, str]]:
        """(score, user) of the population minus the seeds the model learned from."""
        members = self.membership.members.get(audience_id, set())
        share = self.config.holdout_share
        return [
            (self.score(audience_id, features), user_id)
            for user_id, features in self.population.items()
            if user_id not in members or held_out(audience_id, user_id, share)
        ]

    def decile_cuts(self, audience_id: str) -> list[float]:
        """Nine scores splitting the prospects into ten equal-count deciles (highest first):
        a score >= cuts[0] is decile 1, >= cuts[1] decile 2, ... else decile 10."""
        scores = sorted((s for s, _ in self._prospects(audience_id)), reverse=True)
        if not scores:
            return []
        n = len(scores)
        return [
            scores[min(n - 1, (n * d) // 10 - 1)] if n >= 10 else scores[-1] for d in range(1, 10)
        ]

    def lift_table(self, audience_id: str) -> list[DecileRow]:
        """Deciles by rank (equal counts) of the prospects, held-out members as responders."""
        ranked = sorted(self._prospects(audience_id), key=lambda pair: (-pair[0], pair[1]))
        members = self.membership.members.get(audience_id, set())
        share = self.config.holdout_share
        responders = [user in members and held_out(audience_id, user, share) for _, user in ranked]
        total = sum(responders)
        n = len(ranked)
        if n == 0:
            return []
        overall = total / n
        rows = []
        captured = 0
        for d in range(10):
            lo, hi = (n * d) // 10, (n * (d + 1)) // 10
            users = hi - lo
            hits = sum(responders[lo:hi])
            captured += hits
            rate = hits / users if users else 0.0
            rows.append(
                DecileRow(
                    decile=d + 1,
                    users=users,
                    responders=hits,
                    rate=rate,
                    lift=rate / overall if overall > 0 else 0.0,
                    cumulative_capture=captured / total if total else 0.0,
                    min_score=ranked[hi - 1][0] if users else 0.0,
                )
            )
        return rows

    def representation(self, audience_id: str) -> list[RepresentationRow]:
        """Which categories and tags are over- or under-represented among the audience's
        members (seen ones) against the rest of the population."""
        members = self.membership.members.get(audience_id, set())
        inside = [f for u, f in self.population.items() if u in members]
        outside = [f for u, f in self.population.items() if u not in members]
        return representation(inside, outside, self.config)

    def size(self) -> int:
        """Entries held (the gauge): members, population and reservoir feature vectors."""
        return self.membership.size() + len(self.population) + len(self.reservoir)


def _has(features: Mapping[str, float], name: str, threshold: float) -> bool:
    return features.get(name, 0.0) >= threshold


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test.

    >>> round(two_proportion_p(30, 100, 10, 100), 5)
    0.00041
    """
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """BH-adjusted q-values (monotone, capped at 1), in the input order.

    >>> [round(q, 4) for q in benjamini_hochberg([0.01, 0.04, 0.03, 0.5])]
    [0.04, 0.0533, 0.0533, 0.5]
    """
    n = len(p_values)
    order = sorted(range(n), key=lambda i: p_values[i])
    q = [0.0] * n
    running = 1.0
    for rank in range(n, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * n / rank)
        q[i] = min(running, 1.0)
    return q


def representation(
    inside: Sequence[Mapping[str, float]],
    outside: Sequence[Mapping[str, float]],
    config: AudienceConfig,
) -> list[RepresentationRow]:
    """Share of users with each category/tag (normalised interest >= threshold) inside vs
    outside, ratio, two-proportion z-test, BH q-values; features with fewer than
    ``min_support`` users having them are not tested."""
    names = {n for f in (*inside, *outside) for n in f if n.startswith(("cat=", "tag="))}
    tested: list[tuple[str, int, int]] = []
    for name in sorted(names):
        a = sum(1 for f in inside if _has(f, name, config.interest_threshold))
        b = sum(1 for f in outside if _has(f, name, config.interest_threshold))
        if a + b >= config.min_support:
            tested.append((name, a, b))
    p_values = [two_proportion_p(a, len(inside), b, len(outside)) for _, a, b in tested]
    q_values = benjamini_hochberg(p_values)
    rows = []
    for (name, a, b), p, q in zip(tested, p_values, q_values, strict=True):
        share_in = a / len(inside) if inside else 0.0
        share_out = b / len(outside) if outside else 0.0
        rows.append(
            RepresentationRow(
                feature=name,
                audience_users=a,
                audience_share=share_in,
                rest_users=b,
                rest_share=share_out,
                ratio=share_in / share_out if share_out else math.inf,
                p_value=p,
                q_value=q,
            )
        )
    rows.sort(key=lambda r: (r.q_value, -r.ratio))
    return rows


def decile_of(score: float, cuts: Sequence[float]) -> int:
    """1 (best) .. 10 for a score given ``decile_cuts``; 10 with no cuts.

    >>> decile_of(0.9, [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    1
    >>> decile_of(0.01, [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    10
    """
    for index, cut in enumerate(cuts):
        if score >= cut:
            return index + 1
    return 10


def as_dicts(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows (dataclasses) as JSON-ready dicts, floats rounded."""
    import dataclasses

    out = []
    for row in rows:
        item = dataclasses.asdict(row)
        out.append({k: round(v, 6) if isinstance(v, float) and math.isfinite(v) else v
                    for k, v in item.items()})  # fmt: skip
    return out


# --- the live pipeline's pure parts: seed records, snapshots, scoring -----------------------
SEED_ID_MAX = 128


def seed_key(audience_id: str, user_id: str) -> bytes:
    """The compaction key of one membership: the latest record per (audience, user) wins."""
    return f"{audience_id}/{user_id}".encode()


def valid_id(value: str) -> bool:
    """Audience and user ids: 1-128 printable characters; an audience id has no '/'.

    >>> valid_id("brand-42"), valid_id(""), valid_id("x" * 129)
    (True, False, False)
    """
    return 0 < len(value) <= SEED_ID_MAX and value.isprintable()


def parse_seed_record(key: bytes | None, value: bytes | None) -> tuple[str, str, bool] | None:
    """(audience, user, add) of a record of the seed topic; None if it is not valid.
    A null value is a removal (a tombstone).

    >>> parse_seed_record(b"vegans/u1", b"1"), parse_seed_record(b"vegans/u1", None)
    (('vegans', 'u1', True), ('vegans', 'u1', False))
    >>> parse_seed_record(b"no-slash", b"1") is None
    True
    """
    if key is None:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    audience_id, slash, user_id = text.partition("/")
    if not slash or not valid_id(audience_id) or not valid_id(user_id):
        return None
    return audience_id, user_id, value is not None


class AudienceScorer:
    """What every worker serves from: the newest snapshot of each audience's model and its
    decile cut points (and the learner's reports, for ``/audiences/{id}``)."""

    def __init__(self) -> None:
        self.models: dict[str, _Model] = {}
        self.cuts: dict[str, list[float]] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.generation = 0  # the learner's count of snapshots; grows

    def score(self, features: Features) -> dict[str, tuple[float, int]]:
        """audience -> (score, decile) for one user's features."""
        out = {}
        for audience_id, model in self.models.items():
            score = model.score(features)
            out[audience_id] = (round(score, 6), decile_of(score, self.cuts.get(audience_id, [])))
        return out

    def adopt(self, state: Mapping[str, Any]) -> bool:
        """A snapshot's contents (already verified); False if it is not newer."""
        if int(state["generation"]) <= self.generation:
            return False
        self.models = state["models"]
        self.cuts = state["cuts"]
        self.reports = state["reports"]
        self.generation = int(state["generation"])
        return True


def audience_update(
    previous: Mapping[str, int], scores: Mapping[str, tuple[float, int]]
) -> tuple[dict[str, dict[str, float | int]], list[tuple[str, int | None, int | None, float]]]:
    """The ``audiences`` field for one user and the segment moves from their previous
    deciles: (audience, decile to leave or None, decile to join or None, score).

    >>> audience_update({"a": 3, "gone": 1}, {"a": (0.9, 1)})
    ({'a': {'score': 0.9, 'decile': 1}}, [('a', 3, 1, 0.9), ('gone', 1, None, 0.0)])
    """
    payload: dict[str, dict[str, float | int]] = {}
    moves: list[tuple[str, int | None, int | None, float]] = []
    for audience_id, (score, decile) in scores.items():
        payload[audience_id] = {"score": score, "decile": decile}
        old = previous.get(audience_id)
        moves.append((audience_id, old if old != decile else None, decile, score))
    for audience_id, old in previous.items():
        if audience_id not in scores:
            moves.append((audience_id, old, None, 0.0))
    return payload, moves


def learner_snapshot(learner: AudienceLearner, generation: int) -> dict[str, Any]:
    """What the learner publishes: models, cut points and reports of every audience."""
    audiences = learner.membership.audiences()
    return {
        "generation": generation,
        "models": {a: m for a, m in learner.models.items() if a in audiences},
        "cuts": {a: learner.decile_cuts(a) for a in audiences},
        "reports": {
            a: {
                "audience_id": a,
                "members": len(learner.membership.members[a]),
                "population": len(learner.population),
                "lift": as_dicts(learner.lift_table(a)),
                "representation": as_dicts(learner.representation(a)),
            }
            for a in audiences
        },
    }
