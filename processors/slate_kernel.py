"""The slate tail as compiled loops over arrays: popular candidates, the blend with next-click
candidates, sorting, exclusions, the per-category cap and the cut to size, one group (a
user's slate of one item type) at a time.

``recommend._SlateTail`` prepares the arrays (items as indexes into the co-occurrence
model's item index, names as ``NameOrder`` keys) and explains the rows these kernels
return; ``cooccurrence.candidates_many`` sums its votes and finds the voters behind them
here too, and an item's bridge votes are summed and ranked here when its lists are rebuilt.
They are numba-compiled, cached on disk beside this file (``make`` compiles them at install,
~10 s; a worker loads them at start: ``pipeline.compile_kernels``). The property tests
compare the slates they make with the specification's, one user at a time with plain dicts
(``tests/unit/test_recommend.py``).

Every group's work is a few dozen rows sorted in place: the numpy version sorted and
searched all the rows of 256 users at once, ~40 array operations per chunk, at ~80 µs per
user; these loops do the same at ~8 µs per user (both kernels, two slates).

>>> import numpy as np
>>> rows = np.array([0, 1, 2, 3]); score = np.array([0.5, 2.0, 0.5, 2.0])
>>> rank = np.array([3, 1, 0, 2])  # name ranks: ties by name
>>> sort_rows(rows, score, rank, np.empty(4, dtype=np.int64))
>>> rows.tolist()
[1, 3, 2, 0]
>>> rows = np.arange(100)[::-1].copy()  # the merge sort
>>> sort_rows(rows, np.zeros(100), np.arange(100), np.empty(100, dtype=np.int64))
>>> rows.tolist() == list(range(100))
True
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

#: (session, item) keys as in ``cooccurrence``: session * KEY_SPACE + item
KEY_SPACE = 1 << 32
#: ``listed`` of a row no popularity list brought, and of a trending row
NOT_LISTED, TRENDING = -2, -1
#: ``category`` of a row that cannot be placed (a next-click candidate of another type)
UNPLACEABLE = -2


def _compiled(function: Any) -> Any:
    """numba's ``njit``, cached on disk (a worker loads it instead of compiling it)."""
    return numba.njit(cache=True, nogil=True)(function)


def _inlined(function: Any) -> Any:
    """``_compiled``, and inlined into the kernels that call it (numba's IR inlining): a
    small helper called per row, vote or comparison, which as a call cost the kernels a
    quarter of their time (write_slates: 242 ns a row, 170 inlined; docs/benchmarks.md)."""
    return numba.njit(cache=True, nogil=True, inline="always")(function)


@_inlined
def _first(rank_a: int, score_a: float, rank_b: int, score_b: float) -> bool:
    """Whether row a comes before row b: a higher score, then (ties) the lower name rank."""
    if score_a != score_b:
        return score_a > score_b
    return rank_a < rank_b


#: ``sort_rows``' runs sorted by insertion before it merges them (the merge passes of runs of
#: 1 to 16 rows cost more than inserting within runs of 32: the three kernels that sort
#: ~12% less, docs/benchmarks-history.md, thirty-eighth session)
_RUN = 32


@_compiled
def sort_rows(order: Any, score: Any, rank: Any, scratch: Any) -> None:
    """Sort ``order`` (row ids) in place: the rows best first (``score[row]`` descending),
    ties by ``rank[row]`` (ascending). Insertion sort for a few dozen rows; beyond, runs of
    ``_RUN`` sorted by insertion, then merged (stable) with ``scratch`` (at least as long as
    ``order``) as the buffer."""
    count = len(order)
    if count < 2:
        return
    run = count if count <= 32 else _RUN
    for start in range(0, count, run):  # runs sorted by insertion (all of a few dozen rows)
        end = min(start + run, count)
        for i in range(start + 1, end):
            row = order[i]
            j = i - 1
            while j >= start and _first(rank[row], score[row], rank[order[j]], score[order[j]]):
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = row
    if count <= run:
        return
    merged = scratch[:count]
    width = run
    while width < count:
        for low in range(0, count, 2 * width):
            mid, high = min(low + width, count), min(low + 2 * width, count)
            i, j, k = low, mid, low
            while i < mid and j < high:
                a, b = order[i], order[j]
                if _first(rank[b], score[b], rank[a], score[a]):
                    merged[k] = b
                    j += 1
                else:
                    merged[k] = a
                    i += 1
                k += 1
            while i < mid:
                merged[k] = order[i]
                i += 1
                k += 1
            while j < high:
                merged[k] = order[j]
                j += 1
                k += 1
        order[:] = merged
        width *= 2


@_compiled
def top_rows(order: Any, score: Any, rank: Any, count: int, scratch: Any) -> None:
    """Move the best ``count`` rows of ``order`` to its front, sorted as ``sort_rows`` sorts;
    the rest follow in no particular order. One pass past the first ``count``: a row enters
    only if it beats the current last, by insertion.

    >>> import numpy as np
    >>> rows = np.array([0, 1, 2, 3, 4]); score = np.array([0.1, 0.9, 0.5, 0.7, 0.9])
    >>> top_rows(rows, score, np.arange(5), 3, np.empty(5, dtype=np.int64))
    >>> rows[:3].tolist(), sorted(rows[3:].tolist())
    ([1, 4, 3], [0, 2])
    """
    total = len(order)
    if total <= count:
        sort_rows(order, score, rank, scratch)
        return
    sort_rows(order[:count], score, rank, scratch)
    if count == 0:
        return
    for at in range(count, total):
        row = order[at]
        last = order[count - 1]
        if not _first(rank[row], score[row], rank[last], score[last]):
            continue
        place = count - 1
        while place > 0 and _first(
            rank[row], score[row], rank[order[place - 1]], score[order[place - 1]]
        ):
            order[place] = order[place - 1]
            place -= 1
        order[place] = row
        order[at] = last


@_inlined
def _mark_excluded(excluded: Any, user: int, blocked: Any) -> None:
    """``blocked[item] = user`` for each of the user's excluded items (sorted keys)."""
    at = np.searchsorted(excluded, user * KEY_SPACE)
    while at < len(excluded) and excluded[at] < (user + 1) * KEY_SPACE:
        blocked[excluded[at] - user * KEY_SPACE] = user
        at += 1


@_compiled
def popular_rows(
    group_count: int,
    width: int,
    size: int,
    segment_starts: Any,
    segment_list: Any,
    segment_scale: Any,
    segment_category: Any,
    list_starts: Any,
    list_items: Any,
    list_pops: Any,
    excluded: Any,
    name_rank: Any,
    slot: Any,
    out_item: Any,
    out_score: Any,
    out_category: Any,
    out_count: Any,
) -> None:
    """Each group's popular candidates from its users' top categories: each list's first
    ``size`` items not excluded, scored pop x the segment's scale; an item in two lists keeps
    its best score (the first list's on a tie); best first (ties by name), the first ``size``.
    Group g's rows: ``out_*[g * size : g * size + out_count[g]]``. ``slot``: -1 per item
    (left so)."""
    rows = np.empty(64, dtype=np.int64)
    score = np.empty(64)
    category = np.empty(64, dtype=np.int64)
    order = np.empty(64, dtype=np.int64)
    ranks = np.empty(64, dtype=np.int64)
    scratch = np.empty(64, dtype=np.int64)
    blocked = np.full(len(slot), -1, dtype=np.int64)  # item -> the user it is excluded for
    for group in range(group_count):
        user = group // width
        if group % width == 0:
            _mark_excluded(excluded, user, blocked)
        count = 0
        for segment in range(segment_starts[group], segment_starts[group + 1]):
            listed = segment_list[segment]
            scale, code = segment_scale[segment], segment_category[segment]
            taken = 0
            for at in range(list_starts[listed], list_starts[listed + 1]):
                if taken == size:
                    break
                item = list_items[at]
                if blocked[item] == user:
                    continue
                taken += 1
                value = list_pops[at] * scale
                held = slot[item]
                if held < 0:
                    if count == len(rows):
                        rows = np.concatenate((rows, np.empty(count, dtype=np.int64)))
                        score = np.concatenate((score, np.empty(count)))
                        category = np.concatenate((category, np.empty(count, dtype=np.int64)))
                        order = np.empty(2 * count, dtype=np.int64)
                        ranks = np.empty(2 * count, dtype=np.int64)
                        scratch = np.empty(2 * count, dtype=np.int64)
                    slot[item] = count
                    rows[count], score[count], category[count] = item, value, code
                    count += 1
                elif value > score[held]:
                    score[held], category[held] = value, code
        if not count:
            out_count[group] = 0
            continue
        for at in range(count):
            slot[rows[at]] = -1
            order[at], ranks[at] = at, name_rank[rows[at]]
        # only the best ``size`` are kept: those sorted, the rest not (the order is total,
        # rows being distinct items, so this is the full sort's head exactly)
        top_rows(order[:count], score, ranks, size, scratch)
        kept = min(count, size)
        base = group * size
        for at in range(kept):
            row = order[at]
            out_item[base + at] = rows[row]
            out_score[base + at] = score[row]
            out_category[base + at] = category[row]
        out_count[group] = kept


@_compiled
def _row_buffers(size: int) -> tuple[Any, ...]:
    """``merge_rows``' per-group row buffers: item, total, share, listed, category, voted,
    and the sort's order, ranks and scratch."""
    return (
        np.empty(size, dtype=np.int64),
        np.empty(size),
        np.empty(size),
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.bool_),
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.int64),
    )


@_compiled
def merge_rows(
    group_count: int,
    width: int,
    size: int,
    max_per_category: int,
    popularity_weight: float,
    popular_size: int,
    requested: Any,
    pop_item: Any,
    pop_score: Any,
    pop_category: Any,
    pop_count: Any,
    trend_starts: Any,
    trend_items: Any,
    trend_pops: Any,
    trend_peak: Any,
    candidate_starts: Any,
    candidate_item: Any,
    candidate_score: Any,
    user_bounds: Any,
    user_items: Any,
    scaled: Any,
    excluded: Any,
    item_types: Any,
    item_categories: Any,
    slate_types: Any,
    category_count: int,
    name_rank: Any,
    slot: Any,
) -> tuple[Any, Any, Any, Any, Any, Any, Any]:
    """Every requested group's slate rows, groups in order, each best first (ties by name):
    its popular candidates (``popular_rows``, ``popular_size`` of them, filled up to that
    from its type's trending list, below every category match), each with its next-click
    score when it has one, blended with its ``2 * size`` best next-click candidates that are
    not popular ones (``group_candidates`` puts them first); rows that cannot be
    placed (neither the slate's type in the catalog nor brought by a list) or are excluded
    skipped, at most ``max_per_category`` of a category, the first ``size``. When the slate
    is not full above the head's last next-click score, an unranked candidate could belong
    in it: blended again from all the group's candidates.

    Returns (group, item, total, share, listed, category, voted) arrays."""
    capacity = group_count * size
    out_group = np.empty(capacity, dtype=np.int64)
    out_item = np.empty(capacity, dtype=np.int64)
    out_total = np.empty(capacity)
    out_share = np.empty(capacity)
    out_listed = np.empty(capacity, dtype=np.int64)
    out_category = np.empty(capacity, dtype=np.int64)
    out_voted = np.empty(capacity, dtype=np.bool_)
    written = 0
    head = 2 * size
    p_item = np.empty(popular_size, dtype=np.int64)
    p_total = np.empty(popular_size)
    p_share = np.empty(popular_size)
    p_listed = np.empty(popular_size, dtype=np.int64)
    p_voted = np.empty(popular_size, dtype=np.bool_)
    r_item, r_total, r_share, r_listed, r_category, r_voted, order, ranks, scratch = _row_buffers(
        head + popular_size
    )
    counts = np.zeros(category_count + 1, dtype=np.int64)
    known_types = len(item_types)
    blocked = np.full(len(slot), -1, dtype=np.int64)  # item -> the user it is excluded for
    marked = -1
    items_known = len(slot)
    for at in range(len(user_items)):
        items_known = max(items_known, user_items[at] + 1)
    candidate_user = np.full(items_known, -1, dtype=np.int64)  # item -> the user marked for
    candidate_at = np.empty(items_known, dtype=np.int64)  # and its position in user_items
    marked_candidates = -1
    for group in range(group_count):
        if not requested[group]:
            continue
        user, slate_type = group // width, group % width
        if user != marked:
            _mark_excluded(excluded, user, blocked)
            marked = user
        if user != marked_candidates:  # where each of the user's candidates is
            for at in range(user_bounds[user], user_bounds[user + 1]):
                candidate_user[user_items[at]], candidate_at[user_items[at]] = user, at
            marked_candidates = user
        # the group's popular rows, trending ones filling it up to ``size``
        count = pop_count[group]
        base = group * popular_size
        for at in range(count):
            p_item[at] = pop_item[base + at]
            p_total[at] = pop_score[base + at]
            p_listed[at] = pop_category[base + at]
            slot[p_item[at]] = at
        if count < popular_size:
            peak = trend_peak[slate_type]
            for at in range(trend_starts[slate_type], trend_starts[slate_type + 1]):
                item = trend_items[at]
                if slot[item] >= 0 or blocked[item] == user:
                    continue
                p_item[count], p_total[count], p_listed[count] = (
                    item,
                    0.1 * trend_pops[at] / peak,
                    TRENDING,
                )
                slot[item] = count
                count += 1
                if count == popular_size:
                    break
        for at in range(count):
            share = popularity_weight * p_total[at]
            item = p_item[at]
            voted = candidate_at[item] if candidate_user[item] == user else -1
            p_share[at] = share
            p_voted[at] = voted >= 0
            p_total[at] = (scaled[voted] if voted >= 0 else 0.0) + share
        start, end = candidate_starts[group], candidate_starts[group + 1]
        stop = min(end, start + head)
        while True:
            rows = 0
            needed = (stop - start) + count
            if needed > len(r_item):  # a full blend of many candidates
                r_item, r_total, r_share, r_listed, r_category, r_voted, order, ranks, scratch = (
                    _row_buffers(needed)
                )
            for at in range(start, stop):
                item = candidate_item[at]
                if slot[item] >= 0:
                    continue
                r_item[rows], r_total[rows], r_share[rows] = item, candidate_score[at], 0.0
                r_listed[rows], r_category[rows], r_voted[rows] = NOT_LISTED, UNPLACEABLE, True
                rows += 1
            for at in range(count):
                r_item[rows], r_total[rows], r_share[rows] = p_item[at], p_total[at], p_share[at]
                r_listed[rows], r_voted[rows] = p_listed[at], p_voted[at]
                r_category[rows] = p_listed[at]  # -1 for a trending row: no category
                rows += 1
            for at in range(rows):
                order[at], ranks[at] = at, name_rank[r_item[at]]
            # the best rows sorted first, the rest only if the slate is not full by then
            # (rows are distinct items: the order is total, so this is the full sort's order)
            ordered = min(rows, 2 * size)
            top_rows(order[:rows], r_total, ranks, ordered, scratch)
            kept = 0
            first = written
            for at in range(rows):
                if at == ordered:  # skipped rows (capped categories) ran past the head
                    sort_rows(order[at:rows], r_total, ranks, scratch)
                    ordered = rows
                row = order[at]
                item = r_item[row]
                category = r_category[row]
                # shown under the catalog's category when it knows the item as this type
                if item < known_types and item_types[item] == slate_types[slate_type]:
                    category = item_categories[item]
                if category == UNPLACEABLE:
                    continue
                if blocked[item] == user:
                    continue
                if category >= 0:
                    if counts[category] >= max_per_category:
                        continue
                    counts[category] += 1
                out_group[written], out_item[written] = group, item
                out_total[written], out_share[written] = r_total[row], r_share[row]
                out_listed[written], out_category[written] = r_listed[row], category
                out_voted[written] = r_voted[row]
                written += 1
                kept += 1
                if kept == size:
                    break
            for at in range(first, written):
                if out_category[at] >= 0:
                    counts[out_category[at]] = 0
            if stop == end or (
                kept == size and out_total[written - 1] > candidate_score[start + head - 1]
            ):
                break
            written = first  # not full above the head: again, from all its candidates
            stop = end
        for at in range(count):
            slot[p_item[at]] = -1
    return (
        out_group[:written],
        out_item[:written],
        out_total[:written],
        out_share[:written],
        out_listed[:written],
        out_category[:written],
        out_voted[:written],
    )


@_compiled
def strongest_voters(
    keys: Any, votes: Any, voter: Any, wanted: Any, item_count: int, out: Any
) -> None:
    """For each ``wanted`` (session, item) key: the voter (``voter``) of the largest positive
    vote for it among the (session, candidate) ``keys`` and their ``votes`` (the first met
    on a tie), left as it is in ``out`` when none votes for it. Both ``keys`` and ``wanted``
    run by session in ascending order; one pass over each, a session at a time.

    >>> import numpy as np
    >>> keys = np.array([5, 5, 7, KEY_SPACE + 5]); votes = np.array([0.5, 0.9, 0.2, 1.0])
    >>> out = np.full(3, -1)
    >>> strongest_voters(keys, votes, np.array([10, 11, 12, 13]),
    ...                  np.array([5, 6, KEY_SPACE + 5]), 8, out)
    >>> out.tolist()
    [11, -1, 13]
    """
    best = np.zeros(item_count)
    best_voter = np.empty(item_count, dtype=np.int64)
    stamp = np.full(item_count, -1, dtype=np.int64)
    at, total = 0, len(keys)
    session = -1
    for row in range(len(wanted)):
        key = wanted[row]
        if key >> 32 != session:
            session = key >> 32
            while at < total and keys[at] >> 32 < session:
                at += 1
            while at < total and keys[at] >> 32 == session:
                item, vote = keys[at] & (KEY_SPACE - 1), votes[at]
                if vote > 0.0 and (stamp[item] != session or vote > best[item]):
                    best[item], best_voter[item], stamp[item] = vote, voter[at], session
                at += 1
        item = key & (KEY_SPACE - 1)
        if stamp[item] == session:
            out[row] = best_voter[item]


@_compiled
def peak_per_session(owners: Any, values: Any, count: int, empty: float) -> Any:
    """Each session's largest value (``empty`` for a session without one): ``np.maximum.at``
    in one pass (numpy's ``ufunc.at`` took ~50 ns per value on some of the slate path's
    arrays, against ~5 for others of the same size and type).

    >>> import numpy as np
    >>> peak_per_session(np.array([0, 2, 0]), np.array([1.0, 3.0, 2.0]), 4, 0.5).tolist()
    [2.0, 0.5, 3.0, 0.5]
    """
    peak = np.full(count, -np.inf)
    for at in range(len(owners)):
        if values[at] > peak[owners[at]]:
            peak[owners[at]] = values[at]
    for session in range(count):
        if peak[session] == -np.inf:
            peak[session] = empty
    return peak


@_compiled
def _vote_buffers(size: int) -> tuple[Any, Any, Any]:
    """Gathered votes: each one's (session, item) key, weighted vote and voting row."""
    return np.empty(size, dtype=np.int64), np.empty(size), np.empty(size, dtype=np.int64)


@_inlined
def _gather_votes(
    session: int,
    owner: Any,
    rows: Any,
    weights: Any,
    at: int,
    kind: int,
    offsets: Any,
    all_items: Any,
    all_votes: Any,
    keys: Any,
    votes: Any,
    voter: Any,
    written: int,
    seen: Any,
    sums: Any,
    met: Any,
) -> tuple[int, int, int]:
    """One kind of a session's votes (``kind``: 0 rule, 1 neighbour-visitor lists): from its
    requests at ``at`` on (while ``owner`` is the session), each row's votes times the
    request's weight, written at ``written`` on (key, vote, voting row) and summed per
    candidate into ``sums`` (``seen`` marks the candidates met, listed in ``met`` in the
    order met). Returns the next request, the next vote slot and the candidates met."""
    count = 0
    while at < len(owner) and owner[at] == session:
        row, weight = rows[at], weights[at]
        for position in range(offsets[row, kind], offsets[row, kind + 1]):
            item, vote = all_items[position], all_votes[position] * weight
            keys[written], votes[written], voter[written] = session * KEY_SPACE + item, vote, row
            written += 1
            if not seen[item]:
                seen[item] = True
                sums[item] = 0.0
                met[count] = item
                count += 1
            sums[item] += vote
        at += 1
    return at, written, count


@_compiled
def first_hop(
    count: int,
    rule_owner: Any,
    rule_row: Any,
    rule_weight: Any,
    visitor_owner: Any,
    visitor_row: Any,
    visitor_weight: Any,
    offsets: Any,
    all_items: Any,
    all_votes: Any,
    item_count: int,
    knn_weight: float,
    ranked_size: int,
) -> tuple[Any, ...]:
    """``CooccurrenceModel.candidates_many``'s first hop, a session at a time: each session's
    rule votes (its requests' rows' rule lists, times the request's weight) summed per
    candidate, plus its neighbour-visitor votes scaled by ``knn_weight`` x the rule peak /
    the visitor peak (each 1.0 when there is none), in the order a dict meets them; and its
    ``ranked_size`` best candidates (ties: the first met). Requests run by session
    (ascending); ``offsets[row]`` are a row's rule, visitor and bridge votes' bounds in
    ``all_items``/``all_votes``.

    Returns the rule and visitor votes as gathered (key, weighted vote, voting row), each
    session's candidates (items, scores, bounds; in the order met) and its ranked ones
    (items, scores, bounds)."""
    rule_total, visitor_total = 0, 0
    for at in range(len(rule_row)):
        rule_total += offsets[rule_row[at], 1] - offsets[rule_row[at], 0]
    for at in range(len(visitor_row)):
        visitor_total += offsets[visitor_row[at], 2] - offsets[visitor_row[at], 1]
    rule_keys, rule_votes, rule_voter = _vote_buffers(rule_total)
    visitor_keys, visitor_votes, visitor_voter = _vote_buffers(visitor_total)
    rule_sum = np.zeros(item_count)
    visitor_sum = np.zeros(item_count)
    seen_rule = np.zeros(item_count, dtype=np.bool_)
    seen_visitor = np.zeros(item_count, dtype=np.bool_)
    rule_met = np.empty(rule_total, dtype=np.int64)
    visitor_met = np.empty(visitor_total, dtype=np.int64)
    candidates = np.empty(rule_total + visitor_total, dtype=np.int64)
    scores = np.empty(rule_total + visitor_total)
    bounds = np.zeros(count + 1, dtype=np.int64)
    ranked = np.empty(count * ranked_size, dtype=np.int64)
    ranked_scores = np.empty(count * ranked_size)
    ranked_bounds = np.zeros(count + 1, dtype=np.int64)
    r_at, v_at, r_vote, v_vote, written, ranked_written = 0, 0, 0, 0, 0, 0
    for session in range(count):
        # rule votes, in request order, then neighbour-visitor votes
        r_at, r_vote, rules_met = _gather_votes(
            session, rule_owner, rule_row, rule_weight, r_at, 0, offsets, all_items,
            all_votes, rule_keys, rule_votes, rule_voter, r_vote, seen_rule, rule_sum, rule_met,
        )  # fmt: skip
        v_at, v_vote, visitors_met = _gather_votes(
            session, visitor_owner, visitor_row, visitor_weight, v_at, 1, offsets, all_items,
            all_votes, visitor_keys, visitor_votes, visitor_voter, v_vote, seen_visitor,
            visitor_sum, visitor_met,
        )  # fmt: skip
        rule_peak, visitor_peak = 1.0, 1.0
        if rules_met:
            rule_peak = -np.inf
            for at in range(rules_met):
                rule_peak = max(rule_peak, rule_sum[rule_met[at]])
        if visitors_met:
            visitor_peak = -np.inf
            for at in range(visitors_met):
                visitor_peak = max(visitor_peak, visitor_sum[visitor_met[at]])
        scale = knn_weight * rule_peak / visitor_peak
        start = written
        for at in range(rules_met):  # as a dict meets them: rule candidates first
            item = rule_met[at]
            score = 0.0 + rule_sum[item]
            if seen_visitor[item]:
                score += visitor_sum[item] * scale
            candidates[written], scores[written] = item, score
            written += 1
        for at in range(visitors_met):
            item = visitor_met[at]
            if not seen_rule[item]:
                candidates[written], scores[written] = item, 0.0 + visitor_sum[item] * scale
                written += 1
        for at in range(rules_met):
            seen_rule[rule_met[at]] = False
        for at in range(visitors_met):
            seen_visitor[visitor_met[at]] = False
        bounds[session + 1] = written
        # the best ``ranked_size``, best first; a later candidate never displaces an equal
        first = ranked_written
        for at in range(start, written if ranked_size > 0 else start):
            score = scores[at]
            held = ranked_written - first
            if held == ranked_size and not score > ranked_scores[ranked_written - 1]:
                continue
            place = ranked_written if held < ranked_size else ranked_written - 1
            while place > first and score > ranked_scores[place - 1]:
                ranked[place], ranked_scores[place] = ranked[place - 1], ranked_scores[place - 1]
                place -= 1
            ranked[place], ranked_scores[place] = candidates[at], score
            if held < ranked_size:
                ranked_written += 1
        ranked_bounds[session + 1] = ranked_written
    return (
        rule_keys,
        rule_votes,
        rule_voter,
        visitor_keys,
        visitor_votes,
        visitor_voter,
        candidates[:written],
        scores[:written],
        bounds,
        ranked[:ranked_written],
        ranked_scores[:ranked_written],
        ranked_bounds,
    )


@_compiled
def second_hop(
    count: int,
    candidates: Any,
    scores: Any,
    bounds: Any,
    ranked: Any,
    ranked_scores: Any,
    ranked_bounds: Any,
    bridge_owner: Any,
    bridge_row: Any,
    bridge_weight: Any,
    bridge_keep: int,
    offsets: Any,
    all_items: Any,
    all_votes: Any,
    item_count: int,
) -> tuple[Any, ...]:
    """``candidates_many``'s second hop and its result, a session at a time: the session's
    bridges (``bridge_owner``, by session; their rows and weights: the bridge weight x their
    first-hop score) pass on their bridge votes times their weight, added to the candidates'
    scores in that order; then the session's first ``bridge_keep`` ranked candidates are
    lifted above every score, in their order. No bridges and ``bridge_keep`` 0: the first
    hop as it is.

    Returns every session's candidates as (session, item) keys (by session; a session's
    items in the order met) and their scores, and the bridges' gathered votes (key,
    weighted vote, voting row)."""
    total = 0
    for at in range(len(bridge_row)):
        total += offsets[bridge_row[at], 3] - offsets[bridge_row[at], 2]
    bridge_keys, bridge_votes, bridge_voter = _vote_buffers(total)
    keys = np.empty(len(candidates) + total, dtype=np.int64)
    out_scores = np.empty(len(candidates) + total)
    summed = np.zeros(item_count)
    seen = np.zeros(item_count, dtype=np.bool_)
    touched = np.empty(len(candidates) + total, dtype=np.int64)
    b_at, gathered, written = 0, 0, 0
    for session in range(count):
        distinct = 0
        for at in range(bounds[session], bounds[session + 1]):
            item = candidates[at]
            seen[item] = True
            summed[item] = 0.0 + scores[at]
            touched[distinct] = item
            distinct += 1
        if distinct:
            b_at, gathered, added = _gather_votes(
                session, bridge_owner, bridge_row, bridge_weight, b_at, 2, offsets, all_items,
                all_votes, bridge_keys, bridge_votes, bridge_voter, gathered, seen, summed,
                touched[distinct:],
            )  # fmt: skip
            distinct += added
            low, high = ranked_bounds[session], ranked_bounds[session + 1]
            if bridge_keep > 0 and high > low:
                lift = -np.inf
                for at in range(distinct):
                    lift = max(lift, summed[touched[at]])
                for at in range(low, min(high, low + bridge_keep)):
                    summed[ranked[at]] = lift + ranked_scores[at]
        for item in touched[:distinct]:
            keys[written] = session * KEY_SPACE + item
            out_scores[written] = summed[item]
            seen[item] = False
            written += 1
    return keys[:written], out_scores[:written], bridge_keys, bridge_votes, bridge_voter


@_compiled
def group_candidates(
    count: int,
    width: int,
    bounds: Any,
    items: Any,
    scores: Any,
    item_types: Any,
    type_position: Any,
    excluded: Any,
    head: int,
) -> tuple[Any, Any, Any]:
    """Each (user, slate type) group's next-click candidates, its ``head`` best first (ties
    by item index; the rest after them, unordered: ``merge_rows`` reads past the head only
    to blend all of them, sorted there): user u's candidates are
    ``items[bounds[u]:bounds[u + 1]]`` with ``scores``; an item's group is its catalog
    type's position (``type_position[item_types[item]]``, the last entry for an item the
    catalog does not know); items of no requested type, and excluded ones (``excluded``:
    sorted (user, item) keys), are left out.

    Returns the groups' bounds (``count * width + 1``), items and scores."""
    starts = np.zeros(count * width + 1, dtype=np.int64)
    position = np.empty(len(items), dtype=np.int64)
    size = len(item_types)
    for at in range(len(items)):
        size = max(size, items[at] + 1)
    for at in range(len(excluded)):
        size = max(size, (excluded[at] & (KEY_SPACE - 1)) + 1)
    blocked = np.full(size, -1, dtype=np.int64)
    unknown = len(type_position) - 1
    for user in range(count):
        _mark_excluded(excluded, user, blocked)
        for at in range(bounds[user], bounds[user + 1]):
            item = items[at]
            code = item_types[item] if item < len(item_types) else -1
            slot = type_position[code] if code >= 0 else type_position[unknown]
            if slot < 0 or blocked[item] == user:
                position[at] = -1
                continue
            position[at] = slot
            starts[user * width + slot + 1] += 1
    for group in range(count * width):
        starts[group + 1] += starts[group]
    order = np.empty(starts[-1], dtype=np.int64)
    filled = starts[:-1].copy()
    for user in range(count):
        for at in range(bounds[user], bounds[user + 1]):
            if position[at] >= 0:
                group = user * width + position[at]
                order[filled[group]] = at
                filled[group] += 1
    scratch = np.empty(len(order), dtype=np.int64)
    for group in range(count * width):
        top_rows(order[starts[group] : starts[group + 1]], scores, items, head, scratch)
    return starts, items[order], scores[order]


@_inlined
def largest_positions(values: Any, limit: int) -> Any:
    """The positions of the ``limit`` largest ``values``, largest first, ties by position:
    ``np.argsort(-values, kind="mergesort")[:limit]`` for values that are not NaN, by
    insertion into the kept head (a vote list keeps ~50 of a row's hundreds: a full stable
    sort of the row cost more than the selection).

    >>> import numpy as np
    >>> largest_positions(np.array([0.5, 2.0, 0.5, 3.0, 2.0]), 4).tolist()
    [3, 1, 4, 0]
    >>> largest_positions(np.array([1.0, 2.0]), 5).tolist(), len(largest_positions(np.ones(3), 0))
    ([1, 0], 0)
    """
    count = min(max(limit, 0), len(values))
    out = np.empty(count, dtype=np.int64)
    if count == 0:
        return out
    filled = 0
    for at in range(len(values)):
        value = values[at]
        if filled == count:
            if not value > values[out[count - 1]]:  # a tie stays behind the earlier one
                continue
            place = count - 1
        else:
            place = filled
            filled += 1
        while place > 0 and value > values[out[place - 1]]:
            out[place] = out[place - 1]
            place -= 1
        out[place] = at
    return out


@_inlined
def add_vote(scratch: Any, items: Any, votes: Any, count: int, item: int, share: float) -> int:
    """Add ``share`` to ``item``'s sum among the ``count`` summed so far (``scratch[item]``:
    its place, -1 before it has one: then it takes the next); returns how many are summed.
    Each sum starts at 0.0 and adds in the order met, as the dict version's ``get(item, 0.0)
    + share`` did."""
    where = scratch[item]
    if where < 0:
        scratch[item] = count
        items[count] = item
        votes[count] = 0.0 + share
        return count + 1
    votes[where] = votes[where] + share
    return count


@_compiled
def bridge_votes(items: Any, votes: Any, split: int, limit: int, scratch: Any) -> tuple[Any, Any]:
    """What an item passes on as a bridge (``CooccurrenceModel._materialised``), from its
    rule votes (``items``/``votes`` before ``split``) and visitor votes (from ``split``):
    each list over its peak, summed per item (in the order met), the ``limit`` largest,
    largest first, ties in the order met; bit for bit the dict version's sums and order.
    ``scratch`` is -1 for every item and left so.

    >>> import numpy as np
    >>> items, votes = bridge_votes(np.array([1, 2, 0, 1]), np.array([2.0, 1.0, 4.0, 1.0]),
    ...     2, 2, np.full(3, -1))
    >>> items.tolist(), votes.tolist()
    ([1, 0], [1.25, 1.0])
    """
    summed_items = np.empty(len(items), dtype=np.int64)
    sums = np.empty(len(items))
    count = 0
    for start, end in ((0, split), (split, len(items))):
        if start == end:
            continue
        peak = votes[start:end].max()
        for at in range(start, end):
            count = add_vote(scratch, summed_items, sums, count, items[at], votes[at] / peak)
    for at in range(count):
        scratch[summed_items[at]] = -1
    order = largest_positions(sums[:count], limit)
    return summed_items[order], sums[order]


# --- the slates' JSON, written from the rows ------------------------------------------------
# ``recommend._SlateTail`` writes the slates it builds as the JSON ``slates.encode_slate``
# gives for them, with no ``SlateItem`` per row: the strings (item ids, categories, reasons)
# come encoded by msgspec, back to back, and the kernel copies them; only the numbers are
# written here. A score is written as msgspec writes the double ``round_scores`` makes of it;
# a group with a score ``round_scores`` leaves to ``round`` (not below 1e3, not finite, or
# close to a half) is left to the caller (``write_slates``' ``unsure``).

_QUOTE, _BACKSLASH = 34, 92


@_compiled
def string_bounds(data: Any, count: int) -> tuple[Any, Any]:
    """Where each of the first ``count`` JSON strings of ``data`` (msgspec's encoding of a
    list of strings: every string quoted, every quote within escaped) starts and ends (its
    quotes included).

    >>> import msgspec, numpy as np
    >>> data = np.frombuffer(msgspec.json.encode(['a"b', "", "c\\\\"]), dtype=np.uint8)
    >>> starts, ends = string_bounds(data, 3)
    >>> [data[s:e].tobytes() for s, e in zip(starts, ends)]
    [b'"a\\\\"b"', b'""', b'"c\\\\\\\\"']
    """
    starts = np.empty(count, dtype=np.int64)
    ends = np.empty(count, dtype=np.int64)
    found, at, length = 0, 0, len(data)
    while at < length and found < count:
        if data[at] == _QUOTE:
            starts[found] = at
            at += 1
            while data[at] != _QUOTE:
                at += 2 if data[at] == _BACKSLASH else 1  # an escape: its next byte too
            ends[found] = at + 1
            found += 1
        at += 1
    return starts, ends


@_inlined
def _put(out: Any, at: int, data: Any, start: int, end: int) -> int:
    for offset in range(end - start):
        out[at + offset] = data[start + offset]
    return at + end - start


@_inlined
def _put_int(out: Any, at: int, value: int) -> int:
    if value < 0:
        out[at] = 45  # -
        at += 1
        value = -value
    digits, probe = 1, value
    while probe >= 10:
        probe //= 10
        digits += 1
    for place in range(digits):
        out[at + digits - 1 - place] = 48 + value % 10
        value //= 10
    return at + digits


@_compiled
def put_score(out: Any, at: int, value: float) -> int:
    """Write ``round_scores([value])[0]`` as msgspec writes it (the shortest decimal that reads
    back as the double: 6 decimals or fewer, ``Ne-6`` below 1e-5); -1 (nothing written) where
    ``round_scores`` would ask ``round``.

    >>> import numpy as np
    >>> out = np.zeros(32, dtype=np.uint8)
    >>> [out[: put_score(out, 0, v)].tobytes() for v in (0.1234564, 3.0, 2e-6, 1e-5, -0.5)]
    [b'0.123456', b'3.0', b'2e-6', b'0.00001', b'-0.5']
    >>> put_score(out, 0, 1e3), put_score(out, 0, 0.1234565)  # round_scores asks round
    (-1, -1)
    """
    if not abs(value) < 1e3:
        return -1
    scaled = value * 1e6
    nearest = np.rint(scaled)
    if abs(abs(scaled - nearest) - 0.5) < 1e-6:
        return -1
    if math.copysign(1.0, nearest) < 0.0:  # -0.0 too, as round_scores makes it
        out[at] = 45
        at += 1
    micros = int(abs(nearest))
    if micros == 0:
        out[at], out[at + 1], out[at + 2] = 48, 46, 48  # 0.0
        return at + 3
    if micros < 10:
        out[at], out[at + 1], out[at + 2], out[at + 3] = 48 + micros, 101, 45, 54  # Ne-6
        return at + 4
    at = _put_int(out, at, micros // 1_000_000)
    out[at] = 46  # .
    fraction = micros % 1_000_000
    if fraction == 0:
        out[at + 1] = 48
        return at + 2
    places = 6
    while fraction % 10 == 0:
        fraction //= 10
        places -= 1
    for place in range(places):
        out[at + places - place] = 48 + fraction % 10
        fraction //= 10
    return at + 1 + places


#: The parts of a slate's JSON ``write_slates`` copies between its strings and numbers, in
#: this order (``slate_json_parts`` makes them).
JSON_ITEMS, JSON_ID, JSON_SCORE, JSON_REASON, JSON_CATEGORY, JSON_VERSION, JSON_AT, JSON_END = (
    range(8)
)
JSON_BECAUSE, JSON_OPEN, JSON_TIME, JSON_TIMES, JSON_VISITORS, JSON_ALSO, JSON_OFTEN, JSON_CLOSE = (
    range(8, 16)
)
#: How a row is explained (``write_slates``' ``kind``): a string of ``texts``; "because you
#: viewed X (N times together)"; "visitors who viewed X also viewed it"; "often viewed with X".
TEXT, BECAUSE, VISITORS, OFTEN = range(4)


def slate_json_parts(model: bytes, schema: int) -> tuple[Any, Any]:
    """The parts (``JSON_ITEMS``...) of a slate's JSON for ``write_slates``, back to back,
    and their bounds; ``model``: the model's name, JSON-encoded."""
    parts = [
        b'{"items":[',
        b'{"id":',
        b',"score":',
        b',"reason":',
        b',"category":',
        b'],"version":',
        b',"generated_at":',
        b',"model":' + model + b',"schema":' + str(schema).encode() + b"}",
        b'"because you viewed ',
        b" (",
        b' time together)"',
        b' times together)"',
        b'"visitors who viewed ',
        b' also viewed it"',
        b'"often viewed with ',
        b'"',
    ]
    bounds = np.cumsum([0] + [len(part) for part in parts]).astype(np.int64)
    return np.frombuffer(b"".join(parts), dtype=np.uint8), bounds


@_inlined
def _put_part(out: Any, at: int, parts: Any, bounds: Any, part: int) -> Any:
    return _put(out, at, parts, bounds[part], bounds[part + 1])


@_inlined
def _put_reason(
    out: Any,
    at: int,
    kind: int,
    name: int,
    count: int,
    names: Any,
    name_starts: Any,
    name_ends: Any,
    parts: Any,
    part_bounds: Any,
) -> Any:
    """A ``BECAUSE``, ``VISITORS`` or ``OFTEN`` reason naming item ``name`` (its JSON string
    without the quotes; -1: an empty name) as a JSON string."""
    opening = JSON_BECAUSE if kind == BECAUSE else JSON_VISITORS if kind == VISITORS else JSON_OFTEN
    at = _put_part(out, at, parts, part_bounds, opening)
    if name >= 0:
        at = _put(out, at, names, name_starts[name] + 1, name_ends[name] - 1)
    if kind == BECAUSE:
        at = _put_part(out, at, parts, part_bounds, JSON_OPEN)
        at = _put_int(out, at, count)
        return _put_part(out, at, parts, part_bounds, JSON_TIME if count == 1 else JSON_TIMES)
    return _put_part(out, at, parts, part_bounds, JSON_ALSO if kind == VISITORS else JSON_CLOSE)


@_compiled
def write_slates(
    bounds: Any,
    rows: tuple[Any, Any, Any, Any, Any, Any],
    names: tuple[Any, Any, Any],
    texts: tuple[Any, Any, Any],
    category_texts: int,
    versions: Any,
    width: int,
    generated_at: int,
    json_parts: tuple[Any, Any],
) -> tuple[Any, Any, Any]:
    """Every group's slate as JSON, back to back: group g's rows are ``bounds[g]`` to
    ``bounds[g + 1]`` of ``rows`` (item, total, category, kind, reason, count).

    ``names`` and ``texts`` are JSON strings back to back (data, starts, ends: string i is
    ``data[starts[i]:ends[i]]``). A row's id is the name ``item``; its score ``total``; its
    reason by its ``kind``: ``TEXT``, the text ``reason``, else a sentence naming the item
    ``reason`` (-1: none), ``BECAUSE`` with its ``count``; its category, when ``category``
    is not -1, the text ``category_texts + category``. The slate's version is its user's
    (``versions[g // width]``); the rest is ``json_parts`` (``slate_json_parts``).

    Returns the bytes, each group's start in them (and the end), and the groups with a score
    ``put_score`` cannot write (written as 0.0).
    """
    item, total, category, kind, reason, count = rows
    names, name_starts, name_ends = names
    texts, text_starts, text_ends = texts
    parts, part_bounds = json_parts
    groups = len(bounds) - 1
    capacity = groups * (len(parts) + 48)
    for row in range(len(item)):
        capacity += name_ends[item[row]] - name_starts[item[row]] + len(parts) + 64
        if kind[row] == TEXT:
            capacity += text_ends[reason[row]] - text_starts[reason[row]]
        elif reason[row] >= 0:
            capacity += name_ends[reason[row]] - name_starts[reason[row]]
        if category[row] >= 0:
            text = category_texts + category[row]
            capacity += text_ends[text] - text_starts[text]
    out = np.empty(capacity, dtype=np.uint8)
    offsets = np.empty(groups + 1, dtype=np.int64)
    unsure = np.zeros(groups, dtype=np.bool_)
    at = 0
    for group in range(groups):
        offsets[group] = at
        at = _put_part(out, at, parts, part_bounds, JSON_ITEMS)
        for row in range(bounds[group], bounds[group + 1]):
            if row > bounds[group]:
                out[at] = 44  # ,
                at += 1
            at = _put_part(out, at, parts, part_bounds, JSON_ID)
            at = _put(out, at, names, name_starts[item[row]], name_ends[item[row]])
            at = _put_part(out, at, parts, part_bounds, JSON_SCORE)
            written = put_score(out, at, total[row])
            if written < 0:  # 0.0 stands in (the caller writes this group otherwise)
                unsure[group] = True
                written = put_score(out, at, 0.0)
            at = _put_part(out, written, parts, part_bounds, JSON_REASON)
            if kind[row] == TEXT:
                at = _put(out, at, texts, text_starts[reason[row]], text_ends[reason[row]])
            else:
                at = _put_reason(
                    out, at, kind[row], reason[row], count[row], names, name_starts, name_ends,
                    parts, part_bounds,
                )  # fmt: skip
            if category[row] >= 0:
                text = category_texts + category[row]
                at = _put_part(out, at, parts, part_bounds, JSON_CATEGORY)
                at = _put(out, at, texts, text_starts[text], text_ends[text])
            out[at] = 125  # }
            at += 1
        at = _put_part(out, at, parts, part_bounds, JSON_VERSION)
        at = _put_int(out, at, versions[group // width])
        at = _put_part(out, at, parts, part_bounds, JSON_AT)
        at = _put_int(out, at, generated_at)
        at = _put_part(out, at, parts, part_bounds, JSON_END)
    offsets[groups] = at
    return out[:at], offsets, unsure
