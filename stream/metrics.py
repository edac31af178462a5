"""Prometheus metrics, registered on an injected registry (never the global one)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from processors.events import REJECT_REASONS
from processors.pipeline import SLICE_PHASES

#: Seconds; fine around the 250 ms event->Redis target (docs/operations.md), where a quantile
#: read as its bucket's upper bound would otherwise jump from 0.25 to 0.5 s, and between 1 and
#: 2.5 s, where the bench's half-rate phase lands (a worker near its capacity): with no bucket
#: between them, every p99 from 1 to 2.5 s read 2.5 s.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.25, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: The stages of a batch's handling whose CPU time the worker counts
#: (``appetence_batch_stage_cpu_seconds_total``, stream/handler.py).
BATCH_STAGES = (
    "decode", "recovery", "slice", "output", "audiences", "redis", "changelog", "other",
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
#: Seconds: a young collection takes well under a millisecond, a full one over a worker's
#: whole heap tens to hundreds of them.
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: The cyclic collector's generations (``gc.callbacks``' ``info["generation"]``).
GC_GENERATIONS = ("0", "1", "2")


class Metrics:
    """Every metric the worker exports. Labels never carry user or item ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # process_cpu_seconds_total, process_resident_memory_bytes, ...: the whole worker's
        # CPU, against which the batch stages' CPU below is read
        ProcessCollector(registry=registry)
        self.events_consumed = Counter(
            "appetence_events_consumed_total",
            "Valid events applied to state, by event type",
            ["type"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "appetence_events_rejected_total",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.events_duplicate = Counter(
            "appetence_events_duplicate_total",
            "Events ignored because their event_id was already applied",
            registry=registry,
        )
        self.sequence_gaps = Counter(
            "appetence_sequence_gaps_total",
            "Per-user sequence numbers that skipped ahead (events carrying seq)",
            registry=registry,
        )
        self.records_consumed = Counter(
            "appetence_records_consumed_total",
            "Kafka records consumed (a record holds one event or a batch of events)",
            registry=registry,
        )
        self.processing_seconds = Histogram(
            "appetence_batch_processing_seconds",
            "Wall time to decode, process, persist and write one batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_stage_cpu_seconds = Counter(
            "appetence_batch_stage_cpu_seconds",
            "CPU time of the batch loop's thread, by stage of batch handling: decode, recovery "
            "(partitions read from the changelog after a rebalance), slice (the processors), "
            "output (slates' and profiles' JSON), audiences, redis (the client's side of the "
            "writes), changelog (state records and their sends), other",
            ["stage"],
            registry=registry,
        )
        self.slice_phase_cpu_seconds = Counter(
            "appetence_slice_phase_cpu_seconds",
            "CPU time of the slice stage (appetence_batch_stage_cpu_seconds_total{stage="
            '"slice"}) by phase of the processors: apply (the events into the user states and '
            "models), learn (the next-click model's tables), loyalty (scoring), expiry (pending "
            "labels), tops (interest), profiles, slates (recipe and product), banner_contexts, "
            "banners",
            ["phase"],
            registry=registry,
        )
        self.event_to_redis_seconds = Histogram(
            "appetence_event_to_redis_seconds",
            "From the Kafka record timestamp to the Redis write that reflects it",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_wait_seconds = Histogram(
            "appetence_event_wait_seconds",
            "From the Kafka record timestamp to the start of the batch that holds it (fetching"
            " and waiting for the worker: the part of event->Redis before the batch's handling)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_records = Histogram(
            "appetence_batch_records",
            "Records per processed batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batches_catching_up = Counter(
            "appetence_batch_catch_up_total",
            "Batches taken with the catch-up window (the consumer lagged; see batch_window)",
            registry=registry,
        )
        self.batch_max_bytes = Gauge(
            "appetence_batch_max_bytes",
            "Input bytes the next batch may hold: what the worker handles in "
            "APPETENCE_BATCH_MAX_SECONDS of CPU, at most APPETENCE_BATCH_MAX_BYTES",
            registry=registry,
        )
        self.batch_events = Histogram(
            "appetence_batch_events",
            "Events per processed batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.redis_writes = Counter(
            "appetence_redis_writes_total",
            "Per-user Redis writes by result: ok, stale (a newer version was there), error (users "
            "in a failed flush attempt, counted per attempt; the write is retried)",
            ["result"],
            registry=registry,
        )
        self.redis_write_seconds = Histogram(
            "appetence_redis_write_seconds",
            "Wall time of one pipelined Redis flush",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "appetence_consumer_lag_messages",
            "Highwater minus next offset to process, per input partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.users_in_state = Gauge(
            "appetence_users_in_state",
            "Users whose state this worker holds",
            registry=registry,
        )
        self.longest_session_events = Gauge(
            "appetence_longest_session_events",
            "The most events in one user's current session among the latest batch's users: a "
            "user id many visitors share (one id for every anonymous visitor) or a bot's has a "
            "session that never ends",
            registry=registry,
        )
        self.user_state_bytes = Gauge(
            "appetence_user_state_bytes",
            "Size of the user states this worker holds (encoded, as on the changelog)",
            registry=registry,
        )
        self.user_states_decoded = Gauge(
            "appetence_user_states_decoded",
            "Recently persisted user states also kept decoded (bounded: user_states_decoded)",
            registry=registry,
        )
        self.user_states_uncommitted = Gauge(
            "appetence_user_states_uncommitted",
            "Changed user states not yet on the changelog, their input's offsets not yet "
            "committed (bounded: state_commit_max_users)",
            registry=registry,
        )
        self.state_commits = Counter(
            "appetence_state_commits_total",
            "Times the changed user states went to the changelog and their input was acked",
            registry=registry,
        )
        self.popularity_entries = Gauge(
            "appetence_popularity_entries",
            "Entries in the decayed popularity index (bounded)",
            registry=registry,
        )
        self.cooccurrence_entries = Gauge(
            "appetence_cooccurrence_entries",
            "Neighbour-row entries plus remembered visitor items of the next-click model (bounded)",
            registry=registry,
        )
        self.banner_ctr_entries = Gauge(
            "appetence_banner_ctr_entries",
            "Banner x segment CTR posteriors held (bounded)",
            registry=registry,
        )
        self.catalog_records = Counter(
            "appetence_catalog_records_total",
            "Valid catalog records applied",
            registry=registry,
        )
        self.catalog_rejected = Counter(
            "appetence_catalog_rejected_total",
            "Invalid catalog records sent to the catalog dead-letter topic",
            ["reason"],
            registry=registry,
        )
        self.catalog_banners = Gauge(
            "appetence_catalog_banners", "Banners in the catalog", registry=registry
        )
        self.catalog_items = Gauge(
            "appetence_catalog_items", "Recipes and products in the catalog", registry=registry
        )
        self.changelog_send_failures = Counter(
            "appetence_changelog_send_failures_total",
            "Failed attempts to hand a batch's user states to the changelog producer (the batch "
            "waits and retries; a stopping worker leaves it unacked)",
            registry=registry,
        )
        self.state_evictions = Counter(
            "appetence_user_state_evictions_total",
            "User states deleted after the idle TTL",
            registry=registry,
        )
        self.loyalty_labels_resolved = Counter(
            "appetence_loyalty_labels_resolved_total",
            "Loyalty labels resolved by event time, by target and outcome",
            ["target", "outcome"],
            registry=registry,
        )
        self.loyalty_examples_learned = Counter(
            "appetence_loyalty_examples_learned_total",
            "Resolved labels the loyalty learner learned (predict-then-learn)",
            registry=registry,
        )
        self.loyalty_snapshots = Counter(
            "appetence_loyalty_snapshots_total",
            "Loyalty model snapshots: published, loaded, ignored (not newer), rejected (bad "
            "signature or undecodable)",
            ["result"],
            registry=registry,
        )
        self.loyalty_pending_labels = Gauge(
            "appetence_loyalty_pending_users",
            "Users with loyalty labels waiting for their horizon (bounded by users in state)",
            registry=registry,
        )
        live_labels = ["target", "model"]
        self.loyalty_roc_auc = Gauge(
            "appetence_loyalty_roc_auc",
            "Live ROC AUC over the sliding window of resolved labels (learner only)",
            live_labels,
            registry=registry,
        )
        self.loyalty_log_loss = Gauge(
            "appetence_loyalty_log_loss",
            "Live log loss over the sliding window of resolved labels (learner only)",
            live_labels,
            registry=registry,
        )
        self.loyalty_calibration_error = Gauge(
            "appetence_loyalty_calibration_error",
            "Live expected calibration error (10 bins) over the window (learner only)",
            live_labels,
            registry=registry,
        )
        self.loyalty_window_labels = Gauge(
            "appetence_loyalty_window_labels",
            "Resolved labels in the live metrics window (learner only)",
            live_labels,
            registry=registry,
        )
        self.audience_seeds = Counter(
            "appetence_audience_seeds_total",
            "Seed membership records applied: added, removed, ignored (no change or over a "
            "bound), rejected (invalid)",
            ["result"],
            registry=registry,
        )
        self.audience_snapshots = Counter(
            "appetence_audience_snapshots_total",
            "Audience model snapshots: published, loaded, ignored (not newer), rejected",
            ["result"],
            registry=registry,
        )
        self.audience_members = Gauge(
            "appetence_audience_members",
            "Seed members over all audiences (bounded per audience)",
            registry=registry,
        )
        self.audience_entries = Gauge(
            "appetence_audience_learner_entries",
            "Members, population and reservoir feature vectors the audience learner holds",
            registry=registry,
        )
        self.last_batch_timestamp = Gauge(
            "appetence_last_batch_timestamp_seconds",
            "When this worker last finished a batch of events (slates written): freshness",
            registry=registry,
        )
        self.gc_pause_seconds = Histogram(
            "appetence_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector in this process, by generation: the "
            "batch loop stands still while it runs (APPETENCE_GC_YOUNG_THRESHOLD)",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=registry,
        )
        self.users_forgotten = Counter(
            "appetence_users_forgotten_total",
            "Forget requests applied by this worker (state, visitor memory, audiences, Redis)",
            registry=registry,
        )
        self.events_forgotten = Counter(
            "appetence_events_forgotten_total",
            "Events dropped because their user asked to be forgotten after they happened",
            registry=registry,
        )
        self.forgotten_users = Gauge(
            "appetence_forgotten_users",
            "Forget requests remembered to drop the user's older in-flight events (bounded)",
            registry=registry,
        )
        for result in ("added", "removed", "ignored", "rejected"):
            self.audience_seeds.labels(result=result)
        for result in ("published", "loaded", "ignored", "rejected"):
            self.audience_snapshots.labels(result=result)
        for target in ("returns", "loyal"):
            for outcome in ("positive", "negative"):
                self.loyalty_labels_resolved.labels(target=target, outcome=outcome)
        for result in ("published", "loaded", "ignored", "rejected"):
            self.loyalty_snapshots.labels(result=result)
        for reason in REJECT_REASONS:
            self.events_rejected.labels(reason=reason)
            self.catalog_rejected.labels(reason=reason)
        for result in ("ok", "stale", "error"):
            self.redis_writes.labels(result=result)
        for event_type in ("pageview", "click", "impression"):
            self.events_consumed.labels(type=event_type)
        # every stage, phase and generation exported from the start, 0 until it spends any
        for stage in BATCH_STAGES:
            self.batch_stage_cpu_seconds.labels(stage=stage)
        for phase in SLICE_PHASES:
            self.slice_phase_cpu_seconds.labels(phase=phase)
        for generation in GC_GENERATIONS:
            self.gc_pause_seconds.labels(generation=generation)


class GcPauseTimer:
    """Times each run of the cyclic garbage collector into a histogram by generation, as a
    ``gc.callbacks`` entry (``install`` / ``remove``; one per process: the callbacks are the
    interpreter's).

    Each generation's child is looked up once, here: the callback runs inside whatever
    allocation triggered the collection, so it only adds to values (no label lookup, no
    allocation under a lock a scrape might hold).

    >>> from prometheus_client import CollectorRegistry
    >>> metrics = Metrics(CollectorRegistry())
    >>> ticks = iter([1.0, 1.25])
    >>> timer = GcPauseTimer(metrics.gc_pause_seconds, clock=lambda: next(ticks))
    >>> timer("start", {"generation": 2}); timer("stop", {"generation": 2})
    >>> metrics.registry.get_sample_value("appetence_gc_pause_seconds_sum", {"generation": "2"})
    0.25
    """

    def __init__(self, histogram: Histogram, clock: Callable[[], float] = time.perf_counter):
        self._children = [histogram.labels(generation=g) for g in GC_GENERATIONS]
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            pause = self._clock() - self._started
            self._started = None
            generation = info.get("generation", 0)
            if 0 <= generation < len(self._children):
                self._children[generation].observe(pause)

    def install(self) -> GcPauseTimer:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        while self in gc.callbacks:
            gc.callbacks.remove(self)


class CollectorMetrics:
    """What ``appetence collector`` exports (its own registry, its own /metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "appetence_collector_requests_total",
            "HTTP requests to POST /v1/events by status code",
            ["status"],
            registry=registry,
        )
        self.events = Counter(
            "appetence_collector_events_total",
            "Events received by result (accepted: produced to Kafka; rejected: dead-lettered)",
            ["result"],
            registry=registry,
        )
        self.rejected = Counter(
            "appetence_collector_events_rejected_total",
            "Events the collector rejected, by reason",
            ["reason"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "appetence_collector_request_seconds",
            "From request to Kafka's acknowledgement of its events (202 answers)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.buffer_bytes = Gauge(
            "appetence_collector_buffer_bytes",
            "Request bytes awaiting Kafka's acknowledgement (bounded)",
            registry=registry,
        )
        self.buffer_full = Counter(
            "appetence_collector_buffer_full_total",
            "Requests refused with 503 because the producer buffer was full",
            registry=registry,
        )
        self.records = Counter(
            "appetence_collector_records_total",
            "Event records (batch envelopes) produced to Kafka: accepted events over records is "
            "how many events a worker's per-record cost is shared by",
            registry=registry,
        )
        self.produce_errors = Counter(
            "appetence_collector_produce_errors_total",
            "Requests refused with 503 because Kafka did not acknowledge in time",
            registry=registry,
        )
        for status in ("202", "400", "413", "429", "503"):
            self.requests.labels(status=status)
        for result in ("accepted", "rejected"):
            self.events.labels(result=result)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
