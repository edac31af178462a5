"""Topic definitions and idempotent creation with kafka-python's admin client.

| topic                          | key      | value                          | partitions |
|--------------------------------|----------|--------------------------------|------------|
| ``{prefix}.events``            | user_id  | one event or a JSON array      | settings   |
| ``{prefix}.events.dlq``        | as input | DeadLetter JSON                | settings   |
| ``{app_id}-user-state-changelog`` | user_id | ``state.records`` (compacted) | settings |
| ``{prefix}.catalog``           | kind:id  | catalog record JSON (compacted)| 1          |
| ``{prefix}.catalog.dlq``       | as input | DeadLetter JSON                | 1          |
| ``{prefix}.loyalty.examples``  | target   | resolved label JSON            | 1          |
| ``{prefix}.loyalty.models``    | "loyalty"| HMAC-signed model snapshot (compacted) | 1  |
| ``{prefix}.audiences``         | aud/user | seed membership; null = removed (compacted) | 1   |
| ``{prefix}.audiences.examples``| none     | JSON array of touched users' features | 1       |
| ``{prefix}.audiences.models``  | "audiences" | signed models, cuts, reports (compacted) | 1 |
| ``{prefix}.forget``            | user_id  | forget request JSON            | 1          |
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    retention_ms = str(settings.max_event_age_seconds * 1000)
    return [
        TopicSpec(settings.events_topic, settings.partitions, {"retention.ms": retention_ms}),
        TopicSpec(settings.dead_letter_topic, settings.partitions, {"retention.ms": retention_ms}),
        TopicSpec(
            settings.user_state_changelog_topic, settings.partitions, {"cleanup.policy": "compact"}
        ),
        # Every worker reads the whole catalog, so it needs no partitions to spread.
        TopicSpec(settings.catalog_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.catalog_dead_letter_topic, 1, {"retention.ms": retention_ms}),
        # One learner: a single partition orders every resolved label for one consumer.
        TopicSpec(settings.loyalty_examples_topic, 1, {"retention.ms": retention_ms}),
        TopicSpec(settings.loyalty_models_topic, 1, {"cleanup.policy": "compact"}),
        # Seed membership: every worker follows all of it (the learner may move).
        TopicSpec(settings.audiences_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.audience_examples_topic, 1, {"retention.ms": retention_ms}),
        TopicSpec(settings.audience_models_topic, 1, {"cleanup.policy": "compact"}),
        # Forget requests: every worker reads all of them; kept as long as events are
        # accepted, so a restarted worker still drops a forgotten user's late events.
        TopicSpec(settings.forget_topic, 1, {"retention.ms": retention_ms}),
    ]


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Security options shared by every kafka-python client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        options["ssl_cafile"] = settings.kafka_ssl_cafile
    return options


def aiokafka_client_options(settings: Settings) -> dict[str, Any]:
    """Security options shared by every aiokafka client (worker readers, collector)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_password is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def ensure_topics(settings: Settings, timeout_seconds: float = 30.0) -> list[str]:
    """Create missing topics; existing ones are left alone. Returns the names created."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            admin = KafkaAdminClient(
                client_id=f"{settings.app_id}-admin", **kafka_client_options(settings)
            )
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for spec in topic_specs(settings):
            if spec.name in existing:
                continue
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            settings.replication_factor,
                            topic_configs=spec.config,
                        )
                    ]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    log.info("topics ensured; created %s", created or "none")
    return created


def make_producer(settings: Settings, **extra: Any) -> KafkaProducer:
    """A kafka-python producer (used by the simulator, CLI and tests); acks=all."""
    options: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": settings.kafka_producer_batch_bytes,
        "max_request_size": max(settings.max_record_bytes + 1024, 1_048_576),
        "client_id": f"{settings.app_id}-producer",
        **kafka_client_options(settings),
        **extra,
    }
    return KafkaProducer(**options)


def partition_for(user_id: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for this user key."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


__all__ = [
    "KafkaError",
    "TopicSpec",
    "aiokafka_client_options",
    "ensure_topics",
    "kafka_client_options",
    "make_producer",
    "partition_for",
    "topic_specs",
]
