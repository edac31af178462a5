"""``appetence collector``: the HTTP front door for browsers and servers (aiohttp).

``POST /v1/events`` takes one event or a JSON array (any content type: the tracker sends
text/plain so that browsers need no CORS preflight), validates every event with the
worker's decoder, produces the accepted ones to Kafka keyed by ``user_id`` (one batch
envelope per user) and answers once Kafka has acknowledged them:

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
from dataclasses import dataclass
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
from processors.events import EventDecoder, dead_letter_bytes
from stream.config import Settings
from stream.metrics import CollectorMetrics
from stream.topics import aiokafka_client_options

log = logging.getLogger(__name__)

PRODUCE_TIMEOUT_SECONDS = 10.0


def tracker_source() -> bytes:
    return resources.files("stream").joinpath("static/tracker.js").read_bytes()


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
        sends = [
            await state.producer.send(settings.events_topic, value=value, key=user.encode())
            for user, value in collected.records
        ]
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
    state = CollectorState(
        settings=settings,
        producer=producer,
        metrics=CollectorMetrics(registry),
        registry=registry,
        limiter=RateLimiter(
            settings.collector_rate_per_second,
            settings.collector_rate_burst,
            settings.collector_max_clients,
        ),
        decoder=EventDecoder(settings.decode_limits()),
        ip_key=key.get_secret_value().encode() if key else secrets.token_bytes(32),
        cors=frozenset(settings.collector_cors_origins),
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
    runner = web.AppRunner(create_collector(settings, producer), access_log=None)
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
        await producer.stop()
