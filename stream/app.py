"""The composition root: ``create_app(settings, registry)`` wires the Faust app and its parts.

Nothing here runs at import time; the CLI loads Settings once and calls ``create_app``.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from processors.events import EventDecoder
from processors.forget import ForgottenUsers
from processors.pipeline import SliceProcessor
from state.changelog_io import AIOKafkaPartitionReader, FaustTopicWriter
from state.redis_writer import UserHashWriter, pack_with_hiredis
from state.tables import UserStateStore
from stream.audience_api import audience_members_request
from stream.audience_service import SNAPSHOT_KEY as AUDIENCE_SNAPSHOT_KEY
from stream.audience_service import AudienceService
from stream.batching import INITIAL_BATCH_BYTES, BatchBudget, batch_window, take_batches
from stream.catalog_follower import CatalogFollower
from stream.config import Settings
from stream.follower import follow_topic
from stream.forget_service import ForgetService
from stream.handler import EventHandler
from stream.loyalty_learner import SNAPSHOT_KEY, LoyaltyLearner
from stream.memory import CollectorBetweenBatches, MemoryReleaser, glibc_malloc_trim
from stream.metrics import Metrics
from stream.topics import aiokafka_client_options

log = logging.getLogger(__name__)

STATE_SWEEP_SECONDS = 60.0  # forget requests past the event age window are let go
#: Idle users (past APPETENCE_USER_STATE_TTL_SECONDS) are looked for every IDLE_SWEEP_SECONDS
#: among the next IDLE_SWEEP_USERS held users, at most IDLE_SWEEP_EVICTIONS deleted (each a
#: tombstone) per sweep: with a million users held, 3-18 ms of the event loop a sweep (23
#: with the pass's snapshot), where a scan of them all once a minute blocked it ~135 ms; a
#: pass over a million users takes ~8 minutes.
IDLE_SWEEP_SECONDS = 5.0
IDLE_SWEEP_USERS = 10_000
IDLE_SWEEP_EVICTIONS = 1_000
#: Forget requests remembered (for the event age window) to drop a user's late events.
FORGOTTEN_USERS_MAX = 1_000_000


@dataclass
class Appetence:
    """Everything create_app built, for the CLI and the tests."""

    app: faust.App
    settings: Settings
    registry: CollectorRegistry
    metrics: Metrics
    handler: EventHandler
    redis: aioredis.Redis
    #: Faust's working directory when ``APPETENCE_DATA_DIR`` is unset: removed when this
    #: object is collected or the process exits.
    scratch: tempfile.TemporaryDirectory[str] | None = None


def _broker_credentials(settings: Settings) -> Any:
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    context = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        assert password is not None  # checked by Settings
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def make_redis(settings: Settings) -> aioredis.Redis:
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    options: dict[str, Any] = {}
    if settings.redis_url.startswith("rediss://") and settings.redis_ssl_ca_file:
        options["ssl_ca_certs"] = settings.redis_ssl_ca_file
    client = aioredis.Redis.from_url(
        settings.redis_url,
        username=settings.redis_username,
        password=password,
        **options,
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        health_check_interval=30,
    )
    return pack_with_hiredis(client)


def _limit_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Faust hard-codes aiokafka's fetch_max_wait_ms=1500; a broker that holds a fetch for
    the full wait (Tansu does) then adds up to 1.5 s to every event's latency. We cap it.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread, "_appetence_original", None)
    if original is None:
        original = AIOKafkaConsumerThread._create_worker_consumer
        AIOKafkaConsumerThread._appetence_original = original  # type: ignore[attr-defined]

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


@dataclass(frozen=True)
class SharedModel:
    """A model learned by one worker and served by all: its examples topic (one partition,
    so one learner in the group), its compacted snapshot topic (followed by every worker)."""

    name: str
    examples_topic: Any
    models_topic: Any
    snapshot_key: bytes
    models_topic_name: str
    snapshot_seconds: float
    learn: Callable[[Iterable[bytes | None]], object]
    snapshot_due: Callable[[], bytes | None]
    load: Callable[[bytes | None], None]


def _wire_shared_model(
    app: faust.App, consumer_options: dict[str, Any], shared: SharedModel
) -> None:
    """The learner agent, the snapshot timer and the snapshot follower of one shared model."""

    async def load(record: Any) -> None:
        shared.load(record.value)

    async def follow_snapshots() -> None:
        await follow_topic(consumer_options, shared.models_topic_name, load)

    async def learn(stream: Any) -> None:
        async for batch in stream.take_events(1000, within=0.5):
            shared.learn(event.value for event in batch)

    async def publish_snapshot() -> None:
        blob = shared.snapshot_due()
        if blob is not None:
            await shared.models_topic.send(key=shared.snapshot_key, value=blob)

    follow_snapshots.__name__ = f"follow_{shared.name}_snapshots"
    publish_snapshot.__name__ = f"publish_{shared.name}_snapshot"
    app.task(follow_snapshots)
    app.agent(shared.examples_topic, name=f"learn-{shared.name}")(learn)
    app.timer(interval=shared.snapshot_seconds)(publish_snapshot)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> Appetence:
    # collectors that declare no names (the process collector) still answer a restricted
    # page's ``name[]`` (metrics_page)
    registry = registry or CollectorRegistry(support_collectors_without_names=True)
    metrics = Metrics(registry)
    _limit_fetch_wait(settings.kafka_fetch_max_wait_ms)
    # Nothing durable lives in Faust's directory (tables are in memory, recovered from
    # changelogs); its default, "<app id>-data" in the working directory, litters it.
    scratch = None
    if settings.data_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix=f"appetence-{settings.app_id}-")
    app = faust.App(
        settings.app_id,
        datadir=settings.data_dir if scratch is None else scratch.name,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=_broker_credentials(settings),
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_seconds,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_seconds,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        producer_acks=-1,
        producer_max_batch_size=settings.kafka_producer_batch_bytes,
    )

    def raw_topic(name: str, partitions: int) -> Any:
        """Keys and values stay bytes: decoding is ours (validated, dead-lettered)."""
        return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)

    events_topic = raw_topic(settings.events_topic, settings.partitions)
    dead_letter_topic = raw_topic(settings.dead_letter_topic, settings.partitions)
    changelog_topic = raw_topic(settings.user_state_changelog_topic, settings.partitions)
    states = UserStateStore(
        settings.user_state_changelog_topic,
        FaustTopicWriter(changelog_topic),
        AIOKafkaPartitionReader(aiokafka_client_options(settings)),
        decoded_users=settings.user_states_decoded,
    )
    audiences_topic = raw_topic(settings.audiences_topic, 1)
    loyalty_examples_topic = raw_topic(settings.loyalty_examples_topic, 1)
    loyalty_models_topic = raw_topic(settings.loyalty_models_topic, 1)
    redis = make_redis(settings)
    processor = SliceProcessor(settings.slice_config())
    signing_key = (
        settings.model_signing_key.get_secret_value().encode()
        if settings.model_signing_key is not None
        else None
    )
    if signing_key is None:
        log.warning(
            "APPETENCE_MODEL_SIGNING_KEY is not set: loyalty and audience models are neither "
            "shared between workers nor checkpointed"
        )
    learner = LoyaltyLearner(processor.loyalty, metrics, signing_key)
    audiences = AudienceService(settings.audience_config(), metrics, signing_key)
    audience_examples_topic = raw_topic(settings.audience_examples_topic, 1)
    audience_models_topic = raw_topic(settings.audience_models_topic, 1)
    rescore_writer = UserHashWriter(  # its own staging: the agent's writer flushes on its own
        redis,
        settings.redis_key_prefix,
        settings.redis_ttl_seconds,
        settings.redis_max_retries,
        on_failed_attempt=metrics.redis_writes.labels(result="error").inc,
        users_per_call=settings.redis_users_per_call,
    )
    writer = UserHashWriter(
        redis,
        settings.redis_key_prefix,
        settings.redis_ttl_seconds,
        max_retries=settings.redis_max_retries,
        on_failed_attempt=metrics.redis_writes.labels(result="error").inc,
        users_per_call=settings.redis_users_per_call,
    )
    forget = ForgetService(
        ForgottenUsers(FORGOTTEN_USERS_MAX, settings.max_event_age_seconds * 1000),
        states,
        processor,
        audiences,
        writer,
        audiences_topic,
        metrics,
        settings.partitions,
    )
    memory = MemoryReleaser(glibc_malloc_trim(), settings.memory_release_seconds)
    collector = CollectorBetweenBatches(settings.gc_between_batches)
    handler = EventHandler(
        decoder=EventDecoder(settings.decode_limits()),
        processor=processor,
        states=states,
        writer=writer,
        dead_letters=FaustTopicWriter(dead_letter_topic, fold_partitions=True),
        metrics=metrics,
        events_topic=settings.events_topic,
        loyalty_examples=FaustTopicWriter(loyalty_examples_topic),
        audiences=audiences,
        audience_examples=audience_examples_topic,
        forget=forget,
        memory=memory,
        should_stop=lambda: bool(app.should_stop),
        commit_seconds=settings.state_commit_seconds,
        commit_max_users=settings.state_commit_max_users,
        rebalancing=lambda: bool(app.rebalancing),
    )

    catalog_dead_letters = raw_topic(settings.catalog_dead_letter_topic, 1)

    async def send_catalog_dead_letter(key: bytes | None, value: bytes) -> Any:
        return await catalog_dead_letters.send(key=key, value=value)

    catalog_follower = CatalogFollower(
        aiokafka_client_options(settings),
        settings.catalog_topic,
        processor,
        send_catalog_dead_letter,
        metrics,
    )

    @app.task
    async def follow_catalog() -> None:
        await catalog_follower.run()

    for shared in (
        SharedModel("loyalty", loyalty_examples_topic, loyalty_models_topic, SNAPSHOT_KEY,
                    settings.loyalty_models_topic, settings.loyalty_snapshot_seconds,
                    learner.learn, learner.snapshot_due, learner.load),
        SharedModel("audiences", audience_examples_topic, audience_models_topic,
                    AUDIENCE_SNAPSHOT_KEY, settings.audience_models_topic,
                    settings.audience_snapshot_seconds,
                    audiences.learn, audiences.snapshot_due, audiences.load_snapshot),
    ):  # fmt: skip
        _wire_shared_model(app, aiokafka_client_options(settings), shared)

    @app.task
    async def follow_audience_seeds() -> None:
        await follow_topic(
            aiokafka_client_options(settings), settings.audiences_topic, audiences.on_seed_record
        )

    @app.task
    async def follow_forget_requests() -> None:
        await follow_topic(
            aiokafka_client_options(settings), settings.forget_topic, forget.on_record
        )

    @app.timer(interval=STATE_SWEEP_SECONDS)
    async def expire_forget_requests() -> None:
        forget.expire()

    @app.timer(interval=1.0)
    async def maintain_audiences() -> None:
        changed = await audiences.maintain(
            states,
            rescore_writer,
            audience_examples_topic,
            int(time.time() * 1000),
            limit=settings.audience_rescore_users_per_second,
        )
        if changed:
            states.hold(changed)  # changed, persisted once their Redis writes are in
            await rescore_writer.flush()
            await handler.persist(changed)  # retried while the producer cannot take them

    class AudienceMembers(faust.web.View):
        """POST /v1/audiences/{audience_id}/members {"add": [...], "remove": [...]}"""

        async def post(self, request: Any, audience_id: str) -> Any:
            status, body = await audience_members_request(
                settings, request, audience_id, audiences_topic
            )
            return self.json(body, status=status)

    app.page("/v1/audiences/{audience_id}/members")(AudienceMembers)

    @app.page("/audiences/{audience_id}")
    async def audience_report_page(web: Any, request: Any, audience_id: str) -> Any:
        report = audiences.report(audience_id)
        if report is None:
            return web.json({"error": f"no report for audience {audience_id!r} yet"}, status=404)
        return web.json(report)

    def next_window(since_taken: float) -> float:
        window = batch_window(
            handler.behind_seconds,
            settings.batch_within_seconds,
            settings.batch_catch_up_seconds,
            settings.batch_catch_up_after_seconds,
            since_taken,
        )
        if window > settings.batch_within_seconds:
            metrics.batches_catching_up.inc()
        return window

    budget = BatchBudget(
        settings.batch_max_seconds,
        settings.batch_max_bytes,
        initial_bytes=INITIAL_BATCH_BYTES,
    )

    metrics.batch_max_bytes.set(budget.max_bytes)

    def batch_max_bytes() -> int:
        return budget.max_bytes

    @app.agent(events_topic, name="process-events")
    async def process_events(stream: Any) -> None:
        async for batch in take_batches(
            stream,
            settings.batch_max_records,
            batch_max_bytes,
            next_window,
            # a catch-up batch ends once records stop arriving for a cadence window
            idle=settings.batch_within_seconds,
            committed=lambda: handler.committed,
            commit=handler.commit_when_due,
        ):
            started = time.process_time()
            with collector.during_batch():
                await handler.handle(batch)
            budget.observe(
                sum(event.message.serialized_value_size or 0 for event in batch),
                time.process_time() - started,
            )
            metrics.batch_max_bytes.set(budget.max_bytes)

    if settings.memory_release_seconds > 0:

        @app.timer(interval=settings.memory_release_seconds)
        async def release_memory_when_idle() -> None:
            memory.when_idle()  # the last batch of a burst, once traffic paused

    @app.timer(interval=2.0)
    async def update_gauges() -> None:
        metrics.users_in_state.set(len(states))
        metrics.user_state_bytes.set(states.bytes_held)
        metrics.user_states_decoded.set(states.decoded)
        metrics.user_states_uncommitted.set(states.uncommitted)
        metrics.popularity_entries.set(processor.popularity.size())
        metrics.cooccurrence_entries.set(processor.cooccurrence.size())
        metrics.banner_ctr_entries.set(processor.ctr.size())
        metrics.loyalty_pending_labels.set(len(processor.expiry))
        metrics.audience_members.set(audiences.learner.membership.size())
        metrics.audience_entries.set(audiences.learner.size())
        learner.update_gauges()
        for tp in app.consumer.assignment():
            if tp.topic != settings.events_topic:
                continue
            highwater = app.consumer.highwater(tp)
            if highwater is None:
                continue
            position = handler.positions.get(tp.partition, 0)
            metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, highwater - position)
            )

    @app.timer(interval=IDLE_SWEEP_SECONDS)
    async def evict_idle_users() -> None:
        horizon = int(time.time() * 1000) - settings.user_state_ttl_seconds * 1000
        evicted = states.evict_idle(horizon, IDLE_SWEEP_EVICTIONS, scan=IDLE_SWEEP_USERS)
        metrics.state_evictions.inc(evicted)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def release_moved(app: Any, assigned: Any, **kwargs: Any) -> None:
        # Faust's eager rebalance revokes everything, then assigns; forgetting only what
        # was not assigned back keeps kept partitions warm, and a partition that moved
        # away is dropped here, so it is recovered afresh if it ever comes back.
        mine = {tp.partition for tp in assigned if tp.topic == settings.events_topic}
        states.release(states.partitions - mine)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # ``?name[]=<sample name>`` (repeatable) restricts the page to those samples, as
        # prometheus_client's own exposition does: the whole page costs the worker ~5 ms of
        # CPU (generate_latest, ~350 series), which a poller asking several times a second
        # for one counter (the bench, the tests) would take from the batches.
        names = request.query.getall("name[]", [])
        source = registry.restricted_registry(names) if names else registry
        # aiohttp rejects a charset in content_type=, so the header is set directly.
        return web.bytes(generate_latest(source), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/retention")
    async def retention_page(web: Any, request: Any) -> Any:
        # Only the worker that owns the examples partition has learned anything.
        report = learner.retention_report()
        return web.json(report, status=200 if report["examples"] else 404)

    @app.page("/health")
    async def health_page(web: Any, request: Any) -> Any:
        assigned = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == settings.events_topic
        )
        healthy = app.rebalancing is False
        return web.json(
            {
                "status": "ok" if healthy else "rebalancing",
                "app_id": settings.app_id,
                "assigned_partitions": assigned,
                "users_in_state": len(states),
            },
            status=200 if healthy else 503,
        )

    return Appetence(app, settings, registry, metrics, handler, redis, scratch)
