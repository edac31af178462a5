"""The slates' JSON written from the tail's rows (``slate_kernel.write_slates``): byte for
byte what msgspec writes for the same ``Slate``, whatever the names, scores and reasons."""

from __future__ import annotations

import dataclasses
import math

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import slate_kernel
from processors.events import Click
from processors.pipeline import SliceConfig, SliceProcessor
from processors.recommend import SLATE_MODEL, AssemblyConfig, JsonStrings, json_strings
from processors.simulator import SimulationConfig, TrafficModel
from processors.slates import (
    SLATE_SCHEMA_VERSION,
    EncodedSlate,
    Slate,
    SlateItem,
    encode_slate,
    round_scores,
)
from processors.user_state import UserState


def written_score(value: float) -> bytes | None:
    out = np.zeros(40, dtype=np.uint8)
    end = slate_kernel.put_score(out, 0, value)
    return None if end < 0 else out[:end].tobytes()


def test_every_six_decimal_score_is_written_as_msgspec_writes_it() -> None:
    # every micro-unit up to 2 and a spread of them up to 1,000, signs and the ``Ne-6`` forms
    micros = np.concatenate([np.arange(0, 2_000_000, 7), np.arange(0, 10**9, 99_991), [10**9]])
    for micro in micros.tolist():
        for value in (micro / 1e6, -micro / 1e6):
            if abs(value) < 1e3:
                assert written_score(value) == msgspec.json.encode(value), value


@settings(max_examples=3_000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(-2e3, 2e3),
        st.floats(0.0, 1e-4),
        st.integers(0, 10**9).map(lambda micro: (micro + 0.5) / 1e6),  # halves: round's
    )
)
def test_a_score_is_round_scores_value_or_left_to_the_caller(value: float) -> None:
    written = written_score(value)
    expected = round_scores([value])[0]
    if written is None:  # what round_scores does not round itself
        scaled = value * 1e6
        assert not abs(value) < 1e3 or abs(abs(scaled - np.rint(scaled)) - 0.5) < 1e-6
    else:
        assert written == msgspec.json.encode(expected)
        assert msgspec.json.decode(written) == expected or math.isnan(expected)


names_strategy = st.lists(st.text(max_size=8), min_size=1, max_size=12)  # quotes, controls...


@settings(max_examples=300, deadline=None)
@given(names_strategy, st.lists(st.text(max_size=6), min_size=1, max_size=4), st.data())
def test_written_slates_are_msgspecs_json_of_the_same_slates(
    names: list[str], texts: list[str], data: st.DataObject
) -> None:
    categories = data.draw(st.lists(st.text(max_size=6), max_size=4))
    width = data.draw(st.integers(1, 2))
    users = data.draw(st.integers(1, 3))
    versions = data.draw(st.lists(st.integers(0, 10**12), min_size=users, max_size=users))
    generated_at = data.draw(st.integers(0, 2**53))
    row = st.tuples(
        st.integers(0, len(names) - 1),  # item
        st.floats(0.0, 999.0),  # score
        st.integers(-1, len(categories) - 1),  # category
        st.sampled_from(range(4)),  # kind
        st.integers(-1, len(names) - 1),  # the named item (the text, for TEXT)
        st.integers(1, 10**6),  # count
    )
    groups = [data.draw(st.lists(row, max_size=5)) for _ in range(users * width)]
    rows = [r for group in groups for r in group]
    item, score, category, kind, reason, count = (
        np.array([r[at] for r in rows], dtype=float if at == 1 else np.int64) for at in range(6)
    )
    reason = np.where(kind == slate_kernel.TEXT, reason % len(texts), reason)
    bounds = np.cumsum([0] + [len(group) for group in groups]).astype(np.int64)
    out, offsets, unsure = slate_kernel.write_slates(
        bounds,
        (item, score, category, kind, reason, count),
        JsonStrings().arrays(names, generation=0),  # as the slice keeps them, grown
        json_strings(texts + categories),
        len(texts),
        np.array(versions, dtype=np.int64),
        width,
        generated_at,
        slate_kernel.slate_json_parts(msgspec.json.encode('m"odel'), SLATE_SCHEMA_VERSION),
    )

    def sentence(at: int) -> str:
        if kind[at] == slate_kernel.TEXT:
            return texts[reason[at]]
        named = names[reason[at]] if reason[at] >= 0 else ""
        if kind[at] == slate_kernel.BECAUSE:
            times = "time" if count[at] == 1 else "times"
            return f"because you viewed {named} ({count[at]} {times} together)"
        if kind[at] == slate_kernel.VISITORS:
            return f"visitors who viewed {named} also viewed it"
        return f"often viewed with {named}"

    assert not unsure.any()  # scores below 1e3, never a half: put_score writes them all
    for group in range(len(groups)):
        expected = Slate(
            items=[
                SlateItem(
                    names[item[at]],
                    round_scores([score[at]])[0],
                    sentence(at),
                    categories[category[at]] if category[at] >= 0 else None,
                )
                for at in range(bounds[group], bounds[group + 1])
            ],
            version=versions[group // width],
            generated_at=generated_at,
            model='m"odel',
        )
        assert out[offsets[group] : offsets[group + 1]].tobytes() == encode_slate(expected)


def simulated_slates(config: SliceConfig, events: int = 3_000) -> list[dict]:
    processor = SliceProcessor(config)
    model = TrafficModel(SimulationConfig(seed=5), start_ms=1_000_000)
    for record in model.catalog_records():
        processor.apply_catalog(record)
    stream = [event for _, event in zip(range(events), model.events(), strict=False)]
    states: dict[str, UserState] = {}
    out = []
    for start in range(0, len(stream), 250):
        batch = [(0, event) for event in stream[start : start + 250]]
        result = processor.process_batch(batch, states, now_ms=stream[-1].ts)
        states.update(result.touched)
        out.append(result.slates)
    return out


def test_the_slates_of_simulated_traffic_read_back_as_they_were_written() -> None:
    encoded = 0
    for slates in simulated_slates(SliceConfig()):
        for by_field in slates.values():
            for slate in (by_field.get("recipes"), by_field.get("products")):
                if slate is None:
                    continue
                assert isinstance(slate, EncodedSlate)
                assert encode_slate(slate) == msgspec.json.encode(slate.decoded())
                assert slate.ids == [item.id for item in slate.items]
                assert (slate.version, slate.model) == (slate.decoded().version, SLATE_MODEL)
                encoded += 1
    assert encoded > 1_000


def test_a_slate_with_a_score_the_kernel_cannot_write_is_written_by_msgspec() -> None:
    # next-click scores scaled to 5,000: at or above 1e3 round_scores asks ``round``
    heavy = dataclasses.replace(SliceConfig(), assembly=AssemblyConfig(cooccurrence_weight=5e3))
    clicks = [("h1", "a"), ("h1", "b"), ("h2", "a"), ("h2", "b"), ("me", "a")]
    processor = SliceProcessor(heavy)
    events = [
        Click(event_id=f"e{i}", ts=1_000 + i, user_id=user, item_id=item, item_type="recipe")
        for i, (user, item) in enumerate(clicks)
    ]
    result = processor.process_batch([(0, event) for event in events], {}, now_ms=2_000)
    slate = result.slates["me"]["recipes"]
    assert type(slate) is Slate
    assert slate.items[0].id == "b" and slate.items[0].score >= 1e3
    assert encode_slate(slate) == msgspec.json.encode(slate)
