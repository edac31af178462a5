"""The live terminal view of ``appetence up``: reads the worker's /metrics and Redis."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.panel import Panel
from rich.table import Table


def scrape(
    url: str, timeout: float = 2.0, names: Iterable[str] = ()
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name from a Prometheus text endpoint ({} if unreachable); only the samples
    ``names`` (as ``name[]`` query parameters, which the worker's page and prometheus_client's
    own honour) when given: a fraction of the page's cost to the worker."""
    if names:
        url += ("&" if "?" in url else "?") + urlencode([("name[]", name) for name in names])
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def buckets(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str
) -> list[tuple[float, float]]:
    out = [(float(labels["le"]), value) for labels, value in samples.get(f"{name}_bucket", [])]
    return sorted(out)


def quantile(bucket_deltas: list[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative histogram buckets (upper bound of the bucket it falls in)."""
    if not bucket_deltas or bucket_deltas[-1][1] <= 0:
        return None
    target = q * bucket_deltas[-1][1]
    for upper, count in bucket_deltas:
        if count >= target:
            return upper
    return None


#: The samples the live view reads (``appetence_last_batch_timestamp_seconds``, unlabelled,
#: has a sample from the start: whether the worker is up before its first event, when its
#: labelled counters have none yet; a worker of the same version answers a process_* sample
#: too, but this one does not depend on how its registry was made).
LIVE_SAMPLES = (
    "appetence_events_consumed_total",
    "appetence_events_rejected_total",
    "appetence_event_to_redis_seconds_bucket",
    "appetence_redis_writes_total",
    "appetence_last_batch_timestamp_seconds",
)


@dataclass
class LiveState:
    metrics_url: str
    redis_client: redis.Redis
    key_prefix: str
    started: float = field(default_factory=time.monotonic)
    previous: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    previous_at: float = field(default_factory=time.monotonic)
    first_event_after: float | None = None
    last: dict[str, object] = field(default_factory=dict)
    sample_users: list[str] = field(default_factory=list)

    def poll(self) -> dict[str, object]:
        now = time.monotonic()
        current = scrape(self.metrics_url, names=LIVE_SAMPLES)
        interval = max(1e-6, now - self.previous_at)
        consumed = total(current, "appetence_events_consumed_total")
        rejected = total(current, "appetence_events_rejected_total")
        rate = (consumed - total(self.previous, "appetence_events_consumed_total")) / interval
        reject_rate = (
            rejected - total(self.previous, "appetence_events_rejected_total")
        ) / interval
        latency_now = buckets(current, "appetence_event_to_redis_seconds")
        latency_before = dict(buckets(self.previous, "appetence_event_to_redis_seconds"))
        window = [(le, c - latency_before.get(le, 0.0)) for le, c in latency_now]
        if not window or window[-1][1] <= 0:
            window = latency_now  # nothing new in this interval: fall back to the total
        if consumed > 0 and self.first_event_after is None:
            self.first_event_after = now - self.started
        try:
            users_with_slates = int(self.redis_client.dbsize())
            if len(self.sample_users) < 3:
                _, keys = self.redis_client.scan(0, match=f"{self.key_prefix}:user:*", count=200)
                self.sample_users = [
                    (k.decode() if isinstance(k, bytes) else str(k)).rsplit(":", 1)[-1]
                    for k in keys[:3]
                ]
        except redis.RedisError:
            users_with_slates = -1
        self.previous, self.previous_at = current, now
        self.last = {
            "worker_up": bool(current),
            "events_consumed": int(consumed),
            "events_rejected": int(rejected),
            "events_per_second": round(rate, 1),
            "rejected_per_second": round(reject_rate, 1),
            "latency_p50_seconds": quantile(window, 0.5),
            "latency_p99_seconds": quantile(window, 0.99),
            "users_with_slates": users_with_slates,
            "redis_writes_ok": int(
                sum(
                    v
                    for labels, v in current.get("appetence_redis_writes_total", [])
                    if labels.get("result") == "ok"
                )
            ),
            "first_event_after_seconds": (
                round(self.first_event_after, 2) if self.first_event_after is not None else None
            ),
            "uptime_seconds": round(now - self.started, 1),
        }
        return self.last

    def samples(self) -> list[tuple[str, list[str], str]]:
        """Sample users' top recipes and top banner (with reasons), read like an ad server."""
        out = []
        for user_id in self.sample_users:
            try:
                raw, banners = self.redis_client.hmget(
                    f"{self.key_prefix}:user:{user_id}", ["recipes", "banners"]
                )
            except redis.RedisError:
                continue
            if raw:
                slate = json.loads(raw)
                recipes = [f"{i['id']} ({i['reason']})" for i in slate["items"][:4]]
                top = json.loads(banners)["items"][:1] if banners else []
                banner = f"{top[0]['id']} ({top[0]['reason']})" if top else ""
                out.append((user_id, recipes, banner))
        return out

    def render(self, header: str) -> Group:
        stats = self.last
        table = Table(show_header=False, box=None)
        fmt = {
            "latency_p50_seconds": "p50 event→Redis (s)",
            "latency_p99_seconds": "p99 event→Redis (s)",
        }
        for key, value in stats.items():
            table.add_row(fmt.get(key, key.replace("_", " ")), str(value))
        users = Table(title="sample users: top recipes and banner", show_lines=False)
        users.add_column("user")
        users.add_column("recipes")
        users.add_column("banner")
        for user_id, items, banner in self.samples():
            users.add_row(user_id, ", ".join(items), banner)
        return Group(Panel(header, title="appetence up"), table, users)
