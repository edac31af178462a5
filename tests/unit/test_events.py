"""The event contract: decoding, every rejection reason, batches, and the published schemas."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.events import (
    EVENT_TYPES,
    REJECT_REASONS,
    Click,
    DecodeLimits,
    EventDecoder,
    Impression,
    PageView,
    encode_batch,
    encode_event,
    event_json_schemas,
)
from processors.simulator import malformed_record

NOW = 1_750_000_000_000
ROOT = Path(__file__).resolve().parents[2]


def decoder(**limits: int) -> EventDecoder:
    return EventDecoder(DecodeLimits(**limits))


def click(**overrides: object) -> Click:
    fields: dict[str, object] = dict(
        event_id="e1", ts=NOW, user_id="u1", item_id="r1", item_type="recipe", category="pasta"
    )
    fields.update(overrides)
    return Click(**fields)  # type: ignore[arg-type]


def test_single_event_round_trips() -> None:
    event = click(tags=["quick"], device="mobile", seq=3)
    result = decoder().decode_record(encode_event(event), NOW)
    assert result.events == [event]
    assert result.rejections == []
    assert result.events[0].type == "click"


def test_batch_envelope_rejects_only_its_bad_event() -> None:
    good = [click(event_id=f"e{i}") for i in range(3)]
    raw = (
        b"["
        + b",".join(
            [
                encode_event(good[0]),
                b'{"type":"nope"}',
                encode_event(good[1]),
                encode_event(good[2]),
            ]
        )
        + b"]"
    )
    result = decoder().decode_record(raw, NOW)
    assert result.events == good
    assert [(r.reason, r.raw) for r in result.rejections] == [("unknown_type", b'{"type":"nope"}')]


def test_batch_encoding_matches_envelope() -> None:
    events = [click(event_id="a"), PageView(event_id="b", ts=NOW, user_id="u2")]
    assert decoder().decode_record(encode_batch(events), NOW).events == events


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "invalid_json"),
        (b'{"type":"click"', "invalid_json"),
        (b'{"type":"click","event_id":"\xff","ts":1,"user_id":"u"}', "not_utf8"),
        (b'{"event_id":"a","ts":1,"user_id":"u"}', "missing_field"),
        (b'{"type":"click","event_id":"a","ts":1750000000000,"user_id":"u"}', "missing_field"),
        (b'{"type":"scroll","event_id":"a","ts":1,"user_id":"u"}', "unknown_type"),
        (b'{"type":7,"event_id":"a","ts":1,"user_id":"u"}', "unknown_type"),
        (b'{"type":"pageview","event_id":"a","ts":"1","user_id":"u"}', "invalid_field"),
        (b'{"type":"pageview","event_id":"","ts":1750000000000,"user_id":"u"}', "invalid_field"),
        (b'{"type":"pageview","event_id":"a","ts":1e400,"user_id":"u"}', "invalid_field"),
        (b'{"type":"pageview","event_id":"a","ts":NaN,"user_id":"u"}', "invalid_json"),
        (
            b'{"type":"pageview","event_id":"a","ts":1750000000000,"user_id":"u","tags":[1]}',
            "invalid_field",
        ),
        (
            b'{"type":"impression","event_id":"a","ts":1750000000000,"user_id":"u",'
            b'"item_id":"b1","item_type":"recipe"}',
            "invalid_field",
        ),
        (b"42", "not_an_object"),
        (b"[]", "empty_batch"),
        (b"", "invalid_json"),
        (
            b'{"type":"pageview","event_id":"a","ts":1750000000000,"user_id":"u","site":"'
            + b"x" * 20_000
            + b'"}',
            "too_large",
        ),
        (b'{"type":"pageview","event_id":"a","ts":1750090000000,"user_id":"u"}', "ts_in_future"),
        (b'{"type":"pageview","event_id":"a","ts":1000,"user_id":"u"}', "ts_too_old"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    result = decoder().decode_record(raw, NOW)
    assert result.events == []
    assert [r.reason for r in result.rejections] == [reason]
    assert result.rejections[0].raw == raw
    assert reason in REJECT_REASONS


def test_record_over_the_record_limit_is_rejected_whole() -> None:
    raw = encode_batch([click(event_id=str(i)) for i in range(100)])
    result = decoder(max_record_bytes=1024).decode_record(raw, NOW)
    assert [r.reason for r in result.rejections] == ["too_large"]


def test_simulator_malformed_corpus_gets_the_reasons_it_claims() -> None:
    rng = random.Random(3)
    seen = set()
    for _ in range(300):
        reason, raw = malformed_record(rng, NOW, "u1")
        result = decoder().decode_record(raw, NOW)
        assert [r.reason for r in result.rejections] == [reason], raw[:200]
        seen.add(reason)
    assert len(seen) >= 9


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decoder_never_raises_and_never_loses_input(raw: bytes) -> None:
    result = decoder().decode_record(raw, NOW)
    assert result.events or result.rejections


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.floats(allow_nan=False)
        | st.text(max_size=20)
        | st.integers(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_arbitrary_json_is_decoded_or_rejected(value: object) -> None:
    result = decoder().decode_record(json.dumps(value).encode(), NOW)
    assert result.events or result.rejections


def test_published_schemas_are_generated_from_the_code() -> None:
    for name, schema in event_json_schemas().items():
        published = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
        assert published == json.loads(json.dumps(schema)), (
            f"schemas/{name}.schema.json is stale: run `make schemas`"
        )


def test_schema_requires_what_the_decoder_requires() -> None:
    schemas = event_json_schemas()
    defs = {name: s["$defs"] for name, s in schemas.items()}  # type: ignore[index]
    assert set(defs["click"]["Click"]["required"]) >= {  # type: ignore[index]
        "type",
        "event_id",
        "ts",
        "user_id",
        "item_id",
        "item_type",
    }
    assert "item_id" in defs["impression"]["Impression"]["required"]  # type: ignore[index]
    raw = encode_event(Impression(event_id="i", ts=NOW, user_id="u", item_id="b1"))
    assert msgspec.json.decode(raw)["type"] == "impression"
    assert decoder().decode_record(raw, NOW).events[0].item_type == "banner"


def test_non_object_inside_a_batch_is_rejected_alone() -> None:
    result = decoder().decode_record(b"[42," + encode_event(click()) + b"]", NOW)
    assert result.events == [click()]
    assert [(r.reason, r.raw) for r in result.rejections] == [("not_an_object", b"42")]


def test_hostile_nesting_is_rejected_not_raised() -> None:
    decoder = EventDecoder(DecodeLimits())
    for value in (b"[" * 5000 + b"]" * 5000, b'[{"a":' * 3000 + b"1" + b"}]" * 3000):
        result = decoder.decode_record(value, now_ms=0)
        assert not result.events and result.rejections[0].reason == "invalid_json"


def test_each_event_types_type_is_its_tag() -> None:
    # ``type`` is a class attribute per event type (read on the hot path), so a new type
    # must name its tag again: this keeps the two from parting
    for tag, event_type in EVENT_TYPES.items():
        assert event_type.type == tag == event_type.__struct_config__.tag
