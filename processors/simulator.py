"""A seeded, realistic traffic model of a recipe site with an e-shop and banners.

Pure: it generates events in event-time order and knows its own ground truth (user tastes,
true banner CTRs per segment, true return probabilities), which later evaluations measure
against. Kafka production lives in ``stream.simulate``.

>>> model = TrafficModel(SimulationConfig(seed=7, users_per_minute=30), start_ms=0)
>>> events = [event for _, event in zip(range(200), model.events())]
>>> len(events), all(a.ts <= b.ts for a, b in zip(events, events[1:]))
(200, True)
>>> sorted({event.type for event in events})
['click', 'impression', 'pageview']
>>> again = TrafficModel(SimulationConfig(seed=7, users_per_minute=30), start_ms=0)
>>> [e.event_id for _, e in zip(range(200), again.events())] == [e.event_id for e in events]
True
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from processors.catalog import CatalogBanner, CatalogItem, CatalogRecord
from processors.events import Click, Event, Impression, ItemType, PageView

CATEGORIES = (
    "pasta",
    "soup",
    "salad",
    "dessert",
    "baking",
    "vegan",
    "grill",
    "seafood",
    "breakfast",
    "curry",
    "asian",
    "drinks",
)
TAGS = (
    "quick",
    "easy",
    "healthy",
    "spicy",
    "kids",
    "budget",
    "gluten-free",
    "dairy-free",
    "one-pot",
    "meal-prep",
    "festive",
    "summer",
    "winter",
    "comfort",
    "low-carb",
    "high-protein",
    "vegetarian",
    "party",
    "brunch",
    "classic",
)
DEVICES = (("mobile", 0.6), ("desktop", 0.3), ("tablet", 0.1))
OS_BY_DEVICE = {
    "mobile": (("android", 0.55), ("ios", 0.45)),
    "tablet": (("ios", 0.6), ("android", 0.4)),
    "desktop": (("windows", 0.6), ("macos", 0.3), ("linux", 0.1)),
}
BROWSERS = (("chrome", 0.6), ("safari", 0.25), ("firefox", 0.1), ("edge", 0.05))
PLANS = (("free", 0.85), ("premium", 0.15))
COUNTRIES = (("de", 0.3), ("fr", 0.2), ("it", 0.15), ("es", 0.15), ("nl", 0.1), ("us", 0.1))
REFERRERS = (
    ("", 0.4),
    ("https://www.google.com/", 0.35),
    ("https://www.instagram.com/", 0.15),
    ("https://www.pinterest.com/", 0.1),
)
MINUTE_MS = 60_000
SESSION_GAP_MS = 30 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    seed: int = 42
    recipes: int = 600
    products: int = 120
    banners: int = 24
    users_per_minute: float = 120.0
    site: str = "recipes.example"
    mean_pages_per_session: float = 6.0
    recipe_click_probability: float = 0.35
    banner_every_pages: int = 2
    mean_days_between_sessions: float = 1.5


class UserTruth(msgspec.Struct, frozen=True):
    user_id: str
    taste: dict[str, float]
    device: str
    os: str
    browser: str
    plan: str
    country: str
    segment: str
    return_probability: float


class BannerTruth(msgspec.Struct, frozen=True):
    banner_id: str
    advertiser: str
    categories: list[str]
    tags: list[str]
    linked_recipes: list[str]
    linked_products: list[str]
    ctr_by_segment: dict[str, float]


class ItemTruth(msgspec.Struct, frozen=True):
    item_id: str
    item_type: ItemType
    category: str
    tags: list[str]
    popularity: float


class GroundTruth(msgspec.Struct):
    seed: int
    items: list[ItemTruth]
    banners: list[BannerTruth]
    users: list[UserTruth]


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    names = [name for name, _ in weighted]
    weights = [weight for _, weight in weighted]
    return rng.choices(names, weights)[0]


def segment_of(device: str, plan: str) -> str:
    """The segment banners' true CTRs are defined over."""
    return f"{device}-{plan}"


def true_return_probability(device: str, os: str, browser: str, plan: str, country: str) -> float:
    """Traits drive the chance that a user comes back after a session (the retention truth)."""
    logit = -0.4
    logit += {"desktop": 0.5, "tablet": 0.2, "mobile": -0.2}[device]
    logit += {"ios": 0.3, "macos": 0.3, "android": -0.1, "windows": 0.0, "linux": 0.2}[os]
    logit += {"premium": 1.4, "free": 0.0}[plan]
    logit += {"firefox": 0.2, "safari": 0.1}.get(browser, 0.0)
    logit += {"de": 0.2, "us": -0.2}.get(country, 0.0)
    return 1.0 / (1.0 + math.exp(-logit))


#: Click propensity of each banner slot (slot 0 is the most visible).
POSITION_BIAS = (1.0, 0.6, 0.4, 0.3, 0.2)


def true_banner_ctr(banner: BannerTruth, user: UserTruth, position: int = 0) -> float:
    """The click probability of ``banner`` shown to ``user`` in slot ``position``: its
    segment CTR, raised by the user's taste for its categories, times the slot's bias.

    >>> user = UserTruth("u", {"pasta": 0.5, "soup": 0.5}, "mobile", "ios", "safari", "free",
    ...                  "us", "mobile-free", 0.5)
    >>> banner = BannerTruth("b", "a", ["pasta"], [], [], [], {"mobile-free": 0.02})
    >>> round(true_banner_ctr(banner, user), 4), round(true_banner_ctr(banner, user, 1), 4)
    (0.05, 0.03)
    """
    affinity = 0.5 + 4.0 * sum(user.taste.get(category, 0.0) for category in banner.categories)
    bias = POSITION_BIAS[min(position, len(POSITION_BIAS) - 1)]
    return min(0.9, banner.ctr_by_segment[user.segment] * affinity * bias)


class TrafficModel:
    """Generates events in event-time order from ``start_ms`` on."""

    def __init__(self, config: SimulationConfig, start_ms: int) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start_ms = start_ms
        self._event_counter = 0
        self._user_counter = 0
        self._seq: dict[str, int] = {}
        self._build_catalog()
        self.users: dict[str, UserTruth] = {}

    # --- catalog ------------------------------------------------------------------------
    def _build_catalog(self) -> None:
        rng, cfg = self.rng, self.config
        self.items: list[ItemTruth] = []
        self.by_category: dict[tuple[str, str], tuple[list[str], list[float]]] = {}
        kinds: tuple[tuple[ItemType, int, str], ...] = (
            ("recipe", cfg.recipes, "r"),
            ("product", cfg.products, "p"),
        )
        for item_type, count, prefix in kinds:
            for rank in range(count):
                category = CATEGORIES[rng.randrange(len(CATEGORIES))]
                item = ItemTruth(
                    item_id=f"{prefix}{rank}",
                    item_type=item_type,
                    category=category,
                    tags=rng.sample(TAGS, rng.randint(1, 4)),
                    popularity=1.0 / (rank + 1) ** 0.9,  # long tail (Zipf-like)
                )
                self.items.append(item)
                ids, weights = self.by_category.setdefault((item_type, category), ([], []))
                ids.append(item.item_id)
                weights.append(item.popularity)
        self.item_by_id = {item.item_id: item for item in self.items}
        segments = [segment_of(d, p) for d, _ in DEVICES for p, _ in PLANS]
        self.banners: list[BannerTruth] = []
        recipes = [i for i in self.items if i.item_type == "recipe"]
        products = [i for i in self.items if i.item_type == "product"]
        for b in range(cfg.banners):
            cats = rng.sample(CATEGORIES, rng.randint(1, 2))
            base = rng.lognormvariate(math.log(0.02), 0.6)
            self.banners.append(
                BannerTruth(
                    banner_id=f"b{b}",
                    advertiser=f"brand{b % 8}",
                    categories=cats,
                    tags=rng.sample(TAGS, 2),
                    linked_recipes=[i.item_id for i in rng.sample(recipes, 5) if i.category in cats]
                    or [rng.choice(recipes).item_id],
                    linked_products=[rng.choice(products).item_id],
                    ctr_by_segment={
                        s: round(min(0.5, base * rng.uniform(0.5, 2.0)), 5) for s in segments
                    },
                )
            )

    # --- users --------------------------------------------------------------------------
    def _new_user(self) -> UserTruth:
        rng = self.rng
        self._user_counter += 1
        raw = [rng.gammavariate(0.3, 1.0) + 1e-9 for _ in CATEGORIES]
        total = sum(raw)
        device = _pick(rng, DEVICES)
        os_name = _pick(rng, OS_BY_DEVICE[device])
        browser = (
            "safari" if os_name in ("ios", "macos") and rng.random() < 0.7 else _pick(rng, BROWSERS)
        )
        plan = _pick(rng, PLANS)
        country = _pick(rng, COUNTRIES)
        user = UserTruth(
            user_id=f"u{self.config.seed}-{self._user_counter}",
            taste={c: round(w / total, 6) for c, w in zip(CATEGORIES, raw, strict=True)},
            device=device,
            os=os_name,
            browser=browser,
            plan=plan,
            country=country,
            segment=segment_of(device, plan),
            return_probability=true_return_probability(device, os_name, browser, plan, country),
        )
        self.users[user.user_id] = user
        return user

    def _next_id(self) -> str:
        self._event_counter += 1
        return f"sim{self.config.seed}-{self._event_counter}"

    def _next_seq(self, user_id: str) -> int:
        seq = self._seq.get(user_id, 0) + 1
        self._seq[user_id] = seq
        return seq

    def _session(self, user: UserTruth, start: int) -> list[Event]:
        rng, cfg = self.rng, self.config
        session_id = f"s{self._next_id()}"
        context: dict[str, Any] = {
            "user_id": user.user_id,
            "session_id": session_id,
            "site": cfg.site,
            "device": user.device,
            "os": user.os,
            "browser": user.browser,
            "country": user.country,
            "plan": user.plan,
        }
        referrer = _pick(rng, REFERRERS) or None
        pages = max(1, int(rng.expovariate(1.0 / cfg.mean_pages_per_session)) + 1)
        categories = list(user.taste)
        weights = list(user.taste.values())
        t = start
        events: list[Event] = []

        def stamped(ts: int) -> dict[str, Any]:
            """Fields every event of this session carries: id, time, sequence, context."""
            return {
                "event_id": self._next_id(),
                "ts": ts,
                "seq": self._next_seq(user.user_id),
                **context,
            }

        for page in range(pages):
            item_type = "product" if rng.random() < 0.15 else "recipe"
            category = rng.choices(categories, weights)[0]
            ids, pops = (
                self.by_category.get((item_type, category))
                or self.by_category[("recipe", category)]
            )
            item = self.item_by_id[rng.choices(ids, pops)[0]]
            dwell = int(rng.lognormvariate(math.log(40_000), 0.8))
            events.append(
                PageView(
                    **stamped(t),
                    item_id=item.item_id,
                    item_type=item.item_type,
                    category=item.category,
                    tags=item.tags,
                    referrer=referrer if page == 0 else None,
                    dwell_ms=dwell,
                )
            )
            if rng.random() < cfg.recipe_click_probability:
                t += rng.randint(2_000, 20_000)
                events.append(
                    Click(
                        **stamped(t),
                        item_id=item.item_id,
                        item_type=item.item_type,
                        category=item.category,
                        tags=item.tags,
                    )
                )
            if page % cfg.banner_every_pages == 0 and self.banners:
                banner = rng.choice(self.banners)
                t += rng.randint(100, 1_000)
                events.append(
                    Impression(
                        **stamped(t),
                        item_id=banner.banner_id,
                        category=banner.categories[0],
                        tags=banner.tags,
                        placement="sidebar",
                        position=0,
                    )
                )
                if rng.random() < true_banner_ctr(banner, user):
                    t += rng.randint(500, 5_000)
                    events.append(
                        Click(
                            **stamped(t),
                            item_id=banner.banner_id,
                            item_type="banner",
                            category=banner.categories[0],
                            placement="sidebar",
                            position=0,
                        )
                    )
            t += min(dwell, 10 * MINUTE_MS)
        return events

    def events(self) -> Iterator[Event]:
        """An endless, time-ordered event stream (new users arrive, some return)."""
        rng, cfg = self.rng, self.config
        pending: list[tuple[int, int, Event]] = []
        sessions: list[tuple[int, int, str]] = []  # (start, tiebreak, user_id)
        tiebreak = 0
        arrival_gap = MINUTE_MS / cfg.users_per_minute
        next_arrival = float(self.start_ms)
        while True:
            # The earliest of: next new user, next returning session, next pending event.
            candidates = [next_arrival]
            if sessions:
                candidates.append(sessions[0][0])
            if pending:
                candidates.append(pending[0][0])
            now = min(candidates)
            if pending and pending[0][0] == now:
                yield heapq.heappop(pending)[2]
                continue
            if sessions and sessions[0][0] == now:
                _, _, user_id = heapq.heappop(sessions)
                user = self.users[user_id]
            else:
                user = self._new_user()
                next_arrival += rng.expovariate(1.0 / arrival_gap)
            start = int(now)
            session = self._session(user, start)
            for event in session:
                tiebreak += 1
                heapq.heappush(pending, (event.ts, tiebreak, event))
            if rng.random() < user.return_probability:
                gap = SESSION_GAP_MS + int(
                    rng.expovariate(1.0 / (cfg.mean_days_between_sessions * 86_400_000))
                )
                tiebreak += 1
                heapq.heappush(sessions, (session[-1].ts + gap, tiebreak, user.user_id))

    def catalog_records(self) -> list[CatalogRecord]:
        """The catalog the site publishes: every item, and every banner with its targeting,
        linked items and a daily cap of 2-5 impressions per user (never the true CTRs)."""
        extras = random.Random(self.config.seed + 7)  # leaves the event stream unchanged
        records: list[CatalogRecord] = [
            CatalogItem(id=i.item_id, item_type=i.item_type, category=i.category, tags=i.tags)  # type: ignore[arg-type]
            for i in self.items
        ]
        for banner in self.banners:
            records.append(
                CatalogBanner(
                    id=banner.banner_id,
                    advertiser=banner.advertiser,
                    categories=banner.categories,
                    tags=banner.tags,
                    linked_items=banner.linked_recipes + banner.linked_products,
                    daily_cap=extras.randint(2, 5),
                )
            )
        return records

    def ground_truth(self) -> GroundTruth:
        return GroundTruth(
            seed=self.config.seed,
            items=self.items,
            banners=self.banners,
            users=list(self.users.values()),
        )


#: Malformed records for ``--malformed-rate``: each is rejected with the given reason.
def malformed_record(rng: random.Random, now_ms: int, user_id: str) -> tuple[str, bytes]:
    """One hostile or broken record and the reason the worker must reject it with."""
    base = f'"event_id":"bad-{rng.getrandbits(48)}","user_id":"{user_id}"'
    choices: list[tuple[str, bytes]] = [
        ("invalid_json", b'{"type":"click",' + base.encode() + b",}"),
        ("not_utf8", b'{"type":"click","event_id":"\xff\xfe","ts":1,"user_id":"x"}'),
        ("unknown_type", f'{{"type":"shout",{base},"ts":{now_ms}}}'.encode()),
        ("missing_field", f'{{"type":"click",{base},"ts":{now_ms}}}'.encode()),
        ("invalid_field", f'{{"type":"pageview",{base},"ts":"yesterday"}}'.encode()),
        (
            "too_large",
            f'{{"type":"pageview",{base},"ts":{now_ms},"referrer":"{"x" * 20000}"}}'.encode(),
        ),
        ("ts_in_future", f'{{"type":"pageview",{base},"ts":{now_ms + 86_400_000}}}'.encode()),
        ("ts_too_old", f'{{"type":"pageview",{base},"ts":{now_ms - 400 * 86_400_000}}}'.encode()),
        ("not_an_object", b"[[1,2,3]]"),
    ]
    return rng.choice(choices)
