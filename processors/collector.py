"""Pure logic of the HTTP collector: per-client rate limits, IP pseudonyms, body validation.

The collector (``stream/collector.py``) is the shell: it reads the request, asks these
functions what to do, produces to Kafka and answers. Nothing here does I/O or reads a clock.

>>> limiter = RateLimiter(rate_per_second=1.0, burst=2, max_clients=10)
>>> [limiter.allow("a", now=0.0)[0] for _ in range(3)]
[True, True, False]
>>> limiter.allow("a", now=0.0)[1]  # seconds until the next token
1.0
>>> limiter.allow("a", now=1.0)[0]
True
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

from processors.events import Event, EventDecoder, Rejection, encode_batch


class RateLimiter:
    """Token buckets per client: ``rate_per_second`` sustained, ``burst`` at once.

    Bounded: at most ``max_clients`` buckets; the least recently seen client is forgotten
    (it comes back with a full bucket, which only ever errs towards letting traffic in).
    """

    def __init__(self, rate_per_second: float, burst: int, max_clients: int) -> None:
        if rate_per_second <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_second > 0, burst >= 1 and max_clients >= 1 required")
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, client: str, now: float, cost: float = 1.0) -> tuple[bool, float]:
        """Take ``cost`` tokens if there are enough: (allowed, seconds until there would be)."""
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        retry_after = 0.0 if allowed else (cost - tokens) / self.rate
        return allowed, retry_after

    def __len__(self) -> int:
        return len(self._buckets)


def pseudonymise(key: bytes, value: str) -> str:
    """HMAC-SHA256 of a client address: stable for one key, not reversible without it.

    >>> pseudonymise(b"k" * 32, "203.0.113.9") == pseudonymise(b"k" * 32, "203.0.113.9")
    True
    >>> pseudonymise(b"k" * 32, "203.0.113.9") != pseudonymise(b"x" * 32, "203.0.113.9")
    True
    >>> len(pseudonymise(b"k" * 32, "203.0.113.9"))
    32
    """
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EventVerdict:
    """What happened to the event at ``index`` of the request body."""

    index: int
    accepted: bool
    reason: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class CollectedBody:
    """A validated request body: the records to produce and a verdict per event."""

    records: list[tuple[str, bytes]] = field(default_factory=list)  # (user_id, value)
    verdicts: list[EventVerdict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for verdict in self.verdicts if verdict.accepted)

    @property
    def rejected(self) -> int:
        return len(self.verdicts) - self.accepted


_array_of_raw = msgspec.json.Decoder(list[msgspec.Raw])


def collect_body(decoder: EventDecoder, body: bytes, now_ms: int, max_events: int) -> CollectedBody:
    """Validate one event (a JSON object) or a JSON array of events against the contract.

    Each event is judged alone (the worker's decoder, so the collector and the worker agree);
    accepted events are grouped per user into one batch-envelope record each (one user's
    events always share a partition), in body order. A body that is not JSON, an empty array
    or one over ``max_events`` is one rejection at index -1.

    >>> from processors.events import DecodeLimits
    >>> body = b'[{"type":"pageview","event_id":"e1","ts":1000,"user_id":"u1"},{"type":"x"}]'
    >>> out = collect_body(EventDecoder(DecodeLimits(max_age_ms=10**15)), body, 1000, 100)
    >>> out.accepted, out.rejected, [r[0] for r in out.records]
    (1, 1, ['u1'])
    >>> out.verdicts[1].reason
    'unknown_type'
    """
    out = CollectedBody()
    stripped = body.lstrip()
    if stripped[:1] == b"[":
        try:
            parts = [bytes(part) for part in _array_of_raw.decode(body)]
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            return _whole_body_rejected(out, "invalid_json", str(error), body)
        except RecursionError:
            return _whole_body_rejected(out, "invalid_json", "nested too deeply", body)
        if not parts:
            return _whole_body_rejected(out, "empty_batch", "an array with no events", body)
        if len(parts) > max_events:
            return _whole_body_rejected(
                out, "too_large", f"{len(parts)} events in one request (max {max_events})", body
            )
    else:
        parts = [body]
    by_user: dict[str, list[Event]] = {}
    for index, raw in enumerate(parts):
        decoded = decoder.decode_record(raw, now_ms) if raw.lstrip()[:1] != b"[" else None
        if decoded is None:  # a nested array is not an event
            rejection = Rejection("not_an_object", "expected an event object", raw)
        elif decoded.events:
            event = decoded.events[0]
            by_user.setdefault(event.user_id, []).append(event)
            out.verdicts.append(EventVerdict(index, True))
            continue
        else:
            rejection = decoded.rejections[0]
        out.rejections.append(rejection)
        out.verdicts.append(EventVerdict(index, False, rejection.reason, rejection.detail[:300]))
    out.records = [(user, encode_batch(events)) for user, events in by_user.items()]
    return out


def _whole_body_rejected(
    out: CollectedBody, reason: str, detail: str, body: bytes
) -> CollectedBody:
    rejection = Rejection(reason, detail[:300], body)
    out.rejections.append(rejection)
    out.verdicts.append(EventVerdict(-1, False, reason, rejection.detail))
    return out


def client_address(peer: str | None, forwarded_for: str | None, trust_forwarded: bool) -> str:
    """The client's address: the first X-Forwarded-For hop only behind a trusted proxy.

    >>> client_address("10.0.0.2", "203.0.113.9, 10.0.0.2", trust_forwarded=True)
    '203.0.113.9'
    >>> client_address("10.0.0.2", "203.0.113.9", trust_forwarded=False)
    '10.0.0.2'
    """
    if trust_forwarded and forwarded_for:
        first = forwarded_for.split(",")[0].strip()
        if first:
            return first
    return peer or "unknown"


def cors_origin(origin: str | None, allowed: frozenset[str]) -> str | None:
    """The Access-Control-Allow-Origin value for a request's Origin, or None (no CORS).

    >>> cors_origin("https://recipes.example", frozenset({"https://recipes.example"}))
    'https://recipes.example'
    >>> cors_origin("https://evil.example", frozenset({"https://recipes.example"})) is None
    True
    >>> cors_origin("https://any.example", frozenset({"*"}))
    '*'
    """
    if not origin:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None
