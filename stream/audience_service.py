"""Audiences in the worker: seed membership, the learner, snapshots, live scoring, segments.

Seed changes arrive on the compacted ``{prefix}.audiences`` topic (key ``audience/user``,
null = removed), which every worker follows, so whichever worker owns the single-partition
examples topic (the learner) knows every audience. Workers send the audience features of
their touched users there (and of all their users once, when a new audience appears); the
learner learns and publishes signed snapshots (models, decile cut points, reports) that
every worker follows. Each worker scores its touched users with the newest snapshot, and
re-scores all its users when a new one arrives, writing the ``audiences`` field and the
``…:audience:{id}:decile:{d}`` sorted sets under one versioned compare-and-set per user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any, Protocol

import msgspec

from processors.audiences import (
    AudienceConfig,
    AudienceLearner,
    AudienceScorer,
    Features,
    audience_features,
    audience_update,
    learner_snapshot,
    parse_seed_record,
)
from processors.signing import signed_pickle, verified_unpickle
from processors.user_state import UserState
from state.redis_writer import SegmentWrite, UserHashWriter
from stream.metrics import Metrics

log = logging.getLogger(__name__)

SNAPSHOT_KEY = b"audiences"
FIELD = "audiences"
_json = msgspec.json.Encoder()


class HeldUsers(Protocol):
    """The worker's users (``state.tables.UserStateStore``)."""

    def items(self) -> Iterable[tuple[str, UserState]]: ...

    def user_ids(self) -> list[str]: ...

    def get(self, user_id: str, /) -> UserState | None: ...


class AudienceExample(msgspec.Struct, frozen=True):
    u: str  # user id
    f: dict[str, float]  # audience features


_examples_decoder = msgspec.json.Decoder(list[AudienceExample])
#: Examples per record of the examples topic (one record per batch, not one per user).
EXAMPLES_PER_RECORD = 500


class AudienceService:
    def __init__(self, config: AudienceConfig, metrics: Metrics, signing_key: bytes | None) -> None:
        self.learner = AudienceLearner(config)
        self.scorer = AudienceScorer()
        self.metrics = metrics
        self.signing_key = signing_key
        self._dirty = False  # the learner changed since its last snapshot
        self._rescored_generation = 0
        self._backfill = False  # a new audience appeared: send every user's features once
        self._rescore_queue: list[str] = []

    @property
    def active(self) -> bool:
        return bool(self.learner.membership.members)

    # --- seeds (every worker) -----------------------------------------------------------
    async def on_seed_record(self, record: Any) -> None:
        parsed = parse_seed_record(record.key, record.value)
        if parsed is None:
            self.metrics.audience_seeds.labels(result="rejected").inc()
            log.warning("invalid audience seed record at offset %s skipped", record.offset)
            return
        audience_id, user_id, add = parsed
        new_audience = add and audience_id not in self.learner.membership.members
        if add:
            changed = self.learner.member_added(audience_id, user_id)
        else:
            changed = self.learner.member_removed(audience_id, user_id)
        self._dirty |= changed
        self._backfill |= new_audience
        result = ("added" if add else "removed") if changed else "ignored"
        self.metrics.audience_seeds.labels(result=result).inc()

    # --- the learner (the worker owning the examples partition) -------------------------
    def learn(self, values: Iterable[bytes | None]) -> None:
        learner = self.learner
        if not learner.models and self.scorer.models:
            learner.models = dict(self.scorer.models)  # a new learner resumes the snapshot
        for value in values:
            if value is None:
                continue
            try:
                examples = _examples_decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("undecodable audience examples record skipped")
                continue
            for example in examples:
                learner.observe(example.u, example.f)
            self._dirty = True

    def snapshot_due(self) -> bytes | None:
        if not self._dirty or self.signing_key is None or not self.learner.population:
            return None
        self._dirty = False
        generation = max(int(time.time() * 1000), self.scorer.generation + 1)
        self.metrics.audience_snapshots.labels(result="published").inc()
        return signed_pickle(learner_snapshot(self.learner, generation), self.signing_key)

    # --- every worker -------------------------------------------------------------------
    def load_snapshot(self, blob: bytes | None) -> None:
        if blob is None or self.signing_key is None:
            return
        try:
            loaded = self.scorer.adopt(verified_unpickle(blob, self.signing_key))
        except Exception as error:  # bad signature, or a blob of an incompatible version
            log.error("audience snapshot rejected: %s", error)
            self.metrics.audience_snapshots.labels(result="rejected").inc()
            return
        self.metrics.audience_snapshots.labels(result="loaded" if loaded else "ignored").inc()

    def stage(
        self,
        user_id: str,
        state: UserState,
        writer: UserHashWriter,
        now_ms: int,
        only_if_moved: bool = False,
        features: Features | None = None,
    ) -> bool:
        """Score one user and stage the field and segment moves; True if anything was
        staged. ``only_if_moved``: skip users whose deciles did not change (re-scoring).
        ``features``: the user's ``audience_features`` at ``now_ms``, when the caller has
        them."""
        if features is None:
            features = audience_features(state, now_ms)
        scores = self.scorer.score(features)
        if not scores and not state.audience_deciles:
            return False
        if only_if_moved and {a: d for a, (_, d) in scores.items()} == state.audience_deciles:
            return False
        payload, moves = audience_update(state.audience_deciles, scores)
        state.audience_version += 1
        state.audience_deciles = {a: d for a, (_, d) in scores.items()}
        writer.stage_segments(
            user_id,
            SegmentWrite(
                FIELD,
                state.audience_version,
                _json.encode(payload),
                tuple(
                    (
                        None if old is None else writer.segment_key(audience, old),
                        None if new is None else writer.segment_key(audience, new),
                        score,
                    )
                    for audience, old, new, score in moves
                ),
            ),
        )
        return True

    async def after_batch(
        self,
        touched: dict[str, UserState],
        writer: UserHashWriter,
        examples: Any,
        now_ms: int,
    ) -> None:
        """Touched users: scored and staged (flushed with the batch), features to the
        learner while any audience exists. Each user's features are computed once for both
        (~9 µs a user, twice before)."""
        scoring, sending = bool(self.scorer.models), self.active and examples is not None
        if not scoring and not sending:
            return
        features = [
            (user_id, state, audience_features(state, now_ms)) for user_id, state in touched.items()
        ]
        if scoring:
            for user_id, state, user_features in features:
                self.stage(user_id, state, writer, now_ms, features=user_features)
        if sending:
            await self._send_examples(examples, [(user_id, f) for user_id, _, f in features])

    async def _send_examples(self, examples: Any, users: Iterable[tuple[str, Features]]) -> None:
        """One record per ``EXAMPLES_PER_RECORD`` users' (id, features), taken from ``users``
        as they come (a backfill decodes the held users one at a time, not all at once)."""
        pending = iter(users)
        while chunk := [
            AudienceExample(user_id, features)
            for user_id, features in islice(pending, EXAMPLES_PER_RECORD)
        ]:
            await examples.send(key=None, value=_json.encode(chunk))

    async def maintain(
        self,
        held: HeldUsers,
        writer: UserHashWriter,
        examples: Any,
        now_ms: int,
        limit: int = 1_000,
    ) -> dict[str, UserState]:
        """Periodic: send every user's features once after a new audience appeared, and
        re-score the held users (``limit`` per call) with the newest snapshot. Returns the
        states changed (to persist after the caller flushed the writer). ``held``: the
        worker's users, read only when there is something to do.

        Re-scoring goes in passes over the users held when it starts: a newer snapshot
        arriving meanwhile waits for the pass to end, then starts the next one. Snapshots
        come every few seconds while examples flow, and re-scoring costs ~30-60 µs a user
        (decoded, scored, staged) on the event loop: restarting every user's re-scoring at
        each snapshot, 20,000 a call, blocked the loop ~1.1 s a second and never reached
        the users past the first 40,000. Users a batch touches are scored with it anyway."""
        if self._backfill and examples is not None:
            self._backfill = False
            await self._send_examples(
                examples, ((user, audience_features(state, now_ms)) for user, state in held.items())
            )
        if not self._rescore_queue and self.scorer.generation > self._rescored_generation:
            self._rescored_generation = self.scorer.generation
            self._rescore_queue = held.user_ids()
        changed: dict[str, UserState] = {}
        if self._rescore_queue:
            batch = self._rescore_queue[-limit:]  # from the end: no copy of the rest
            del self._rescore_queue[-limit:]
            for user_id in batch:
                current = held.get(user_id)
                if current is not None and self.stage(
                    user_id, current, writer, now_ms, only_if_moved=True
                ):
                    changed[user_id] = current
        return changed

    def report(self, audience_id: str) -> dict[str, Any] | None:
        """The learner's latest report of an audience (from the newest snapshot)."""
        return self.scorer.reports.get(audience_id)
