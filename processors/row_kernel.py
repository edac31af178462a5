"""The next-click model's co-occurrence tables (rules, pairs, co-visits) as arrays, and the
compiled loops that learn into them and read vote lists out of them.

A table holds one row per item (``row``: the item's position in the model's item index): its
columns (item positions) and values back to back in a pool, in the order the columns were
added, exactly as the dict of dicts it replaces iterated them. A row grows by moving to the
pool's end with twice its capacity (at most ``2 * keep + 1``: a row is cut back to its
``keep`` largest as soon as it holds more than ``2 * keep``); the places it left are garbage
until the pool is compacted. Sums are taken in the dict version's order, and the cuts are
stable sorts, so every row, value and vote list is the dict version's bit for bit
(``tests/unit/test_row_tables.py`` checks it against that version).

Dict rows cost ~800 ns per entry to rank (cold ``float`` objects, a hash lookup per column);
here a vote-list rebuild reads two or three contiguous rows.

>>> import numpy as np
>>> table = RowTable()
>>> table.ensure_rows(3); table.ensure_space(100)
>>> bump(table.arrays(), 0, 1, 1.0, 2); bump(table.arrays(), 0, 2, 0.5, 2)
>>> bump(table.arrays(), 0, 1, 1.0, 2)
>>> table.row(0)
([1, 2], [2.0, 0.5])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from processors.slate_kernel import (
    _compiled,
    _inlined,
    add_vote,
    bridge_votes,
    largest_positions,
)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

#: meta[0]: the end of the pool's used part; meta[1]: entries of it no row holds (garbage)
_END, _GARBAGE = 0, 1


def grown(array: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """``array``'s values at the start of a new zeroed array of ``size`` places (along the
    first axis). The new places are left untouched: ``np.zeros`` of a large array is
    ``calloc``, pages the kernel maps in zeroed on first write, so a pool grown to twice its
    size adds to the process's RSS only as entries are written (``np.concatenate`` with
    zeros wrote all of them: a worker's RSS jumped by megabytes whenever a pool doubled).

    >>> grown(np.array([1, 2]), 4).tolist()
    [1, 2, 0, 0]
    """
    out = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class RowTable:
    """One table's arrays (``arrays()`` is what the kernels take): per row its start in the
    pool, its length and its capacity; the pool's columns and values; and ``meta``."""

    def __init__(self) -> None:
        self.start = np.zeros(64, dtype=np.int64)
        self.length = np.zeros(64, dtype=np.int64)
        self.capacity = np.zeros(64, dtype=np.int64)
        self.cols = np.zeros(1 << 12, dtype=np.int64)
        self.vals = np.zeros(1 << 12, dtype=np.float64)
        self.meta = np.zeros(2, dtype=np.int64)

    def arrays(self) -> tuple[Ints, Ints, Ints, Ints, Floats, Ints]:
        return self.start, self.length, self.capacity, self.cols, self.vals, self.meta

    def ensure_rows(self, rows: int) -> None:
        """Room for rows ``0 .. rows - 1`` (new rows are empty)."""
        have = len(self.start)
        if rows > have:
            size = max(rows, 2 * have)
            self.start = grown(self.start, size)
            self.length = grown(self.length, size)
            self.capacity = grown(self.capacity, size)

    def ensure_space(self, entries: int) -> None:
        """At least ``entries`` free places at the pool's end (what the kernels may use before
        Python sees the table again); compacts instead of growing when garbage is most of it."""
        end, garbage = int(self.meta[_END]), int(self.meta[_GARBAGE])
        if end + entries <= len(self.cols):
            return
        live = end - garbage
        if garbage > live:
            self.compact(max(2 * (live + entries), 1 << 12))
        else:
            size = max(2 * len(self.cols), end + entries)
            self.cols = grown(self.cols, size)
            self.vals = grown(self.vals, size)

    def compact(self, size: int, remap: Ints | None = None) -> None:
        """Rows back to back in new arrays of ``size`` places, each with its length as
        capacity (``remap``: also renumber the columns, old position -> new)."""
        rows = np.flatnonzero(self.length > 0)
        lengths = self.length[rows]
        total = int(lengths.sum())
        taken = np.repeat(self.start[rows], lengths) + (
            np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        cols = np.zeros(max(size, total), dtype=np.int64)
        vals = np.zeros(max(size, total), dtype=np.float64)
        cols[:total] = self.cols[taken] if remap is None else remap[self.cols[taken]]
        vals[:total] = self.vals[taken]
        self.cols, self.vals = cols, vals
        self.start[:] = 0
        self.capacity[:] = 0
        self.start[rows] = np.cumsum(lengths) - lengths
        self.capacity[rows] = lengths
        self.meta[_END], self.meta[_GARBAGE] = total, 0

    def renumber(self, kept: Ints, size: int) -> None:
        """Keep only rows ``kept`` (old positions, ascending), renumbered 0.. in that order,
        and the columns renumbered the same way (every column must be among ``kept``)."""
        remap = np.full(len(self.start), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        self.compact(len(self.cols), remap)
        rows = max(size, 64)
        for name in ("start", "length", "capacity"):
            old = getattr(self, name)
            new = np.zeros(rows, dtype=np.int64)
            new[: len(kept)] = old[kept]
            setattr(self, name, new)

    def drop(self, row: int) -> None:
        if row < len(self.length) and self.length[row] > 0:
            self.meta[_GARBAGE] += self.capacity[row]
            self.length[row] = self.capacity[row] = 0

    def scale(self, factor: float) -> None:
        """Every value times ``factor`` (the forward decay's rescaling)."""
        end = int(self.meta[_END])
        self.vals[:end] *= factor

    def row(self, row: int) -> tuple[list[int], list[float]]:
        """The row's columns and values, in order (empty when it has none)."""
        if row >= len(self.length) or self.length[row] == 0:
            return [], []
        start, length = int(self.start[row]), int(self.length[row])
        return (
            self.cols[start : start + length].tolist(),
            self.vals[start : start + length].tolist(),
        )

    def rows(self) -> list[int]:
        """The rows that hold something."""
        return np.flatnonzero(self.length > 0).tolist()

    def entries(self) -> int:
        return int(self.length.sum())

    def referenced(self) -> Ints:
        """Every position a row or a column of this table names."""
        rows = np.flatnonzero(self.length > 0)
        lengths = self.length[rows]
        total = int(lengths.sum())
        taken = np.repeat(self.start[rows], lengths) + (
            np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        return np.union1d(rows, self.cols[taken])


#: what one click may add to a table's pool at most: ``bump`` moves a row at most once per
#: call, to a place of at most 2 * keep + 1 entries
def space_for(bumps: int, keep: int) -> int:
    return bumps * (2 * keep + 1)


@_inlined
def bump(table: Any, row: int, col: int, amount: float, keep: int) -> None:
    """``table[row][col] += amount``; a row past ``2 * keep`` entries keeps its ``keep``
    largest, largest first, ties in the order they were added (the dict version's
    ``dict(largest(row.items(), keep))``). The pool must have room for one move of the row."""
    start, length, capacity, cols, vals, meta = table
    first = start[row]
    count = length[row]
    for at in range(first, first + count):
        if cols[at] == col:
            vals[at] = vals[at] + amount
            return
    if count == capacity[row]:
        size = min(max(4, 2 * count), 2 * keep + 1)
        end = meta[0]
        for at in range(count):
            cols[end + at] = cols[first + at]
            vals[end + at] = vals[first + at]
        meta[1] += capacity[row]
        start[row] = end
        first = end
        capacity[row] = size
        meta[0] = end + size
    cols[first + count] = col
    vals[first + count] = 0.0 + amount
    count += 1
    length[row] = count
    if count > 2 * keep:
        order = np.argsort(-vals[first : first + count], kind="mergesort")[:keep]
        kept_cols = cols[first : first + count][order].copy()
        kept_vals = vals[first : first + count][order].copy()
        cols[first : first + keep] = kept_cols
        vals[first : first + keep] = kept_vals
        length[row] = keep


@_inlined
def learn_click(rules: Any, pairs: Any, window: Any, item: int, weight: float, keep: int) -> None:
    """One click's rule and pair updates (``click_evidence``'s, in its order): ``window`` is
    the session's last ``steps`` items before it, oldest first."""
    count = len(window)
    for distance in range(1, count + 1):
        previous = window[count - distance]
        bump(rules, previous, item, 1.0 / distance * weight, keep)
        if previous == item:
            continue
        bump(pairs, previous, item, weight, keep)
        bump(pairs, item, previous, weight, keep)


@_inlined
def learn_visit(covisits: Any, earlier: Any, item: int, weight: float, keep: int) -> None:
    """A visitor's new item: co-visited with each of the visitor's earlier items (both ways),
    and one more visitor of the item itself."""
    for other in earlier:
        bump(covisits, other, item, weight, keep)
        bump(covisits, item, other, weight, keep)
    bump(covisits, item, item, weight, keep)


@_compiled
def lookup(table: Any, rows: Any, cols: Any) -> Any:
    """``table[row][col]`` for each pair (0.0 where there is none; a row of -1 has none)."""
    start, length, _, pool_cols, vals, _ = table
    out = np.zeros(len(rows))
    for at in range(len(rows)):
        row = rows[at]
        if row < 0 or row >= len(length):
            continue
        first = start[row]
        for place in range(first, first + length[row]):
            if pool_cols[place] == cols[at]:
                out[at] = vals[place]
                break
    return out


@_compiled
def rule_votes(
    rules: Any,
    pairs: Any,
    item: int,
    counts: Any,
    symmetric_weight: float,
    scratch: Any,
) -> tuple[Any, Any]:
    """What one session item says about the next click (``CooccurrenceModel.votes``): its rule
    row over its peak, plus ``symmetric_weight`` times its cosine row over that row's peak, in
    the order met (rule columns first). ``scratch`` is -1 by position and left so."""
    r_start, r_length, _, r_cols, r_vals, _ = rules
    p_start, p_length, _, p_cols, p_vals, _ = pairs
    rule_count = r_length[item] if item < len(r_length) else 0
    pair_count = p_length[item] if item < len(p_length) else 0
    if symmetric_weight <= 0.0:
        pair_count = 0
    items = np.empty(rule_count + pair_count, dtype=np.int64)
    votes = np.empty(rule_count + pair_count)
    count = 0
    if rule_count > 0 and r_vals[r_start[item] : r_start[item] + rule_count].max() > 0.0:
        # (a row decayed to nothing, past ~2,000 half-lives without a click, votes for nothing)
        first = r_start[item]
        peak = r_vals[first : first + rule_count].max()
        for at in range(first, first + rule_count):
            column = r_cols[at]
            scratch[column] = count
            items[count] = column
            votes[count] = r_vals[at] / peak
            count += 1
    if pair_count > 0:
        first = p_start[item]
        sims = np.empty(pair_count)
        for at in range(pair_count):
            seen = counts[p_cols[first + at]]
            sims[at] = p_vals[first + at] / math.sqrt(seen if seen != 0.0 else 1e-9)
        peak = sims.max()
        for at in range(pair_count if peak > 0.0 else 0):
            share = symmetric_weight * sims[at] / peak
            count = add_vote(scratch, items, votes, count, p_cols[first + at], share)
    for at in range(count):
        scratch[items[at]] = -1
    return items[:count], votes[:count]


@_compiled
def top(items: Any, votes: Any, limit: int) -> tuple[Any, Any]:
    """The ``limit`` largest votes, largest first, ties in the order given."""
    order = largest_positions(votes, limit)
    return items[order], votes[order]


@_compiled
def visitor_votes(
    covisits: Any, item: int, latest_weight: float, cap: float, limit: int
) -> tuple[Any, Any]:
    """What the visitors of ``item`` viewed (``CooccurrenceModel.visitor_votes``): the
    ``limit`` columns of its co-visit row with the largest counts, each count times
    min(visitors / latest_weight, cap) / visitors."""
    start, length, _, cols, vals, _ = covisits
    count = length[item] if item < len(length) else 0
    if count == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    first = start[item]
    row_cols = cols[first : first + count]
    row_vals = vals[first : first + count]
    visitors = 0.0
    for at in range(count):
        if row_cols[at] == item:
            visitors = row_vals[at]
            break
    if visitors == 0.0:
        visitors = row_vals.max()
    if visitors <= 0.0:  # decayed to nothing
        return np.empty(0, dtype=np.int64), np.empty(0)
    factor = min(visitors / latest_weight, cap) / visitors
    order = largest_positions(row_vals, limit)
    return row_cols[order], row_vals[order] * factor


@_compiled
def vote_lists(
    rules: Any,
    pairs: Any,
    covisits: Any,
    item: int,
    counts: Any,
    symmetric_weight: float,
    votes_per_item: int,
    visitors: bool,
    latest_weight: float,
    cap: float,
    neighbour_votes: int,
    bridges: int,
    scratch: Any,
) -> tuple[Any, Any, int, int]:
    """An item's materialised vote lists as ``CooccurrenceModel.vote_arrays`` gives them:
    rule votes (top ``votes_per_item``), visitor votes (when ``visitors``), and the bridge
    votes (the top ``bridges`` of the two summed over their peaks; none when negative), back
    to back; with where the visitor and the bridge votes start."""
    found, summed = rule_votes(rules, pairs, item, counts, symmetric_weight, scratch)
    rule_items, rule_values = top(found, summed, votes_per_item)
    if visitors:
        visitor_items, visitor_values = visitor_votes(
            covisits, item, latest_weight, cap, neighbour_votes
        )
    else:
        visitor_items, visitor_values = np.empty(0, dtype=np.int64), np.empty(0)
    split = len(rule_items)
    both = split + len(visitor_items)
    items = np.concatenate((rule_items, visitor_items))
    votes = np.concatenate((rule_values, visitor_values))
    if bridges >= 0 and both > 0:
        bridge_items, bridge_values = bridge_votes(items, votes, split, bridges, scratch)
        items = np.concatenate((items, bridge_items))
        votes = np.concatenate((votes, bridge_values))
    return items, votes, split, both


@_compiled
def learn_clicks(
    rules: Any,
    pairs: Any,
    windows: Any,
    ends: Any,
    items: Any,
    weights: Any,
    keep: int,
    first: int,
) -> int:
    """``learn_click`` for clicks ``first``, ``first + 1``, ... in order (click ``i``'s
    window is ``windows[ends[i - 1]:ends[i]]``) while the pools have room for one more click's
    worst case; returns the first click not learned (``len(items)`` when all were)."""
    place = 2 * keep + 1  # the most a bump can take: one move of a full row
    for click in range(first, len(items)):
        start = ends[click - 1] if click > 0 else 0
        end = ends[click]
        steps = end - start
        if rules[5][0] + steps * place > len(rules[3]) or pairs[5][0] + 2 * steps * place > len(
            pairs[3]
        ):
            return click
        learn_click(rules, pairs, windows[start:end], items[click], weights[click], keep)
    return len(items)


@_compiled
def learn_visits(
    covisits: Any, earlier: Any, ends: Any, items: Any, weights: Any, keep: int, first: int
) -> int:
    """``learn_visit`` for visits ``first``, ... in order (as ``learn_clicks``)."""
    place = 2 * keep + 1
    for visit in range(first, len(items)):
        start = ends[visit - 1] if visit > 0 else 0
        end = ends[visit]
        if covisits[5][0] + (2 * (end - start) + 1) * place > len(covisits[3]):
            return visit
        learn_visit(covisits, earlier[start:end], items[visit], weights[visit], keep)
    return len(items)
