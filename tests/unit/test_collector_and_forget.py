"""Pure parts of the collector (rate limits, body verdicts, CORS, pseudonyms) and of
forgetting a user (request records, the bounded forgotten list, erasure in the models)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.audiences import AudienceConfig, AudienceLearner
from processors.collector import RateLimiter, collect_body, pseudonymise
from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from processors.events import DecodeLimits, EventDecoder
from processors.forget import ForgottenUsers, decode_forget_request, encode_forget_request
from processors.pipeline import SliceConfig, SliceProcessor

NOW = 1_700_000_000_000
DECODER = EventDecoder(DecodeLimits())


def click(user: str, event_id: str, item: str = "r1") -> dict[str, object]:
    return {"type": "click", "event_id": event_id, "ts": NOW, "user_id": user,
            "item_id": item, "item_type": "recipe"}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_a_client_never_gets_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate, burst, max_clients=5)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow("c", now)[0]
    assert allowed <= burst + rate * now + 1e-9


def test_a_refused_request_is_told_when_to_retry_and_clients_are_bounded() -> None:
    limiter = RateLimiter(2.0, 1, max_clients=3)
    assert limiter.allow("a", 0.0) == (True, 0.0)
    ok, retry = limiter.allow("a", 0.0)
    assert not ok and retry == 0.5
    assert limiter.allow("a", 0.5)[0]
    for client in "bcde":
        limiter.allow(client, 1.0)
    assert len(limiter) == 3


def test_body_verdicts_name_each_bad_event_and_group_good_ones_per_user() -> None:
    body = json.dumps([click("u1", "a"), {"type": "click"}, click("u2", "b"), click("u1", "c"),
                       [1], 7]).encode()  # fmt: skip
    out = collect_body(DECODER, body, NOW, max_events=100)
    assert (out.accepted, out.rejected) == (3, 3)
    assert [(v.index, v.reason) for v in out.verdicts if not v.accepted] == [
        (1, "missing_field"), (4, "not_an_object"), (5, "not_an_object")]  # fmt: skip
    assert [(user, [e["event_id"] for e in json.loads(value)]) for user, value in out.records] == [
        ("u1", ["a", "c"]), ("u2", ["b"])]  # fmt: skip
    assert len(out.rejections) == 3  # all dead-lettered with their original bytes


def test_whole_body_rejections() -> None:
    assert collect_body(DECODER, b"[]", NOW, 10).verdicts[0].reason == "empty_batch"
    assert collect_body(DECODER, b"[{", NOW, 10).verdicts[0].reason == "invalid_json"
    many = json.dumps([click("u", str(i)) for i in range(11)]).encode()
    verdict = collect_body(DECODER, many, NOW, 10).verdicts[0]
    assert (verdict.index, verdict.reason) == (-1, "too_large")
    single = collect_body(DECODER, json.dumps(click("u", "1")).encode(), NOW, 10)
    assert single.accepted == 1 and single.records[0][0] == "u"


@given(st.binary(max_size=300))
def test_the_collector_never_raises_on_arbitrary_bodies(body: bytes) -> None:
    out = collect_body(DECODER, body, NOW, 50)
    assert out.verdicts and out.accepted + out.rejected == len(out.verdicts)


def test_pseudonyms_hide_the_address() -> None:
    pseudonym = pseudonymise(b"0123456789abcdef", "198.51.100.7")
    assert "198" not in pseudonym and len(pseudonym) == 32


def test_forget_requests_round_trip_and_bad_ones_are_refused() -> None:
    request = decode_forget_request(b"u1", encode_forget_request("u1", 42))
    assert request is not None and (request.user_id, request.requested_at) == ("u1", 42)
    assert decode_forget_request(None, encode_forget_request("u1", 42)) is None
    assert decode_forget_request(b"u1", b'{"user_id":"u1","requested_at":-1}') is None


def test_forgotten_users_are_bounded_and_keep_the_latest_request() -> None:
    forgotten = ForgottenUsers(max_users=2, keep_ms=10**9)
    assert forgotten.remember("a", 10) and not forgotten.remember("a", 5)
    assert forgotten.requested_at("a") == 10
    forgotten.remember("b", 1)
    forgotten.remember("c", 1)
    assert "a" not in forgotten and len(forgotten) == 2


def test_forgetting_erases_the_visitor_memory_but_not_the_aggregates() -> None:
    model = CooccurrenceModel(CooccurrenceConfig(max_visitor_items=3))
    for visitor, items in (("u1", "abcde"), ("u1#2", "ab"), ("u10", "ab"), ("u2", "ab")):
        for position, item in enumerate(items):
            model.learn_one(list(items[:position]), item, session_id=visitor)
    rules_before = {k: dict(v) for k, v in model.rules.items()}
    covisits_before = {k: dict(v) for k, v in model.covisits.items()}
    erased = model.forget_visitors(lambda v: v == "u1" or v.startswith("u1#"))
    assert erased == 2
    assert set(model.sessions) == {"u10", "u2"}
    assert model.rules == rules_before
    assert model.covisits == covisits_before  # aggregates: not personal


def test_forgetting_erases_audience_membership_population_and_reservoir() -> None:
    learner = AudienceLearner(AudienceConfig())
    learner.member_added("brand", "u1")
    learner.observe("u1", {"a": 1.0})
    learner.observe("u2", {"b": 1.0})
    assert learner.forget_user("u1") == ["brand"]
    assert learner.forget_user("u2") == []
    assert "u1" not in learner.population and "u2" not in learner.population
    assert all(user not in ("u1", "u2") for user, _ in learner.reservoir)
    assert learner.membership.size() == 0


def test_the_processor_forgets_a_users_sessions_under_session_scope() -> None:
    processor = SliceProcessor(SliceConfig())
    model = processor.cooccurrence
    model.learn_one([], "a", session_id="u1#1")
    model.learn_one([], "a", session_id="u11#1")
    assert processor.forget_user("u1") == 1
    assert set(model.sessions) == {"u11#1"}
