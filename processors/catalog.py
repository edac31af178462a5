"""The catalog contract: recipes/products and banners/campaigns, validated like events.

A catalog record is one JSON object tagged by ``kind`` (``item`` or ``banner``). It travels on
the compacted catalog topic keyed by ``{kind}:{id}``; a null value (tombstone) deletes the
entry. Invalid records are rejected with a machine-readable reason (the events' reasons) and
go to the catalog dead-letter topic.

>>> catalog = Catalog()
>>> decoded = decode_catalog_record(
...     b'{"kind":"banner","id":"b1","advertiser":"acme","categories":["pasta"],'
...     b'"linked_items":["r1"],"daily_cap":3}'
... )
>>> catalog.apply(decoded.record)
>>> catalog.banners["b1"].categories, catalog.banners["b1"].daily_cap
(('pasta',), 3)
>>> decode_catalog_record(b'{"kind":"banner","id":"b2","daily_cap":-1}').rejection.reason
'invalid_field'
>>> catalog.delete(catalog_key(decoded.record))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeAlias

import msgspec

from processors.banners import Banner
from processors.events import Identifier, Millis, Rejection, ShortStr, Tag, _classify

Names = Annotated[list[ShortStr], msgspec.Meta(max_length=64)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=64)]


class CatalogItem(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="item"):
    """A recipe or product: what its events may omit (category, tags, location)."""

    id: Identifier
    item_type: Literal["recipe", "product"]
    category: ShortStr | None = None
    tags: Tags = []
    location: ShortStr | None = None


class CatalogBanner(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="banner"):
    """A banner of a campaign: targeting, linked recipes/products, window, cap, priority."""

    id: Identifier
    advertiser: ShortStr | None = None
    categories: Names = []
    tags: Tags = []
    locations: Names = []
    linked_items: Annotated[list[Identifier], msgspec.Meta(max_length=500)] = []
    active_from: Millis | None = None
    active_to: Millis | None = None
    daily_cap: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    priority: Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)] = 0.0
    engagement_rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    # Shown only to users flagged for win-back (returning, now unlikely to come back).
    win_back_only: bool = False


CatalogRecord: TypeAlias = CatalogItem | CatalogBanner

_decoder = msgspec.json.Decoder(CatalogRecord)
_encoder = msgspec.json.Encoder()

#: Records larger than this are rejected (``too_large``).
MAX_CATALOG_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class DecodedCatalogRecord:
    record: CatalogRecord | None = None
    rejection: Rejection | None = None


def decode_catalog_record(raw: bytes) -> DecodedCatalogRecord:
    """Validate one catalog record; never raises on bad input."""
    if len(raw) > MAX_CATALOG_RECORD_BYTES:
        return DecodedCatalogRecord(
            rejection=Rejection("too_large", f"record of {len(raw)} bytes", raw)
        )
    try:
        record = _decoder.decode(raw)
    except msgspec.ValidationError as error:
        reason = _classify(error)
        if reason == "unknown_type" or str(error).endswith("- at `$.kind`"):
            reason = "unknown_type"
        return DecodedCatalogRecord(rejection=Rejection(reason, str(error), raw))
    except msgspec.DecodeError as error:
        return DecodedCatalogRecord(rejection=Rejection("invalid_json", str(error), raw))
    except UnicodeDecodeError as error:
        return DecodedCatalogRecord(rejection=Rejection("not_utf8", str(error), raw))
    if (
        isinstance(record, CatalogBanner)
        and record.active_from is not None
        and record.active_to is not None
        and record.active_to <= record.active_from
    ):
        detail = f"active_to {record.active_to} is not after active_from {record.active_from}"
        return DecodedCatalogRecord(rejection=Rejection("invalid_field", detail, raw))
    return DecodedCatalogRecord(record=record)


def encode_catalog_record(record: CatalogRecord) -> bytes:
    return _encoder.encode(record)


def catalog_key(record: CatalogRecord) -> str:
    """The compaction key: one live record per kind and id."""
    kind = "banner" if isinstance(record, CatalogBanner) else "item"
    return f"{kind}:{record.id}"


def to_banner(record: CatalogBanner) -> Banner:
    return Banner(
        banner_id=record.id,
        advertiser=record.advertiser or "",
        categories=tuple(record.categories),
        tags=tuple(record.tags),
        locations=tuple(record.locations),
        linked_items=tuple(record.linked_items),
        active_from_ms=record.active_from,
        active_to_ms=record.active_to,
        daily_cap=record.daily_cap,
        priority=record.priority,
        engagement_rate=record.engagement_rate,
        win_back_only=record.win_back_only,
    )


@dataclass(slots=True)
class Catalog:
    """The current catalog, as the compacted topic says (bounded by ``max_items``)."""

    max_items: int = 1_000_000
    max_banners: int = 10_000
    items: dict[str, CatalogItem] = field(default_factory=dict)
    banners: dict[str, Banner] = field(default_factory=dict)
    #: Bumped whenever ``banners`` changes (rankers cache their arrays by it).
    banner_revision: int = 0

    def apply(self, record: CatalogRecord | None) -> None:
        if isinstance(record, CatalogBanner):
            if record.id in self.banners or len(self.banners) < self.max_banners:
                self.banners[record.id] = to_banner(record)
                self.banner_revision += 1
        elif isinstance(record, CatalogItem) and (
            record.id in self.items or len(self.items) < self.max_items
        ):
            self.items[record.id] = record

    def delete(self, key: str) -> bool:
        """Apply a tombstone for ``{kind}:{id}``; True if something was removed."""
        kind, _, entry_id = key.partition(":")
        table: dict[str, CatalogItem] | dict[str, Banner] = (
            self.banners if kind == "banner" else self.items
        )
        removed = table.pop(entry_id, None) is not None
        if removed and kind == "banner":
            self.banner_revision += 1
        return removed

    def __len__(self) -> int:
        return len(self.items) + len(self.banners)
