"""``appetence collector``: the HTTP front door for browsers and servers (aiohttp).

``POST /v1/events`` takes one event or a JSON array (any content type: the tracker sends
text/plain so that browsers need no CORS preflight), validates every event with the
worker's decoder, produces the accepted ones to Kafka on their user's partition (Kafka's
murmur2 partitioner on ``user_id``, as a keyed record would go), gathered with the events
of concurrent requests into one batch envelope per partition for up to
``APPETENCE_COLLECTOR_LINGER_MS`` (``EnvelopeCoalescer``), and answers once Kafka has
acknowledged them:

- 202 ``{"accepted": n, "rejected": m, "errors": [{"index", "reason", "detail"}]}``; the
  rejected events also go to the dead-letter topic (source topic ``http``), counted;
- 413 over ``APPETENCE_COLLECTOR_MAX_BODY_BYTES``; 429 with ``Retry-After`` past the
  client's rate; 503 with ``Retry-After`` when the bytes awaiting Kafka's acknowledgement
  exceed ``APPETENCE_COLLECTOR_BUFFER_BYTES`` (memory stays bounded) or Kafka fails.

``GET /tracker.js`` serves the browser snippet, ``/metrics`` and ``/health`` the usual.
The client address is used only in memory, pseudonymised (HMAC), as a rate-limit key.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from processors.collector import (
    RateLimiter,
    client_address,
    collect_body,
    cors_origin,
    pseudonymise,
)
from processors.events import EventDecoder, dead_letter_bytes, merge_envelopes
from stream.config import Settings
from stream.metrics import CollectorMetrics
from stream.topics import aiokafka_client_options, partition_for

log = logging.getLogger(__name__)

PRODUCE_TIMEOUT_SECONDS = 10.0


def tracker_source() -> bytes:
    return resources.files("stream").joinpath("static/tracker.js").read_bytes()


@dataclass
class _Gathering:
    """The envelopes gathered for one partition, and the future their requests await."""

    acked: asyncio.Future[None]
    envelopes: list[bytes] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class EnvelopeCoalescer:
    """The accepted events of concurrent requests, produced as one envelope per partition.

    A worker pays ~200 µs of CPU per Kafka record (Faust's and aiokafka's per-message path)
    on top of what it spends per event, and a site's visitors send an event or two per
    request: a record per request made that a third of the worker's CPU at 1,200 events/s
    (docs/benchmarks.md). Here each user's envelope joins its partition's gathering (the
    partition Kafka's default partitioner picks for the user as key, so keyed producers and
    the collector agree); a gathering is sent as one record ``linger`` seconds after it began
    or once it holds ``max_bytes``, in order per partition, and its requests are answered
    when Kafka has acknowledged it. ``linger`` 0: each envelope is sent at once, keyed by
    its user, as before.
    """

    def __init__(
        self,
        send: Callable[..., Awaitable[Awaitable[Any]]],
        partitions: Callable[[], Awaitable[int]],
        topic: str,
        linger: float,
        max_bytes: int,
        sent: Callable[[], object] = lambda: None,
    ) -> None:
        self._send, self._partitions, self.topic = send, partitions, topic
        self.linger, self.max_bytes, self._sent = linger, max_bytes, sent
        self._gathering: dict[int, _Gathering] = {}
        self._order: dict[int, asyncio.Lock] = {}  # per partition: sends in gathering order
        self._producing: set[asyncio.Future[None]] = set()  # sent, not yet acknowledged

    async def add(self, user: str, envelope: bytes) -> Awaitable[None]:
        """Queue ``user``'s envelope; returns what completes once Kafka acknowledged it."""
        if self.linger <= 0.0:
            self._sent()
            return await self._send(self.topic, value=envelope, key=user.encode())
        partition = partition_for(user, await self._partitions())
        gathering = self._gathering.get(partition)
        if gathering is not None and gathering.size + len(envelope) > self.max_bytes:
            self._flush(partition)
            gathering = None
        if gathering is None:
            loop = asyncio.get_running_loop()
            gathering = self._gathering[partition] = _Gathering(loop.create_future())
            gathering.acked.add_done_callback(_retrieve)  # (if every request gave up)
            gathering.timer = loop.call_later(self.linger, self._flush, partition)
        gathering.envelopes.append(envelope)
        gathering.size += len(envelope)
        if gathering.size >= self.max_bytes:
            self._flush(partition)
        # shielded: a request that gives up (its timeout) must not cancel the others' wait
        return asyncio.shield(gathering.acked)

    def _flush(self, partition: int) -> None:
        gathering = self._gathering.pop(partition, None)
        if gathering is None:
            return
        if gathering.timer is not None:
            gathering.timer.cancel()
        self._sent()
        lock = self._order.setdefault(partition, asyncio.Lock())
        task = asyncio.ensure_future(self._produce(partition, gathering, lock))
        self._producing.add(task)
        task.add_done_callback(self._producing.discard)
        task.add_done_callback(_retrieve)

    async def _produce(self, partition: int, gathering: _Gathering, lock: asyncio.Lock) -> None:
        value = merge_envelopes(gathering.envelopes)
        try:
            async with lock:  # (asyncio's lock is FIFO: the partition's records stay in order)
                delivered = await self._send(self.topic, value=value, partition=partition)
            await delivered
        except Exception as error:
            if not gathering.acked.done():
                gathering.acked.set_exception(error)
            return
        if not gathering.acked.done():
            gathering.acked.set_result(None)

    def flush_all(self) -> None:
        """Send every gathering now."""
        for partition in list(self._gathering):
            self._flush(partition)

    async def drain(self, wait_seconds: float) -> None:
        """At shutdown, before the producer stops: send every gathering and wait up to
        ``wait_seconds`` for what was sent to be acknowledged (or to fail)."""
        self.flush_all()
        if self._producing:
            await asyncio.wait(set(self._producing), timeout=wait_seconds)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # (reported to the requests through their future)


@dataclass
class CollectorState:
    settings: Settings
    producer: Any  # AIOKafkaProducer: send(topic, value=, key=) -> awaitable of a future
    metrics: CollectorMetrics
    registry: CollectorRegistry
    limiter: RateLimiter
    decoder: EventDecoder
    ip_key: bytes
    cors: frozenset[str]
    coalescer: EnvelopeCoalescer
    in_flight_bytes: int = 0


def _cors_headers(state: CollectorState, request: web.Request) -> dict[str, str]:
    origin = cors_origin(request.headers.get("Origin"), state.cors)
    if origin is None:
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if request.method == "OPTIONS":
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "86400",
            }
        )
    return headers


def _answer(
    state: CollectorState, request: web.Request, status: int, body: dict[str, Any], **headers: str
) -> web.Response:
    state.metrics.requests.labels(status=str(status)).inc()
    return web.json_response(
        body, status=status, headers={**_cors_headers(state, request), **headers}
    )


async def post_events(request: web.Request) -> web.Response:
    state: CollectorState = request.app["state"]
    settings = state.settings
    started = time.perf_counter()
    address = client_address(
        request.remote,
        request.headers.get("X-Forwarded-For"),
        settings.collector_trust_forwarded_for,
    )
    allowed, retry_after = state.limiter.allow(
        pseudonymise(state.ip_key, address), time.monotonic()
    )
    if not allowed:
        return _answer(
            state,
            request,
            429,
            {"error": "rate limit exceeded"},
            **{"Retry-After": str(max(1, round(retry_after + 0.5)))},
        )
    if (request.content_length or 0) > settings.collector_max_body_bytes:
        return _answer(state, request, 413, {"error": "body too large"})
    try:
        body = await request.content.read(settings.collector_max_body_bytes + 1)
    except (ConnectionError, asyncio.IncompleteReadError):
        return _answer(state, request, 400, {"error": "incomplete body"})
    if len(body) > settings.collector_max_body_bytes:
        return _answer(state, request, 413, {"error": "body too large"})
    if state.in_flight_bytes + len(body) > settings.collector_buffer_bytes:
        state.metrics.buffer_full.inc()
        return _answer(
            state, request, 503, {"error": "producer buffer full"}, **{"Retry-After": "1"}
        )
    now_ms = int(time.time() * 1000)
    collected = collect_body(state.decoder, body, now_ms, settings.collector_max_events_per_request)
    state.in_flight_bytes += len(body)
    state.metrics.buffer_bytes.set(state.in_flight_bytes)
    try:
        sends = [await state.coalescer.add(user, value) for user, value in collected.records]
        sends += [
            await state.producer.send(
                settings.dead_letter_topic,
                value=dead_letter_bytes(rejection, "http", -1, -1, now_ms),
                key=b"http",
            )
            for rejection in collected.rejections
        ]
        await asyncio.wait_for(asyncio.gather(*sends), PRODUCE_TIMEOUT_SECONDS)
    except Exception as error:  # Kafka down or slow: the client retries later
        log.warning("produce failed: %r", error)
        state.metrics.produce_errors.inc()
        return _answer(
            state, request, 503, {"error": "event store unavailable"}, **{"Retry-After": "5"}
        )
    finally:
        state.in_flight_bytes -= len(body)
        state.metrics.buffer_bytes.set(state.in_flight_bytes)
    state.metrics.events.labels(result="accepted").inc(collected.accepted)
    state.metrics.events.labels(result="rejected").inc(collected.rejected)
    for verdict in collected.verdicts:
        if verdict.reason is not None:
            state.metrics.rejected.labels(reason=verdict.reason).inc()
    state.metrics.request_seconds.observe(time.perf_counter() - started)
    errors = [
        {"index": v.index, "reason": v.reason, "detail": v.detail}
        for v in collected.verdicts
        if not v.accepted
    ]
    return _answer(
        state,
        request,
        202,
        {"accepted": collected.accepted, "rejected": collected.rejected, "errors": errors},
    )


async def options_events(request: web.Request) -> web.Response:
    state: CollectorState = request.app["state"]
    return web.Response(status=204, headers=_cors_headers(state, request))


async def get_tracker(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app["tracker"],
        content_type="application/javascript",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def get_metrics(request: web.Request) -> web.Response:
    state: CollectorState = request.app["state"]
    return web.Response(
        body=generate_latest(state.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def get_health(request: web.Request) -> web.Response:
    state: CollectorState = request.app["state"]
    return web.json_response({"status": "ok", "in_flight_bytes": state.in_flight_bytes})


def create_collector(
    settings: Settings, producer: Any, registry: CollectorRegistry | None = None
) -> web.Application:
    """The collector's aiohttp application around a started producer (composition root)."""
    registry = registry or CollectorRegistry()
    key = settings.collector_ip_key
    metrics = CollectorMetrics(registry)
    state = CollectorState(
        settings=settings,
        producer=producer,
        metrics=metrics,
        registry=registry,
        limiter=RateLimiter(
            settings.collector_rate_per_second,
            settings.collector_rate_burst,
            settings.collector_max_clients,
        ),
        decoder=EventDecoder(settings.decode_limits()),
        ip_key=key.get_secret_value().encode() if key else secrets.token_bytes(32),
        cors=frozenset(settings.collector_cors_origins),
        coalescer=EnvelopeCoalescer(
            producer.send,
            lambda: _partition_count(producer, settings.events_topic),
            settings.events_topic,
            settings.collector_linger_ms / 1000,
            settings.collector_envelope_max_bytes,
            metrics.records.inc,
        ),
    )
    # The body limit is ours (413 with a JSON answer), not aiohttp's default 1 MiB.
    app = web.Application(client_max_size=settings.collector_max_body_bytes + 1024)
    app["state"] = state
    app["tracker"] = tracker_source()
    app.router.add_post("/v1/events", post_events)
    app.router.add_route("OPTIONS", "/v1/events", options_events)
    app.router.add_get("/tracker.js", get_tracker)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    return app


async def _partition_count(producer: Any, topic: str) -> int:
    """The topic's partitions as the producer's metadata has them (fetched once, then
    cached by aiokafka and refreshed with its metadata)."""
    partitions = await producer.partitions_for(topic)
    if not partitions:
        raise RuntimeError(f"topic {topic!r} has no partitions")
    return len(partitions)


def make_collector_producer(settings: Settings) -> AIOKafkaProducer:
    """acks=all; Kafka's default murmur2 partitioner on the user key (as every producer)."""
    return AIOKafkaProducer(
        acks="all",
        linger_ms=5,
        max_batch_size=settings.kafka_producer_batch_bytes,
        max_request_size=max(settings.max_record_bytes + 1024, 1_048_576),
        request_timeout_ms=int(PRODUCE_TIMEOUT_SECONDS * 1000),
        client_id=f"{settings.app_id}-collector",
        **aiokafka_client_options(settings),
    )


async def serve(settings: Settings) -> None:
    """Run the collector until cancelled."""
    producer = make_collector_producer(settings)
    await producer.start()
    app = create_collector(settings, producer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.collector_host, settings.collector_port)
    await site.start()
    log.info(
        "collector on http://%s:%d (tracker at /tracker.js)",
        settings.collector_host,
        settings.collector_port,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        # what requests cut short left gathered goes out before the producer stops
        await app["state"].coalescer.drain(PRODUCE_TIMEOUT_SECONDS)
        await producer.stop()
