"""Slate assembly: next-click evidence, filters, diversity, exclusions, product slates."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import recommend
from processors.decay import DecayedCounter
from processors.events import Click, Event
from processors.pipeline import SliceConfig, SliceProcessor
from processors.popularity import PopularityConfig, PopularityIndex, RankedSnapshot
from processors.recommend import AssemblyConfig, current_session
from processors.slates import PopularCandidate, Slate, SlateItem, popular_candidates
from processors.user_state import RecentItem, UserState


def click(
    i: int, user: str, item: str, category: str = "pasta", kind: str = "recipe", step: int = 1000
) -> Click:
    return Click(
        event_id=f"e{i}-{user}-{item}",
        ts=1_000_000 + i * step,
        user_id=user,
        item_id=item,
        item_type=kind,
        category=category,  # type: ignore[arg-type]
    )


def history(n_users: int, path: list[str], start: int = 0) -> list[Event]:
    return [
        click(start + u * 100 + step, f"h{u}", item)
        for u in range(n_users)
        for step, item in enumerate(path)
    ]


def test_a_click_changes_the_slate_to_what_followed_it_for_others() -> None:
    events = history(5, ["a", "b"]) + history(3, ["x", "y"], start=10_000)
    processor = SliceProcessor(SliceConfig())
    states: dict[str, UserState] = {}
    states.update(processor.process_batch([(0, e) for e in events], states, 10**7).touched)
    before = processor.process_batch([(0, click(50_000, "me", "x"))], states, 10**7)
    states.update(before.touched)
    assert before.slates["me"]["recipes"].items[0].id == "y"
    after = processor.process_batch([(0, click(50_001, "me", "a"))], states, 10**7)
    top = after.slates["me"]["recipes"].items[0]
    # five co-views, decayed over the ~14 hours to the newest event (half-life 72 h)
    together = round(5 / 2 ** ((50_001 - 401) * 1000 / (72 * 3_600_000)))
    assert together == 4
    assert (top.id, top.reason) == ("b", f"because you viewed a ({together} times together)")


def test_times_together_counts_the_evidence_as_of_now_not_since_the_models_start() -> None:
    """The pair values are forward-decay weighted from the model's first event: five co-views
    three half-lives after it are stored as 5 x 2**3. The explanation shows 5 (it showed 40),
    and co-views that old evidence decayed below one still show as one."""
    half_life = 72 * 3_600_000  # the model's default
    late = 3 * half_life // 1000  # ``click`` spaces events by ``step`` = 1,000 ms
    events = [click(0, "first", "z"), *history(5, ["a", "b"], start=late)]
    processor = SliceProcessor(SliceConfig())
    states: dict[str, UserState] = {}
    states.update(processor.process_batch([(0, e) for e in events], states, 10**7).touched)
    result = processor.process_batch([(0, click(late + 900, "me", "a"))], states, 10**7)
    top = result.slates["me"]["recipes"].items[0]
    assert (top.id, top.reason) == ("b", "because you viewed a (5 times together)")
    assert processor.cooccurrence.pairs["a"]["b"] == pytest.approx(5 * 2**3, rel=1e-3)
    # the same five co-views, seen from five half-lives later: 5 / 2**5 -> still "1"
    later = late + 5 * half_life // 1000
    result = processor.process_batch(
        [(0, click(later, "other", "q")), (0, click(later + 1, "me2", "a"))], states, 10**7
    )
    assert result.slates["me2"]["recipes"].items[0].reason == (
        "because you viewed a (1 time together)"
    )


def test_excluded_items_never_appear() -> None:
    events = [*history(4, ["a", "b", "c"]), click(90_000, "me", "a")]
    config = SliceConfig(assembly=AssemblyConfig(exclude_items=frozenset({"b"})))
    result = SliceProcessor(config).process_batch([(0, e) for e in events], {}, 10**7)
    ids = [item.id for item in result.slates["me"]["recipes"].items]
    assert "b" not in ids and "c" in ids


def test_diversity_caps_items_per_category() -> None:
    paths = [[f"p{i}" for i in range(6)]]
    events = [
        click(u * 100 + s, f"h{u}", item, category="pasta" if item != "p5" else "soup")
        for u in range(3)
        for path in paths
        for s, item in enumerate(path)
    ]
    events.append(click(99_000, "me", "p0"))
    processor = SliceProcessor(SliceConfig(assembly=AssemblyConfig(max_per_category=2)))
    slate = processor.process_batch([(0, e) for e in events], {}, 10**7).slates["me"]["recipes"]
    categories = [item.category for item in slate.items]
    assert categories.count("pasta") <= 2
    assert "soup" in categories


def test_each_item_is_shown_under_its_own_category_or_none() -> None:
    """An item the stream gave no category is shown under none (not under some other
    category), next to items of known categories, in the same slate."""
    events = [
        click(u * 100 + s, f"h{u}", item, category=category)  # type: ignore[arg-type]
        for u in range(3)
        for s, (item, category) in enumerate(
            [("p0", "pasta"), ("p1", None), ("p2", "soup"), ("p3", None), ("p4", "pasta")]
        )
    ]
    events.append(click(99_000, "me", "p0"))
    result = SliceProcessor(SliceConfig()).process_batch([(0, e) for e in events], {}, 10**7)
    shown = {item.id: item.category for item in result.slates["me"]["recipes"].items}
    assert shown == {"p1": None, "p2": "soup", "p3": None, "p4": "pasta"}


def test_product_slate_only_for_users_with_products_and_only_products() -> None:
    events = [
        click(1, "h", "r1"),
        click(2, "h", "p1", kind="product"),
        click(3, "h", "r2"),
        click(10, "me", "r1"),
        click(20, "you", "p1", kind="product"),
    ]
    result = SliceProcessor(SliceConfig()).process_batch([(0, e) for e in events], {}, 10**7)
    assert set(result.slates["me"]) == {"recipes"}
    assert set(result.slates["you"]) == {"recipes", "products"}
    recipes = {i.id for i in result.slates["me"]["recipes"].items}
    assert "p1" not in recipes and "r2" in recipes
    assert all(i.id.startswith("p") for i in result.slates["you"]["products"].items)


def test_current_session_stops_at_the_gap() -> None:
    recent = [
        RecentItem("old", "recipe", None, 0),
        RecentItem("a", "recipe", None, 10**7),
        RecentItem("b", "recipe", None, 10**7 + 1000),
    ]
    assert current_session(recent, gap_ms=60_000) == ["a", "b"]


def test_the_second_hop_recommends_what_follows_a_candidate_and_says_so() -> None:
    # Visitors of "a" clicked "b" next; other visitors clicked "c" after "b". Nobody went
    # from "a" to "c": only the second hop (b's own votes) reaches it.
    events = history(5, ["a", "b"])
    events += [
        click(20_000 + u * 100 + s, f"k{u}", item) for u in range(3) for s, item in enumerate("bc")
    ]
    events.append(click(90_000, "me", "a"))

    def recipes(bridge_weight: float) -> dict[str, str]:
        config = SliceConfig(assembly=AssemblyConfig(popularity_weight=0.0))
        config = dataclasses.replace(
            config,
            cooccurrence=dataclasses.replace(config.cooccurrence, bridge_weight=bridge_weight),
        )
        result = SliceProcessor(config).process_batch([(0, e) for e in events], {}, 10**7)
        return {item.id: item.reason for item in result.slates["me"]["recipes"].items}

    with_hop, without = recipes(1.0), recipes(0.0)
    # (five co-views ~25 hours before "me" clicked: decayed to now, 5 / 2 ** (25 / 72) ~ 4)
    assert with_hop["b"] == without["b"] == "because you viewed a (4 times together)"
    assert with_hop["c"] == "often viewed with b"
    assert without.get("c", "").startswith("popular") or "c" not in without


def reference_popular(
    user: UserState,
    popularity: RankedSnapshot,
    item_type: str,
    size: int,
    top_categories: int,
    exclude: set[str],
) -> list[PopularCandidate]:
    """Popular candidates as the specification reads: each top category's first ``size``
    items not excluded, scored interest x share of the category's peak, an item's best score
    (its first category on a tie), all sorted best first with ties by id; then trending."""
    interests = user.interests.normalised_top(top_categories) if user.interests else []
    scored: dict[str, tuple[float, str]] = {}
    for category, interest in interests:
        ranked = popularity.in_category(item_type, category)
        if not ranked or ranked[0][1] <= 0.0:
            continue
        kept = [(item, pop) for item, pop in ranked if item not in exclude][:size]
        for item, pop in kept:
            score = pop * (interest / ranked[0][1])
            if item not in scored or score > scored[item][0]:
                scored[item] = (score, category)
    best = sorted(scored, key=lambda item: (-scored[item][0], item))[: max(size, 0)]
    out: list[PopularCandidate] = [
        (item, scored[item][0], scored[item][1], f"popular in {scored[item][1]}") for item in best
    ]
    trending = popularity.overall(item_type)
    taken = exclude | scored.keys()
    for item, pop in [(i, p) for i, p in trending if i not in taken][: max(size - len(out), 0)]:
        out.append((item, 0.1 * pop / trending[0][1], None, "trending now"))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([f"r{i}" for i in range(14)]),
            st.sampled_from(["pasta", "soup", "cake", "bread"]),
            st.sampled_from([1.0, 2.0, 0.5]),  # few distinct weights: ties are common
        ),
        max_size=80,
    ),
    st.lists(st.sampled_from(["pasta", "soup", "cake", "bread", "tea"]), max_size=6),
    st.sets(st.sampled_from([f"r{i}" for i in range(14)]), max_size=6),
    st.integers(0, 8),
    st.integers(1, 4),
)
def test_popular_candidates_follow_the_specification(
    observed: list[tuple[str, str, float]],
    liked: list[str],
    exclude: set[str],
    size: int,
    top_categories: int,
) -> None:
    # An item observed under two categories is popular in both: its best score counts.
    index = PopularityIndex(PopularityConfig())
    for item, category, weight in observed:
        index.observe(item, "recipe", category, t_ms=0, weight=weight)  # equal times: ties
    user = UserState(user_id="u", partition=0)
    if liked:
        user.interests = DecayedCounter(half_life_ms=1e9, max_keys=10)
        for t, category in enumerate(liked):
            user.interests.add(category, t)
    snapshot = index.snapshot(20)
    got = popular_candidates(user, snapshot, "recipe", size, top_categories, exclude)
    assert got == reference_popular(user, snapshot, "recipe", size, top_categories, exclude)


def reference_slate(
    processor: SliceProcessor, user: UserState, item_type: str, popularity: RankedSnapshot
) -> list[SlateItem]:
    """The slate as the specification reads, one user at a time with plain dicts: every
    candidate scored (``candidates``), blended with popular ones, all sorted (best first,
    ties by id), then filtered, capped per category and explained."""
    model, catalog, config = processor.cooccurrence, processor.items, processor.config.assembly
    exclude = set(config.exclude_items) | (user.seen_items() if config.exclude_seen else set())
    session = current_session(user.recent, config.session_gap_ms)
    sources = model.vote_sources(session)
    scored = model.candidates(session, sources)
    peak = max(scored.values(), default=0.0)
    voted = {i: s * config.cooccurrence_weight / peak for i, s in scored.items()} if peak else {}
    total = {i: s for i, s in voted.items() if (catalog.get(i) or ("",))[0] == item_type}
    popular = {}
    for item, share, category, reason in reference_popular(
        user, popularity, item_type, config.size * 2, config.top_categories, exclude
    ):
        popular[item] = (config.popularity_weight * share, category, reason)
        total[item] = voted.get(item, 0.0) + config.popularity_weight * share
    out: list[SlateItem] = []
    per_category: dict[str | None, int] = {}
    for item in sorted(total, key=lambda i: (-total[i], i)):
        known, listed = catalog.get(item), popular.get(item)
        if item in exclude or (listed is None and (known is None or known[0] != item_type)):
            continue
        category = known[1] if known is not None and known[0] == item_type else listed[1]  # type: ignore[index]
        if category is not None and per_category.get(category, 0) >= config.max_per_category:
            continue
        per_category[category] = per_category.get(category, 0) + 1
        score = total[item]
        if listed is not None and (item not in voted or listed[0] > score - listed[0]):
            reason = listed[2]
        else:
            source = sources.strongest(item)
            bridge = sources.bridge(item) if source is None else None
            source = source or sources.last
            evidence = model.pairs.get(source, {}).get(item, 0.0)  # forward-decay weighted
            together = max(1, round(evidence / model.latest_weight))  # decayed to now
            reason = (
                f"often viewed with {bridge}"
                if bridge is not None
                else f"because you viewed {source} ({together} time{'s' * (together > 1)} together)"
                if evidence > 0.0
                else f"visitors who viewed {source} also viewed it"
            )
        out.append(SlateItem(item, round(score, 6), reason, category))
        if len(out) == config.size:
            break
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
            st.sampled_from([f"r{i}" for i in range(16)] + ["p1", "p2", "p3"]),
            st.sampled_from(["pasta", "soup", "cake", "tea", "bread"]),
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 6),
    st.integers(1, 3),
    st.booleans(),
    st.sampled_from([0, 1000]),
    st.floats(0.0, 1.0),
)
def test_batched_slates_equal_one_user_at_a_time_with_full_sorting(
    clicks: list[tuple[str, str, str]],
    size: int,
    per_category: int,
    exclude_seen: bool,
    step: int,
    first_share: float,
) -> None:
    # Small slates and tight category caps make the ranked head run out (the fallback);
    # clicks at one instant (step 0) make equal scores, so ties are broken by id. Two
    # batches: what the first leaves behind (lists as arrays, the item index) is reused.
    assembly = AssemblyConfig(size=size, max_per_category=per_category, exclude_seen=exclude_seen)
    processor = SliceProcessor(SliceConfig(assembly=assembly))
    events = [
        click(i, user, item, category, "product" if item.startswith("p") else "recipe", step)
        for i, (user, item, category) in enumerate(clicks)
    ]
    split = int(first_share * len(events))
    states = processor.process_batch([(0, e) for e in events[:split]], {}, 10**7).touched
    result = processor.process_batch([(0, e) for e in events[split:]], states, 10**7)
    ranked = processor.popularity.snapshot(2 * size + SliceConfig().user.history_size)
    for user_id, state in result.touched.items():
        for field, slate in result.slates[user_id].items():
            item_type = "recipe" if field == "recipes" else "product"
            expected = reference_slate(processor, state, item_type, ranked)
            assert slate.items == expected, (user_id, field)


def test_slates_do_not_depend_on_how_users_are_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [*history(4, ["a", "b", "c"]), *history(3, ["x", "y", "b"], start=5_000)]
    events += [click(90_000 + u, f"me{u}", item) for u, item in enumerate("abcxyab")]

    def slates() -> dict[str, dict[str, Slate]]:
        processor = SliceProcessor(SliceConfig())
        return processor.process_batch([(0, e) for e in events], {}, 10**7).slates

    whole = slates()
    monkeypatch.setattr(recommend, "CHUNK_USERS", 2)
    assert slates() == whole and len(whole) == 11  # h0-h3 and me0-me6


def test_item_codes_follow_the_catalog_and_the_models_index() -> None:
    catalog = recommend.ItemCatalog(max_items=3)
    names = ["a", "b", "c"]
    index = {name: at for at, name in enumerate(names)}
    catalog.remember("a", "recipe", "pasta")
    catalog.remember("b", "product", None)

    def entries() -> list[tuple[str | None, str | None]]:
        types, categories = catalog.codes(names, index, 0)
        type_of = {code: name for name, code in catalog.type_ids.items()}
        category_of = {code: name for name, code in catalog.category_ids.items()}
        return [
            (type_of.get(int(t)), category_of.get(int(c)))
            for t, c in zip(types, categories, strict=True)
        ]

    assert entries() == [("recipe", "pasta"), ("product", None), (None, None)]
    catalog.remember("c", "recipe", "soup")  # new
    catalog.remember("b", "recipe", "soup")  # its type changed
    catalog.remember("a", "recipe", "cake")  # only its category changed
    assert entries() == [("recipe", "cake"), ("recipe", "soup"), ("recipe", "soup")]
    names.append("d")  # the model's index grew
    index["d"] = 3
    catalog.remember("d", "product", None)  # a fourth item evicts the least recent: "c"
    assert entries() == [("recipe", "cake"), ("recipe", "soup"), (None, None), ("product", None)]
    names[:] = ["d", "b"]  # the index was rebuilt in place
    index.clear()
    index.update(d=0, b=1)
    types, categories = catalog.codes(names, index, 1)
    assert [int(t) for t in types] == [catalog.type_ids["product"], catalog.type_ids["recipe"]]
    assert [int(c) for c in categories] == [-1, catalog.category_ids["soup"]]


def test_a_tie_at_the_end_of_the_ranked_head_is_broken_by_id_over_all_candidates() -> None:
    # a is followed by z, y and b once each, at one instant: three equal next-click scores.
    # Only the head (2 x size = 2: z and y, the first met) is blended first; its last score
    # ties with b's, so b, unranked but first by id, is only found by blending them all.
    config = SliceConfig(
        assembly=AssemblyConfig(size=1, popularity_weight=0.0),
        cooccurrence=dataclasses.replace(SliceConfig().cooccurrence, bridge_weight=0.0),
    )
    processor = SliceProcessor(config)
    events = [
        *(
            click(u * 10 + s, f"h{u}", item, step=0)
            for u, path in enumerate("zyb")
            for s, item in enumerate(["a", path])
        ),
        click(100, "me", "a", step=0),
    ]  # fmt: skip  (one instant: no time decay between the scores)
    result = processor.process_batch([(0, e) for e in events], {}, 10**7)
    slate = result.slates["me"]["recipes"]
    ranked = processor.popularity.snapshot(2 + config.user.history_size)
    assert [item.id for item in slate.items] == ["b"]
    assert slate.items == reference_slate(processor, result.touched["me"], "recipe", ranked)


def test_rows_past_the_sorted_head_are_ranked_when_the_category_cap_skips_the_head() -> None:
    # a is followed by eight pasta items (strong: many visitors) and, weaker, by one soup,
    # cake, tea and bread item each (each followed by fewer visitors, so by distinct scores,
    # given in an order that is not theirs). With one item per category and three items, the
    # slate takes one pasta item and then the best two of the others, which rank below the
    # sorted head of 2 x size rows: they are found only by ranking the rest too.
    config = SliceConfig(
        assembly=AssemblyConfig(size=3, max_per_category=1, popularity_weight=0.0),
        cooccurrence=dataclasses.replace(SliceConfig().cooccurrence, bridge_weight=0.0),
    )
    processor = SliceProcessor(config)
    followers = [(f"p{k}", "pasta", 6) for k in range(8)]
    followers += [("s1", "soup", 2), ("c1", "cake", 4), ("t1", "tea", 1), ("b1", "bread", 3)]
    events: list[Event] = []
    for item, category, visitors in followers:
        for v in range(visitors):
            user = f"h-{item}-{v}"
            events += [click(len(events), user, "a"), click(len(events) + 1, user, item, category)]
    events.append(click(len(events), "me", "a"))
    result = processor.process_batch([(0, e) for e in events], {}, 10**8)
    slate = result.slates["me"]["recipes"]
    ranked = processor.popularity.snapshot(2 * 3 + config.user.history_size)
    assert [item.id for item in slate.items][1:] == ["c1", "b1"]
    assert slate.items == reference_slate(processor, result.touched["me"], "recipe", ranked)
