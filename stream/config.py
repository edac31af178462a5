"""One frozen Settings object, loaded once at the entry point from APPETENCE_* env vars.

Misconfiguration fails fast: ``load_settings`` raises ``ConfigError`` with one line per
problem, naming the environment variable to fix.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from processors.audiences import AudienceConfig
from processors.banners import BannerConfig
from processors.cooccurrence import CooccurrenceConfig
from processors.events import DecodeLimits
from processors.loyalty import DAY_MS, LoyaltyConfig
from processors.pipeline import SliceConfig
from processors.popularity import PopularityConfig
from processors.recommend import AssemblyConfig
from processors.user_state import UserStateConfig

ENV_PREFIX = "APPETENCE_"


class ConfigError(ValueError):
    """Raised when settings are invalid; the message says which variable and why."""


class Settings(BaseSettings):
    """All configuration. Every field maps to ``APPETENCE_<FIELD_NAME_UPPERCASE>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    # --- Kafka -----------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    #: Tansu (the embedded broker) completes a group join after session_timeout / 2; the
    #: Faust default of 60 s made a worker wait 30 s. 10 s is Kafka's classic default.
    kafka_session_timeout_seconds: float = Field(10.0, ge=6.0, le=300.0)
    kafka_heartbeat_interval_seconds: float = Field(1.0, gt=0.0, le=60.0)
    kafka_rebalance_timeout_seconds: float = Field(20.0, ge=1.0, le=600.0)

    kafka_fetch_max_wait_ms: int = Field(100, ge=1, le=10_000)
    #: Producer record-batch size in bytes (Kafka's ``batch.size``). A batch's changelog
    #: records go out as one record batch per partition of at most this: with Kafka's 16 KiB
    #: default a drain batch's ~110 KB per partition took seven, each sent only once the
    #: broker had answered for the one before (one request in flight), and the changelog
    #: stage cost ~30% more CPU and waited 15-30 ms per batch (docs/benchmarks.md). Half of a
    #: Kafka broker's default largest message (``message.max.bytes``, ~1 MB), which a record
    #: batch must fit.
    kafka_producer_batch_bytes: int = Field(512 * 1024, ge=1, le=16 * 1024 * 1024)

    app_id: str = Field("appetence", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    topic_prefix: str = Field("appetence", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=10)

    # --- Redis -----------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: ACL user (Redis 6+); the password is then that user's. Unset: the default user.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    #: CA bundle for a rediss:// (TLS) URL; unset: the system's trust store.
    redis_ssl_ca_file: str | None = None
    redis_key_prefix: str = Field("appetence:v1", pattern=r"^[A-Za-z0-9:._-]{1,64}$")
    redis_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    redis_max_retries: int = Field(8, ge=0, le=100)
    #: Users per CAS script call (one call and one reply per chunk); 1 on Redis Cluster,
    #: where one script's keys must share a slot.
    redis_users_per_call: int = Field(32, ge=1, le=1024)

    # --- Input validation ------------------------------------------------------------
    max_event_bytes: int = Field(16 * 1024, ge=256, le=1024 * 1024)
    max_record_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_future_skew_seconds: int = Field(300, ge=0)
    max_event_age_seconds: int = Field(7 * 24 * 3600, ge=60)
    dedup_window_seconds: int = Field(3600, ge=0)
    dedup_max_ids_per_user: int = Field(256, ge=1, le=100_000)

    # --- Processing ------------------------------------------------------------------
    batch_max_records: int = Field(500, ge=1, le=100_000)
    # A batch also ends once its records hold this many bytes of input: what a batch costs in
    # memory (the touched users' states and slates) grows with it (docs/benchmarks.md).
    batch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # ...and once they hold what the worker handles in about this many seconds of CPU (the
    # bytes per second of its recent full batches; stream/batching.py BatchBudget): a batch
    # blocks the worker's event loop, consumer heartbeats included, while it runs. 0: bytes
    # only.
    batch_max_seconds: float = Field(1.0, ge=0.0, le=60.0)
    batch_within_seconds: float = Field(0.05, gt=0.0, le=10.0)
    # While the worker is behind (its last batch's oldest record had waited at least
    # batch_catch_up_after_seconds), a batch is gathered for up to batch_catch_up_seconds:
    # larger batches coalesce more events per user, so a worker that is behind catches up
    # faster (stream/batching.py). 0: never widen.
    batch_catch_up_seconds: float = Field(0.5, gt=0.0, le=10.0)
    batch_catch_up_after_seconds: float = Field(2.0, ge=0.0)
    # The worker's young-generation GC threshold (Python's default is 700); 0: the default.
    # 200,000 rather than 50,000: most of a batch's objects are gone before a collection
    # comes, so the collector's pauses fell from ~5% of the worker's CPU to none at half the
    # dense drain rate (docs/benchmarks-history.md, thirty-third session).
    gc_young_threshold: int = Field(200_000, ge=0)
    # The collector held off while a batch is handled: its young collections run between
    # batches, once the batch's objects are freed, not over a batch's work in progress
    # (stream/memory.py; the drain of site-paced traffic: ~5% of the worker's CPU).
    gc_between_batches: bool = True
    # After a batch, free C-heap pages go back to the OS (glibc malloc_trim) at most this
    # often: RSS follows the held state instead of the largest batch (stream/memory.py). 0: off.
    memory_release_seconds: float = Field(1.0, ge=0.0)
    # The most recently persisted user states also kept decoded (~10 KB each, against ~0.55
    # KB encoded): at live batch sizes most touched users were touched a few batches before,
    # and each saves a decode (~35 µs) per batch (state/tables.py). 0: every read decodes.
    user_states_decoded: int = Field(2_000, ge=0, le=1_000_000)
    # How long a batch's changed user states may wait before they go to the changelog (and
    # its records' offsets to Kafka): a user touched again meanwhile is persisted once, not
    # once per batch, as Kafka Streams' record cache coalesces until its commit interval.
    # A crash replays at most this much more input. 0: persist after every batch.
    state_commit_seconds: float = Field(1.0, ge=0.0, le=60.0)
    # ...or as soon as this many users' states wait (~10 KB each, decoded).
    state_commit_max_users: int = Field(5_000, ge=1, le=1_000_000)
    # Run the slice's modules compiled (stream/compiled.py: built by `make`, 10-27% less CPU
    # per event); false: plain Python, which profilers (py-spy, cProfile) can see into. Read
    # when the interpreter starts (the environment's appetence_compiled.pth), so set it in
    # the environment of the process, not in a file it loads later.
    compiled: bool = True
    history_size: int = Field(50, ge=1, le=10_000)
    interest_half_life_seconds: float = Field(7 * 24 * 3600, gt=0)
    popularity_half_life_seconds: float = Field(6 * 3600, gt=0)
    popularity_items_per_category: int = Field(200, ge=10)
    slate_size: int = Field(20, ge=1, le=500)
    cooccurrence_weight: float = Field(1.0, ge=0.0)
    popularity_weight: float = Field(0.3, ge=0.0)
    exclude_items: list[str] = Field(default_factory=list, max_length=10_000)
    max_per_category: int = Field(8, ge=1, le=500)
    # 3 days: chosen on a validation split of RSC15 (docs/evaluation.md)
    cooccurrence_half_life_seconds: float = Field(3 * 24 * 3600, ge=0)  # 0: no decay
    cooccurrence_max_neighbours: int = Field(200, ge=10, le=10_000)
    # Neighbour visitors who viewed what this session viewed vote for their other items:
    # "user" = user-user neighbours across sessions, "session" = session-kNN. 0: off.
    neighbour_weight: float = Field(1.5, ge=0.0)
    neighbour_scope: Literal["user", "session"] = "user"
    neighbour_max_visitors: int = Field(100_000, ge=100)
    # Second hop: the strongest candidates' own votes, times this weight (0: off)
    cooccurrence_bridge_weight: float = Field(1.0, ge=0.0)
    session_gap_seconds: int = Field(30 * 60, ge=60)
    # Banners (README, docs/evaluation.md): score = Thompson CTR sample x (1 + content_weight
    # x content points + recipe_weight x recipe overlap) x 2^(priority / 10).
    banner_slate_size: int = Field(5, ge=1, le=100)
    banner_content_weight: float = Field(1.0, ge=0.0)
    banner_recipe_weight: float = Field(1.0, ge=0.0)
    banner_ctr_prior_clicks: float = Field(0.4, gt=0.0)
    banner_ctr_prior_impressions: float = Field(20.0, gt=0.0)
    banner_segment_prior_strength: float = Field(50.0, gt=0.0)
    banner_exploration_share: float = Field(0.1, ge=0.0, le=1.0)
    banner_ctr_window_seconds: float = Field(45 * 60, ge=60)
    banner_clicked_demotion: float = Field(0.5, ge=0.0, le=1.0)
    user_state_ttl_seconds: int = Field(30 * 24 * 3600, ge=60)
    # Loyalty (processors/loyalty.py, docs/evaluation.md): returns = another session within
    # the horizon after a session ends; loyal = loyal_sessions within loyal_horizon_days.
    return_horizon_days: float = Field(7.0, gt=0.0, le=365.0)
    loyal_sessions: int = Field(3, ge=2, le=1000)
    loyal_horizon_days: float = Field(30.0, gt=0.0, le=365.0)
    loyalty_model: Literal["logistic", "tree", "forest"] = "logistic"
    # AdaGrad step size, chosen on simulation seed 1 and synthetic purchase logs (evaluation.md)
    loyalty_learning_rate: float = Field(0.1, gt=0.0, le=1.0)
    loyalty_metric_window: int = Field(5000, ge=100, le=1_000_000)
    win_back_threshold: float = Field(0.3, ge=0.0, le=1.0)
    loyalty_snapshot_seconds: float = Field(10.0, ge=0.5, le=3600.0)
    # Audiences (processors/audiences.py, docs/evaluation.md)
    audience_holdout_share: float = Field(0.2, ge=0.0, lt=1.0)
    audience_negative_ratio: int = Field(3, ge=1, le=100)
    audience_snapshot_seconds: float = Field(2.0, ge=0.5, le=3600.0)
    #: Held users re-scored per second with a new audience snapshot (on the event loop,
    #: ~30-60 µs each: 1,000 is 3-6% of a core; a pass over 100,000 users ~100 s).
    audience_rescore_users_per_second: int = Field(1_000, ge=1, le=1_000_000)
    max_audiences: int = Field(100, ge=1, le=10_000)
    audience_max_members: int = Field(1_000_000, ge=1, le=100_000_000)
    #: Bearer token of POST /v1/audiences/{id}/members; unset: the endpoint answers 503.
    audience_api_token: SecretStr | None = Field(None, min_length=16)
    #: HMAC-SHA256 key of model snapshots. Unset: the learner's models are neither shared
    #: with other workers nor checkpointed (nothing unsigned is ever unpickled).
    model_signing_key: SecretStr | None = Field(None, min_length=16)

    # --- HTTP collector (appetence collector) -----------------------------------------
    collector_host: str = "127.0.0.1"
    collector_port: int = Field(8088, ge=0, le=65535)
    #: Larger request bodies are refused with 413.
    collector_max_body_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    collector_max_events_per_request: int = Field(500, ge=1, le=10_000)
    #: Per client (address, pseudonymised): sustained requests per second and burst.
    collector_rate_per_second: float = Field(20.0, gt=0.0)
    collector_rate_burst: int = Field(60, ge=1)
    collector_max_clients: int = Field(100_000, ge=1)
    #: Bytes accepted but not yet acknowledged by Kafka; past it requests get 503.
    collector_buffer_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    #: Origins allowed to post from browsers (CORS); "*" allows any. Empty: no CORS headers.
    collector_cors_origins: list[str] = Field(default_factory=list, max_length=1000)
    #: HMAC key of client-address pseudonyms (rate-limit buckets). Unset: a random key per
    #: process. The raw address is never written anywhere.
    collector_ip_key: SecretStr | None = Field(None, min_length=16)
    #: Take the client address from X-Forwarded-For (only behind your own proxy).
    collector_trust_forwarded_for: bool = False
    #: Accepted events of concurrent requests are produced as one envelope per partition,
    #: gathered for up to this long (a request is answered once its envelopes are
    #: acknowledged). A worker pays ~200 µs of CPU per Kafka record on top of its work per
    #: event (Faust's and aiokafka's per-message path): a record per request, as a site's
    #: visitors send them, cost it ~40% more CPU per event (docs/benchmarks.md). 0: an
    #: envelope per user and request, sent at once.
    collector_linger_ms: int = Field(20, ge=0, le=1000)
    #: An envelope is sent once it holds this many bytes, whatever the linger.
    collector_envelope_max_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)

    # --- HTTP (metrics and health) ---------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Faust's working directory. Nothing durable is kept there (tables live in memory and
    #: are recovered from their changelogs); unset: a temporary directory removed at exit.
    data_dir: str | None = None

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {server!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected redis://, rediss:// or unix:// URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "SASL security protocol needs APPETENCE_KAFKA_SASL_MECHANISM, "
                "APPETENCE_KAFKA_SASL_USERNAME and APPETENCE_KAFKA_SASL_PASSWORD"
            )
        if self.banner_ctr_prior_clicks >= self.banner_ctr_prior_impressions:
            raise ValueError(
                "APPETENCE_BANNER_CTR_PRIOR_CLICKS must be below "
                "APPETENCE_BANNER_CTR_PRIOR_IMPRESSIONS (the prior CTR is their ratio)"
            )
        if self.batch_max_seconds * 4 > self.kafka_session_timeout_seconds:
            raise ValueError(
                "APPETENCE_BATCH_MAX_SECONDS must be at most a quarter of "
                "APPETENCE_KAFKA_SESSION_TIMEOUT_SECONDS (a batch blocks heartbeats while it runs)"
            )
        if self.collector_envelope_max_bytes > self.max_record_bytes:
            raise ValueError(
                "APPETENCE_COLLECTOR_ENVELOPE_MAX_BYTES must be at most APPETENCE_MAX_RECORD_BYTES "
                "(the workers dead-letter larger records)"
            )
        if self.kafka_heartbeat_interval_seconds * 3 > self.kafka_session_timeout_seconds:
            raise ValueError(
                "APPETENCE_KAFKA_HEARTBEAT_INTERVAL_SECONDS must be at most a third of "
                "APPETENCE_KAFKA_SESSION_TIMEOUT_SECONDS"
            )
        return self

    # --- Derived values --------------------------------------------------------------
    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def catalog_topic(self) -> str:
        return f"{self.topic_prefix}.catalog"

    @property
    def catalog_dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.catalog.dlq"

    @property
    def user_state_changelog_topic(self) -> str:
        return f"{self.app_id}-user-state-changelog"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.events.dlq"

    @property
    def forget_topic(self) -> str:
        return f"{self.topic_prefix}.forget"

    @property
    def audiences_topic(self) -> str:
        return f"{self.topic_prefix}.audiences"

    @property
    def audience_examples_topic(self) -> str:
        return f"{self.topic_prefix}.audiences.examples"

    @property
    def audience_models_topic(self) -> str:
        return f"{self.topic_prefix}.audiences.models"

    def audience_config(self) -> AudienceConfig:
        return AudienceConfig(
            holdout_share=self.audience_holdout_share,
            negative_ratio=self.audience_negative_ratio,
            max_audiences=self.max_audiences,
            max_members=self.audience_max_members,
        )

    @property
    def loyalty_examples_topic(self) -> str:
        return f"{self.topic_prefix}.loyalty.examples"

    @property
    def loyalty_models_topic(self) -> str:
        return f"{self.topic_prefix}.loyalty.models"

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_event_bytes=self.max_event_bytes,
            max_record_bytes=self.max_record_bytes,
            max_future_skew_ms=self.max_future_skew_seconds * 1000,
            max_age_ms=self.max_event_age_seconds * 1000,
        )

    def slice_config(self) -> SliceConfig:
        return SliceConfig(
            user=UserStateConfig(
                history_size=self.history_size,
                dedup_window_ms=self.dedup_window_seconds * 1000,
                dedup_max_ids=self.dedup_max_ids_per_user,
                interest_half_life_ms=self.interest_half_life_seconds * 1000,
                session_gap_ms=self.session_gap_seconds * 1000,
            ),
            popularity=PopularityConfig(
                half_life_ms=self.popularity_half_life_seconds * 1000,
                max_items_per_category=self.popularity_items_per_category,
            ),
            assembly=AssemblyConfig(
                size=self.slate_size,
                cooccurrence_weight=self.cooccurrence_weight,
                popularity_weight=self.popularity_weight,
                exclude_items=frozenset(self.exclude_items),
                max_per_category=self.max_per_category,
                session_gap_ms=self.session_gap_seconds * 1000,
                neighbour_scope=self.neighbour_scope,
            ),
            banners=BannerConfig(
                size=self.banner_slate_size,
                content_weight=self.banner_content_weight,
                recipe_weight=self.banner_recipe_weight,
                segment_prior_strength=self.banner_segment_prior_strength,
                prior_clicks=self.banner_ctr_prior_clicks,
                prior_impressions=self.banner_ctr_prior_impressions,
                exploration_share=self.banner_exploration_share,
                clicked_demotion=self.banner_clicked_demotion,
            ),
            ctr_window_ms=self.banner_ctr_window_seconds * 1000,
            loyalty=LoyaltyConfig(
                return_horizon_ms=int(self.return_horizon_days * DAY_MS),
                loyal_sessions=self.loyal_sessions,
                loyal_horizon_ms=int(self.loyal_horizon_days * DAY_MS),
                session_gap_ms=self.session_gap_seconds * 1000,
                model=self.loyalty_model,
                learning_rate=self.loyalty_learning_rate,
                metric_window=self.loyalty_metric_window,
                win_back_threshold=self.win_back_threshold,
            ),
            cooccurrence=CooccurrenceConfig(
                half_life_ms=self.cooccurrence_half_life_seconds * 1000
                if self.cooccurrence_half_life_seconds
                else None,
                max_neighbours=self.cooccurrence_max_neighbours,
                session_knn_weight=self.neighbour_weight,
                max_sessions=self.neighbour_max_visitors,
                bridge_weight=self.cooccurrence_bridge_weight,
            ),
        )

    def user_key(self, user_id: str) -> str:
        return f"{self.redis_key_prefix}:user:{user_id}"


def _unknown_variables() -> list[str]:
    """APPETENCE_* variables that name no setting: a typo must not be silently ignored."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    problems = []
    for variable in sorted(os.environ):
        if variable.upper().startswith(ENV_PREFIX) and variable.upper() not in known:
            close = difflib.get_close_matches(variable.upper(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"  {variable}: not a setting{hint}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment plus explicit overrides (CLI flags); fail fast."""
    unknown = _unknown_variables()
    if unknown:
        raise ConfigError("invalid configuration:\n" + "\n".join(unknown))
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:  # e.g. a list setting that is not a JSON array
        cause = f": {error.__cause__}" if error.__cause__ else ""
        raise ConfigError(f"invalid configuration:\n  {error}{cause}") from None
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = ".".join(str(part) for part in problem["loc"]) or "settings"
            variable = f"{ENV_PREFIX}{name.upper()}" if problem["loc"] else name
            lines.append(f"  {variable}: {problem['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
