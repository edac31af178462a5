"""The loyalty learner: one per deployment, fed by the single-partition examples topic.

Every worker resolves the labels of its own users and sends them, with the features and
the prediction of their prediction time, to ``{prefix}.loyalty.examples`` (one partition,
so the consumer group gives it to exactly one worker). That worker learns them in order
(predict-then-learn), exports the live metrics, and every ``loyalty_snapshot_seconds``
publishes an HMAC-signed snapshot of the models to the compacted ``{prefix}.loyalty.models``.
Every worker follows that topic and scores with the newest snapshot, so scores do not
depend on which worker owns a user, survive rebalances, and a restarted learner resumes
from the last snapshot (examples learned after it and before the crash are the loss
bound: at most one snapshot interval).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec

from processors.loyalty import (
    TARGETS,
    LoyaltyModels,
    ResolvedExample,
    decode_example,
    retention_report,
)
from stream.metrics import Metrics

log = logging.getLogger(__name__)

SNAPSHOT_KEY = b"loyalty"


class LoyaltyLearner:
    def __init__(
        self,
        models: LoyaltyModels,
        metrics: Metrics,
        signing_key: bytes | None,
        reservoir: int = 50_000,
    ) -> None:
        self.models = models
        self.metrics = metrics
        self.signing_key = signing_key
        #: The latest resolved examples, for the retention report (bounded).
        self.recent: deque[ResolvedExample] = deque(maxlen=reservoir)
        self._published = models.examples_learned

    def learn(self, values: Iterable[bytes | None]) -> int:
        learned = 0
        for value in values:
            if value is None:
                continue
            try:
                example = decode_example(value)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                log.warning("undecodable loyalty example skipped")
                continue
            if example.target not in TARGETS:
                continue
            self.models.learn(example)
            self.recent.append(example)
            learned += 1
        self.metrics.loyalty_examples_learned.inc(learned)
        return learned

    def snapshot_due(self) -> bytes | None:
        """A signed snapshot if the models learned anything since the last one."""
        if self.signing_key is None or self.models.examples_learned == self._published:
            return None
        self._published = self.models.examples_learned
        self.metrics.loyalty_snapshots.labels(result="published").inc()
        return self.models.snapshot(self.signing_key)

    def load(self, blob: bytes | None) -> None:
        """A snapshot from the models topic (possibly our own, then not newer: ignored)."""
        if blob is None or self.signing_key is None:
            return
        try:
            loaded = self.models.load(blob, self.signing_key)
        except Exception as error:  # a bad signature or a blob from an incompatible version
            log.error("loyalty model snapshot rejected: %s", error)
            self.metrics.loyalty_snapshots.labels(result="rejected").inc()
            return
        if loaded:
            self._published = self.models.examples_learned
        self.metrics.loyalty_snapshots.labels(result="loaded" if loaded else "ignored").inc()

    def update_gauges(self) -> None:
        metrics = self.metrics
        for (target, kind), live in self.models.live.items():
            if live.count == 0:
                continue
            labels = {"target": target, "model": kind}
            metrics.loyalty_window_labels.labels(**labels).set(live.count)
            for gauge, value in (
                (metrics.loyalty_roc_auc, live.roc_auc()),
                (metrics.loyalty_log_loss, live.log_loss()),
                (metrics.loyalty_calibration_error, live.expected_calibration_error()),
            ):
                if value is not None:
                    gauge.labels(**labels).set(value)

    def retention_report(self, min_users: int = 20) -> dict[str, Any]:
        """Return rates by attribute (Wilson 95%) and the model's strongest features."""
        strongest = {t: self.models.strongest_features(t) for t in TARGETS}
        return {"examples": len(self.recent), **retention_report(self.recent, strongest, min_users)}
