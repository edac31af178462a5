"""The event contract (schema version 1) and the pure decoder for Kafka record values.

A record value is either one event (a JSON object) or a *batch envelope*: a JSON array of
events bound for one partition. Every event is validated on its own, so one bad event in
a batch is rejected alone, with its original bytes and a machine-readable reason.

>>> decoder = EventDecoder(DecodeLimits())
>>> now = 1_700_000_000_000
>>> good = b'{"type":"click","event_id":"e1","ts":1700000000000,"user_id":"u1",'
>>> good += b'"item_id":"r42","item_type":"recipe","category":"pasta"}'
>>> result = decoder.decode_record(good, now_ms=now)
>>> [(e.type, e.user_id, e.item_id) for e in result.events]
[('click', 'u1', 'r42')]
>>> bad = decoder.decode_record(b'{"type":"shout","event_id":"e2"}', now_ms=now)
>>> [(r.reason, r.detail) for r in bad.rejections]
[('unknown_type', "Invalid value 'shout' - at `$.type`")]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal, TypeAlias

import msgspec

SCHEMA_VERSION = 1

#: Reasons a record or event is rejected; the values label
#: ``appetence_events_rejected_total{reason}`` and travel with the dead letter.
REJECT_REASONS = (
    "too_large",
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "unknown_type",
    "missing_field",
    "invalid_field",
    "ts_in_future",
    "ts_too_old",
    "empty_batch",
    "processing_error",  # not the input's fault: the worker failed on this batch
)

ItemType: TypeAlias = Literal["recipe", "product", "banner", "page"]
ShortStr = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=32_503_680_000_000)]  # year 3000


class EventBase(
    msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, tag_field="type", gc=False
):
    """Fields shared by every event type. ``type`` is the tag that selects the subtype."""

    event_id: Annotated[
        Identifier, msgspec.Meta(description="Unique id; duplicates within the window are ignored")
    ]
    ts: Annotated[Millis, msgspec.Meta(description="Event time, milliseconds since the epoch")]
    user_id: Annotated[Identifier, msgspec.Meta(description="Kafka key; all state is per user")]
    session_id: Identifier | None = None
    site: ShortStr | None = None
    item_id: Identifier | None = None
    item_type: ItemType | None = None
    category: ShortStr | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=32)] = []
    placement: ShortStr | None = None
    position: Annotated[int, msgspec.Meta(ge=0, le=10_000)] | None = None
    device: ShortStr | None = None
    os: ShortStr | None = None
    browser: ShortStr | None = None
    country: ShortStr | None = None
    plan: ShortStr | None = None
    referrer: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    dwell_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    seq: (
        Annotated[
            int, msgspec.Meta(ge=0, description="Optional per-user sequence number (gap detection)")
        ]
        | None
    ) = None
    v: Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION

    #: The event type tag (``pageview``, ``click`` or ``impression``): a class attribute of
    #: each type, read several times per event (a property reading the struct's config cost
    #: ~0.2 us a read).
    type: ClassVar[str]


class PageView(EventBase, tag="pageview", frozen=True, kw_only=True):
    """A page was viewed; ``item_id`` is the recipe/product/page shown, if any."""

    type: ClassVar[str] = "pageview"


class Click(EventBase, tag="click", frozen=True, kw_only=True):
    """A click on an item (recipe, product or banner): the item is required."""

    type: ClassVar[str] = "click"

    item_id: Identifier
    item_type: ItemType


class Impression(EventBase, tag="impression", frozen=True, kw_only=True):
    """A banner was shown; ``item_id`` is the banner id."""

    type: ClassVar[str] = "impression"

    item_id: Identifier
    item_type: Literal["banner"] = "banner"


Event: TypeAlias = PageView | Click | Impression
EVENT_TYPES: dict[str, type[EventBase]] = {
    "pageview": PageView,
    "click": Click,
    "impression": Impression,
}


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied to every event; all configurable through Settings."""

    max_event_bytes: int = 16 * 1024
    max_record_bytes: int = 1024 * 1024
    max_future_skew_ms: int = 5 * 60 * 1000
    max_age_ms: int = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected event (or whole record): the original bytes and why."""

    reason: str
    detail: str
    raw: bytes


@dataclass(slots=True)
class DecodedRecord:
    events: list[Event] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _classify(error: msgspec.ValidationError) -> str:
    message = str(error)
    if message.startswith("Object missing required field"):
        return "missing_field"
    if message.endswith("- at `$.type`"):
        return "unknown_type"
    if message.startswith("Expected `object`") and "- at `$" not in message:
        return "not_an_object"
    return "invalid_field"


class EventDecoder:
    """Decodes record values into validated events; never raises on bad input."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self._event = msgspec.json.Decoder(Event)
        self._batch = msgspec.json.Decoder(list[msgspec.Raw])

    def decode_record(self, value: bytes | None, now_ms: int) -> DecodedRecord:
        """Decode one Kafka record value: a single event or a JSON array of events."""
        out = DecodedRecord()
        if not value:
            out.rejections.append(Rejection("invalid_json", "empty record value", value or b""))
            return out
        if len(value) > self.limits.max_record_bytes:
            out.rejections.append(Rejection("too_large", f"record of {len(value)} bytes", value))
            return out
        first = value.lstrip()[:1]
        if first == b"[":
            try:
                parts = self._batch.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
                reason = "not_utf8" if isinstance(error, UnicodeDecodeError) else "invalid_json"
                out.rejections.append(Rejection(reason, str(error), value))
                return out
            except RecursionError:  # hostile nesting ([[[[...): not JSON we take
                out.rejections.append(Rejection("invalid_json", "nested too deeply", value))
                return out
            if not parts:
                out.rejections.append(Rejection("empty_batch", "batch with no events", value))
            for part in parts:
                self._decode_one(bytes(part), now_ms, out)
        else:
            self._decode_one(value, now_ms, out)
        return out

    def _decode_one(self, raw: bytes, now_ms: int, out: DecodedRecord) -> None:
        limits = self.limits
        if len(raw) > limits.max_event_bytes:
            out.rejections.append(Rejection("too_large", f"event of {len(raw)} bytes", raw))
            return
        try:
            event = self._event.decode(raw)
        except msgspec.ValidationError as error:
            out.rejections.append(Rejection(_classify(error), str(error), raw))
            return
        except msgspec.DecodeError as error:
            out.rejections.append(Rejection("invalid_json", str(error), raw))
            return
        except UnicodeDecodeError as error:
            out.rejections.append(Rejection("not_utf8", str(error), raw))
            return
        except RecursionError:
            out.rejections.append(Rejection("invalid_json", "nested too deeply", raw))
            return
        if event.ts > now_ms + limits.max_future_skew_ms:
            out.rejections.append(
                Rejection("ts_in_future", f"ts {event.ts} is {event.ts - now_ms} ms ahead", raw)
            )
        elif event.ts < now_ms - limits.max_age_ms:
            out.rejections.append(
                Rejection("ts_too_old", f"ts {event.ts} is {now_ms - event.ts} ms old", raw)
            )
        else:
            out.events.append(event)


_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """Encode one event as compact JSON (the wire format)."""
    return _encoder.encode(event)


def encode_batch(events: list[Event]) -> bytes:
    """Encode a batch envelope: a JSON array of events bound for one partition."""
    return _encoder.encode(events)


def merge_envelopes(envelopes: Sequence[bytes]) -> bytes:
    """One batch envelope holding the events of ``envelopes`` (each ``encode_batch``'s
    output: a JSON array with no space around its brackets), in order, without decoding them.

    >>> merge_envelopes([b'[{"a":1}]', b'[{"b":2},{"c":3}]'])
    b'[{"a":1},{"b":2},{"c":3}]'
    >>> merge_envelopes([b'[{"a":1}]', b'[]'])
    b'[{"a":1}]'
    """
    if len(envelopes) == 1:
        return envelopes[0]
    return b"[" + b",".join(inner for envelope in envelopes if (inner := envelope[1:-1])) + b"]"


class DeadLetter(msgspec.Struct, frozen=True):
    """What lands on the dead-letter topic: why, and the original bytes (base64 in JSON)."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    rejected_at: int
    original: bytes


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return _encoder.encode(letter)


def dead_letter_bytes(
    rejection: Rejection, source_topic: str, source_partition: int, source_offset: int, now_ms: int
) -> bytes:
    """The dead-letter record of a rejected event, record or catalog line (one format for all).

    >>> import json
    >>> raw = dead_letter_bytes(Rejection("invalid_json", "bad", b"{"), "t", 0, 7, now_ms=1)
    >>> json.loads(raw)["reason"], json.loads(raw)["source_offset"]
    ('invalid_json', 7)
    """
    letter = DeadLetter(
        reason=rejection.reason,
        detail=rejection.detail,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        rejected_at=now_ms,
        original=rejection.raw,
    )
    return encode_dead_letter(letter)


def event_json_schemas() -> dict[str, dict[str, object]]:
    """One JSON Schema per event type, generated from the code's own types."""
    schemas: dict[str, dict[str, object]] = {}
    for name, event_type in EVENT_TYPES.items():
        schema = msgspec.json.schema(event_type)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://appetence.dev/schemas/v{SCHEMA_VERSION}/{name}.json"
        schema["title"] = f"appetence {name} event (schema v{SCHEMA_VERSION})"
        schemas[name] = schema
    return schemas
