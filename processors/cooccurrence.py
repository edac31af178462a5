"""Incremental item-item co-occurrence and sequential rules for next-click recommendation.

Learned one click at a time (``learn_one``), in the stream or in the evaluator:

- *sequential rules* ("after A, people clicked B"): for each of the previous ``steps`` items
  of the session, ``rules[prev][item] += 1 / distance`` (the weighting of session-rec's SR);
- *symmetric co-occurrence* within the same window, with per-item counts, from which the
  similarity indices raw count, Jaccard, cosine, lift and log-likelihood ratio are computed;
- bounded: each item keeps at most ``2 * max_neighbours`` entries and is pruned to its top
  ``max_neighbours`` (heavy hitters) when it grows past that.

``predict_one(session)`` scores candidates from the session's last items, weighting the
most recent most, and fills up with popular items.

>>> model = CooccurrenceModel(CooccurrenceConfig())
>>> for session in (["a", "b", "c"], ["a", "b", "d"], ["x", "b", "c"]):
...     for position, item in enumerate(session):
...         model.learn_one(session[:position], item)
>>> [item for item, _ in model.predict_one(["a", "b"], k=2)]
['c', 'd']
>>> model.explain("b", "c")
('because you viewed b', 2.0)
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from processors.ranking import largest
from processors.row_kernel import (
    RowTable,
    grown,
    learn_clicks,
    learn_visits,
    lookup,
    rule_votes,
    space_for,
    top,
    vote_lists,
)
from processors.row_kernel import visitor_votes as visitor_kernel
from processors.slate_kernel import first_hop, second_hop, strongest_voters

Similarity = Literal["rules", "count", "jaccard", "cosine", "lift", "llr"]


@dataclass(frozen=True, slots=True)
class CooccurrenceConfig:
    steps: int = 5  # how far back in the session a click is paired
    max_neighbours: int = 200  # M: neighbours kept per item
    similarity: Similarity = "rules"
    recent_items: int = 5  # how many of the session's last items generate candidates
    recency_decay: float = 0.3  # weight of the i-th last item: recency_decay ** i
    symmetric_weight: float = 0.1  # blend of symmetric similarity into the rule score
    # Time decay of evidence; None: counts never fade. 72 h was chosen on a validation split.
    half_life_ms: float | None = 72 * 3_600_000
    max_items: int = 100_000  # items with neighbour lists; the least clicked are dropped
    votes_per_item: int = 50  # strongest rule votes each session item casts
    # An item's vote lists are materialised and rebuilt once its (decayed) click count has
    # grown by this fraction since: a slate merges short ready lists, and a hot item's
    # lists are not re-sorted on every click. 0: rebuilt on every request.
    vote_refresh: float = 0.1
    # Neighbour visitors (session-kNN in the spirit of V-SkNN, or user-user neighbours when
    # the worker keys them by user): past visitors of the session's last items vote for the
    # other items they viewed. Kept per item as co-visitation counts (how many visitors of A
    # also viewed B), so a slate merges short materialised lists instead of scanning
    # visitors. Needs visitor ids in learn_one; 0 disables.
    session_knn_weight: float = 1.5
    # An item's visitor votes count at most this many (time-decayed) visitors: a popular
    # item's votes are its visitors' shares, not raw counts that drown a rarer session item.
    neighbour_cap: float = 30.0
    neighbour_votes_per_item: int = 50  # strongest co-visited items that vote per item
    max_visitor_items: int = 50  # items remembered per visitor (the oldest are forgotten)
    # Weight of the session's item i places from the end: exp(-i / decay); None: linear
    # (position / length), as in V-SkNN. The last 3 items vote.
    session_knn_position_decay: float | None = 1.0
    max_sessions: int = 100_000  # visitors remembered; the least recently active are forgotten
    # Of predict_one's k places, up to this many (at most k // 4) are kept for items the
    # session already viewed (most recent first) when they did not rank: ~10% of RSC15's next
    # clicks go back to an earlier item of the session, and some rank below 20 otherwise.
    revisit_slots: int = 5
    # Second hop: the strongest ``bridge_items`` candidates pass on their own votes (rule and
    # visitor votes, each list scaled to its peak) times their score times this weight, which
    # reaches next clicks no session item has evidence for (17.5% of RSC15's validation
    # misses) and re-ranks the tail. The first hop's ``bridge_keep`` strongest candidates
    # stay on top, in their order, so the head (and MRR) is the first hop's. 0 disables.
    # Chosen on the validation split (docs/evaluation.md).
    bridge_weight: float = 1.0
    bridge_items: int = 10
    bridge_keep: int = 5
    bridge_votes: int = 30  # the strongest votes a bridge passes on (see bridge_votes)


def _llr(k11: float, k12: float, k21: float, k22: float) -> float:
    """Dunning's log-likelihood ratio of a 2x2 contingency table."""

    def xlogx(x: float) -> float:
        return x * math.log(x) if x > 0 else 0.0

    def entropy(*counts: float) -> float:
        return xlogx(sum(counts)) - sum(xlogx(c) for c in counts)

    row = entropy(k11 + k12, k21 + k22)
    col = entropy(k11 + k21, k12 + k22)
    mat = entropy(k11, k12, k21, k22)
    return max(0.0, 2.0 * (row + col - mat))


Evidence = tuple[Literal["rules", "pairs"], str, str, float]  # table, row, column, amount


@dataclass(frozen=True, slots=True)
class VoteSources:
    """A session's voting items: (item, weight, its votes), rules and neighbour visitors;
    after scoring (``candidates``), the bridges: the strongest candidates, whose own votes
    make the second hop."""

    rules: list[tuple[str, float, dict[str, float]]]
    visitors: list[tuple[str, float, dict[str, float]]]
    last: str  # the session's last item ("" for an empty session)
    bridges: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)

    def strongest(self, candidate: str) -> str | None:
        """The session item behind a candidate's strongest vote: its strongest rule vote,
        else its strongest neighbour-visitor vote; None when no session item votes for it."""
        return _strongest(candidate, (self.rules, self.visitors))

    def bridge(self, candidate: str) -> str | None:
        """The candidate whose votes gave ``candidate`` its largest second-hop share, or
        None when it has none (``candidates`` fills the bridges)."""
        return _strongest(candidate, (self.bridges,))


def _strongest(
    candidate: str, groups: Iterable[list[tuple[str, float, dict[str, float]]]]
) -> str | None:
    """The voter with the largest weighted vote for ``candidate`` in the first group that
    has one."""
    for group in groups:
        best, source = 0.0, ""
        for item, weight, votes in group:
            share = weight * votes.get(candidate, 0.0)
            if share > best:
                best, source = share, item
        if source:
            return source
    return None


# An item's materialised lists as arrays: candidate indexes and votes of its rule, visitor and
# bridge votes back to back, and where each kind starts (and the last ends).
_VoteArrays = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], tuple[int, int, int, int]]

# (click count when built, rule votes, visitor votes, bridge votes): see vote_lists
_VoteLists = tuple[float, dict[str, float], dict[str, float], dict[str, float]]


class _Materialised:
    """An item's materialised vote lists (see ``vote_refresh``): the click count they were
    built at, and the rule, visitor and bridge votes as arrays over the item index, back to
    back (``bounds``); as dicts by name only when asked (``lists``)."""

    __slots__ = ("_lists", "bounds", "count", "items", "votes")

    def __init__(
        self,
        count: float,
        items: npt.NDArray[np.int64],
        votes: npt.NDArray[np.float64],
        bounds: tuple[int, int, int, int],
    ) -> None:
        self.count, self.items, self.votes, self.bounds = count, items, votes, bounds
        self._lists: _VoteLists | None = None

    def arrays(self) -> _VoteArrays:
        return self.items, self.votes, self.bounds

    def lists(self, names: list[str]) -> _VoteLists:
        """(count, rule votes, visitor votes, bridge votes), the votes by item name."""
        if self._lists is None:
            keys = list(map(names.__getitem__, self.items.tolist()))
            votes = self.votes.tolist()
            _, a, b, c = self.bounds
            self._lists = (
                self.count,
                dict(zip(keys[:a], votes[:a], strict=True)),
                dict(zip(keys[a:b], votes[a:b], strict=True)),
                dict(zip(keys[b:c], votes[b:c], strict=True)),
            )
        return self._lists


class _TableView(Mapping[str, dict[str, float]]):
    """A co-occurrence table read as the dict of dicts it was (``model.rules[a][b]``): each
    row made into a dict when read. For tests and the rare lookups; the hot paths use the
    arrays."""

    def __init__(self, model: CooccurrenceModel, table: RowTable) -> None:
        self._model, self._table = model, table

    def __getitem__(self, item: str) -> dict[str, float]:
        at = self._model.item_index.get(item)
        if at is None:
            raise KeyError(item)
        cols, vals = self._table.row(at)
        if not cols:
            raise KeyError(item)
        names = self._model.item_names
        return dict(zip(map(names.__getitem__, cols), vals, strict=True))

    def __iter__(self) -> Iterator[str]:
        names = self._model.item_names
        return iter([names[row] for row in self._table.rows()])

    def __len__(self) -> int:
        return len(self._table.rows())


@dataclass(frozen=True, slots=True)
class _Voters:
    """One kind of gathered votes of ``candidates_many`` (rule, visitor or bridge votes), in
    the order ``candidates`` meets them: each vote's (session, candidate) key, its weighted
    vote, and the voting item (an index into ``names``)."""

    keys: npt.NDArray[np.int64]
    votes: npt.NDArray[np.float64]
    voter: npt.NDArray[np.int64]
    names: list[str]

    @staticmethod
    def none() -> _Voters:
        return _Voters(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), [])


@dataclass(frozen=True, slots=True)
class BatchCandidates:
    """Many sessions' scored next items at once (``candidates_many``), as arrays by session
    (a session's items in the order met, not sorted): session ``s``'s candidates are
    ``bounds[s]:bounds[s + 1]``."""

    sessions: npt.NDArray[np.int64]  # the session (its position in the request) of each candidate
    items: npt.NDArray[np.int64]  # the candidate's index (``CooccurrenceModel.item_name``)
    scores: npt.NDArray[np.float64]  # exactly what ``candidates`` scores it
    bounds: npt.NDArray[np.int64]
    session_items: Sequence[Sequence[str]]  # the sessions asked for
    bridges: _Requests  # the second hop's bridges: session, gather row, weight
    bridge_bounds: npt.NDArray[np.int64]  # session s's bridges: bridge_bounds[s]:[s + 1]
    #: the gathered votes by kind (rules, visitors, bridges): where explanations come from
    voters: tuple[_Voters, _Voters, _Voters]
    #: the voters' and bridges' items (``explain_rows``' positions) as ``item_index`` positions
    voter_codes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _sources: dict[int, VoteSources] = field(default_factory=dict)

    def with_bridges(self, session: int, model: CooccurrenceModel) -> VoteSources:
        """The session's vote sources with its bridges filled in (as ``candidates`` does);
        made on demand from the model as it is now (valid until it learns again)."""
        sources = self._sources.get(session)
        if sources is None:
            sources = self._sources[session] = model.vote_sources(self.session_items[session])
        start, end = int(self.bridge_bounds[session]), int(self.bridge_bounds[session + 1])
        if start < end and not sources.bridges:
            bridges = self.bridges
            for row, weight in zip(
                bridges.rows[start:end], bridges.weights[start:end], strict=True
            ):
                item = bridges.items[row]
                sources.bridges.append((item, weight, model.bridge_votes(item)))
        return sources

    def explain_rows(
        self, keys: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """For each (session, item) key: the session item behind the item's strongest vote
        (``VoteSources.strongest``: its strongest rule vote, else its strongest neighbour-visitor
        vote) and the bridge behind its largest second-hop share (``VoteSources.bridge``), as
        positions in ``voter_names`` and ``bridge_names``; -1 where there is none. Arrays over
        all the keys at once, not a loop over each session's voters per item."""
        order = None
        if len(keys) > 1 and bool(np.any((keys[1:] >> 32) < (keys[:-1] >> 32))):
            order = np.argsort(keys >> 32, kind="stable")  # the kernel reads them by session
            keys = keys[order]
        rules, visitors, bridges = self.voters
        items = int(keys.max() & (KEY_SPACE - 1)) + 1 if len(keys) else 0
        for kind in self.voters:
            if len(kind.keys):
                items = max(items, int((kind.keys & (KEY_SPACE - 1)).max()) + 1)
        source = np.full(len(keys), -1, dtype=np.int64)
        bridge = np.full(len(keys), -1, dtype=np.int64)
        if len(keys):
            # visitors first: a rule vote, where there is one, overwrites the visitor's
            strongest_voters(visitors.keys, visitors.votes, visitors.voter, keys, items, source)
            strongest_voters(rules.keys, rules.votes, rules.voter, keys, items, source)
            strongest_voters(bridges.keys, bridges.votes, bridges.voter, keys, items, bridge)
        if order is not None:
            source[order], bridge[order] = source.copy(), bridge.copy()
        return source, bridge

    @property
    def voter_names(self) -> list[str]:
        """The names ``explain_rows``' sources index (the vote arena's rows' items)."""
        rules, visitors, _ = self.voters
        return rules.names or visitors.names

    @property
    def bridge_names(self) -> list[str]:
        """The names ``explain_rows``' bridges index."""
        return self.voters[2].names

    def explain(self, keys: npt.NDArray[np.int64]) -> tuple[list[str | None], list[str | None]]:
        """``explain_rows`` as names (None where there is none)."""
        source, bridge = self.explain_rows(keys)
        names, bridge_names = self.voter_names, self.bridge_names
        sources = [None if at < 0 else names[at] for at in source.tolist()]
        via = [None if at < 0 else bridge_names[at] for at in bridge.tolist()]
        return sources, via

    def scores_of(self, session: int, item_names: Sequence[str]) -> dict[str, float]:
        """One session's candidates as ``candidates`` returns them (order aside)."""
        start, end = int(self.bounds[session]), int(self.bounds[session + 1])
        return {
            item_names[item]: score
            for item, score in zip(
                self.items[start:end].tolist(), self.scores[start:end].tolist(), strict=True
            )
        }


_RULES, _VISITORS, _BRIDGES = 0, 1, 2
#: (session, item) pairs of ``candidates_many`` are one int64 key: session * KEY_SPACE + item.
KEY_SPACE = 1 << 32


def click_evidence(session_before: Sequence[str], item: str, steps: int) -> list[Evidence]:
    """The row updates one click makes (before time decay): what ``learn_one`` applies and
    what an item-keyed deployment would ship to each row's owner.

    >>> click_evidence(["a", "b"], "c", steps=5)
    [('rules', 'b', 'c', 1.0), ('pairs', 'b', 'c', 1.0), ('pairs', 'c', 'b', 1.0), \
('rules', 'a', 'c', 0.5), ('pairs', 'a', 'c', 1.0), ('pairs', 'c', 'a', 1.0)]
    """
    out: list[Evidence] = []
    window = session_before[-steps:] if steps > 0 else []
    for distance, previous in enumerate(reversed(window), start=1):
        # A repeat click (A then A) is a rule too: a quarter of RSC15's next clicks repeat
        # the current item, and a model that cannot predict that misses all of them.
        out.append(("rules", previous, item, 1.0 / distance))
        if previous == item:
            continue
        out.append(("pairs", previous, item, 1.0))
        out.append(("pairs", item, previous, 1.0))
    return out


class CooccurrenceModel:
    """Pure and incremental; all state bounded by ``max_neighbours`` per item."""

    def __init__(self, config: CooccurrenceConfig) -> None:
        self.config = config
        # The tables, by position in ``item_index`` (row_kernel): rules[a][b] (sequential
        # rules), pairs[a][b] (symmetric co-occurrence), covisits[a][b] (visitors who viewed
        # both a and b; covisits[a][a]: visitors of a). ``rules`` etc. read them as dicts.
        self._rules, self._pairs, self._covisits = RowTable(), RowTable(), RowTable()
        self.item_counts: dict[str, float] = {}
        self._counts = np.zeros(64)  # item_counts by position in item_index (0: none)
        self.total = 0.0
        self._landmark: float | None = None
        # visitor id -> its distinct items, the oldest first (see _remember_visit)
        # an OrderedDict: its first key is O(1) however many were deleted before it (a dict
        # skips the deleted slots, ~29 µs per new visitor once 100,000 are remembered)
        self.sessions: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        # their items in all, kept as they change: summing 100,000 visitors' tuples for the
        # size gauge took ~45 ms of the event loop (cold tuples) every two seconds
        self.remembered_visitor_items = 0
        self._latest_weight = 1.0  # forward-decay weight of the latest evidence
        # item -> its materialised vote lists (see vote_refresh)
        self._vote_lists: dict[str, _Materialised] = {}
        self._popular: list[tuple[str, float]] | None = None
        # The index of every item learned or met (bounded: renumbered, keeping the items
        # still referenced, when it outgrows _index_limit), the tables' and the vote arrays'
        # positions; and the materialised lists candidates_many has read, as arrays over it,
        # kept across batches (_VoteArena; None: to be made afresh).
        self.item_index: dict[str, int] = {}
        self.item_names: list[str] = []
        self.index_generation = 0  # bumped when the index is renumbered (positions change)
        self._index_limit = 4 * max(config.max_items, 1_000)
        self._arena: _VoteArena | None = None
        self._scratch = np.full(64, -1, dtype=np.int64)  # the kernels' (by item index)
        # Learned clicks and visits not yet in the tables: applied together (one kernel call
        # for many, not one per click) before anything reads the tables (``_learn``).
        self._clicks = _Pending()
        self._visits = _Pending()

    @property
    def rules(self) -> Mapping[str, dict[str, float]]:
        """rules[a][b]: ``b`` clicked after ``a`` (``1 / distance`` each, time-decayed)."""
        self._learn()
        return _TableView(self, self._rules)

    @property
    def pairs(self) -> Mapping[str, dict[str, float]]:
        """pairs[a][b]: ``a`` and ``b`` clicked within ``steps`` of each other."""
        self._learn()
        return _TableView(self, self._pairs)

    @property
    def covisits(self) -> Mapping[str, dict[str, float]]:
        """covisits[a][b]: (decayed) visitors who viewed both; covisits[a][a]: visitors of a."""
        self._learn()
        return _TableView(self, self._covisits)

    # --- learning ---------------------------------------------------------------------
    def _weight(self, ts_ms: float | None) -> float:
        """Forward-decay weight of evidence at ``ts_ms`` (1.0 without decay)."""
        half_life = self.config.half_life_ms
        if half_life is None or ts_ms is None:
            return 1.0
        if self._landmark is None:
            self._landmark = ts_ms
        exponent = (ts_ms - self._landmark) / half_life
        if exponent > 200.0:  # rescale everything so weights stay finite
            self._learn()  # what was learned before, at the old scale
            factor = 2.0**-exponent
            self._latest_weight *= factor
            self._vote_lists.clear()
            self._arena = None
            for table in (self._rules, self._pairs, self._covisits):
                table.scale(factor)
            self.item_counts = {k: v * factor for k, v in self.item_counts.items()}
            self._counts *= factor
            self.total *= factor
            self._landmark = ts_ms
            exponent = 0.0
        weight = float(2.0**exponent)
        if weight > self._latest_weight:
            self._latest_weight = weight
        return weight

    def learn_one(
        self,
        session_before: Sequence[str],
        item: str,
        ts_ms: float | None = None,
        session_id: str | None = None,
    ) -> None:
        """Learn that ``item`` was clicked after ``session_before`` (oldest first)."""
        config = self.config
        weight = self._weight(ts_ms)
        if session_id is not None and config.session_knn_weight > 0.0:
            self._remember_visit(session_id, item, weight)
        count = self.item_counts[item] = self.item_counts.get(item, 0.0) + weight
        at = self.intern(item)
        self._counts[at] = count
        self.total += weight
        self._popular = None
        arena = self._arena
        if arena is not None and item in arena.rows:
            # its arrays stay valid while _materialised would return the lists they came from
            cached = self._vote_lists.get(item)
            if cached is None or count > cached.count * (1.0 + config.vote_refresh):
                arena.drop(item)
        # ``click_evidence``'s updates, in its order (row_kernel.learn_click)
        window = session_before[-config.steps :] if config.steps > 0 else []
        if window:
            self._clicks.add([self.intern(previous) for previous in window], at, weight)
        if len(self.item_counts) > 2 * config.max_items:
            self._drop_rare_items()

    def learn_pending(self) -> None:
        """Apply what ``learn_one`` queued now, instead of at the next read (which would
        otherwise do it): a caller that times its steps charges the learning to itself.

        >>> model = CooccurrenceModel(CooccurrenceConfig())
        >>> model.learn_one(["a"], "b", session_id="s")
        >>> model.pending_clicks()
        1
        >>> model.learn_pending()
        >>> model.pending_clicks(), model.votes("a")
        (0, [('b', 1.1)])
        """
        self._learn()

    def pending_clicks(self) -> int:
        """Clicks ``learn_one`` queued that the tables do not hold yet."""
        return len(self._clicks.items)

    def _learn(self) -> None:
        """Apply the pending clicks and visits to the tables, in the order learned
        (``row_kernel.learn_clicks`` and ``learn_visits``; the pools grown between calls)."""
        keep = self.config.max_neighbours
        clicks, visits = self._clicks, self._visits
        if clicks.items:
            windows, ends, items, weights = clicks.take()
            steps = max(self.config.steps, 1)
            done = 0
            while done < len(items):  # room for 8 clicks at worst (most need none)
                self._rules.ensure_space(space_for(8 * steps, keep))
                self._pairs.ensure_space(space_for(16 * steps, keep))
                done = learn_clicks(
                    self._rules.arrays(),
                    self._pairs.arrays(),
                    windows,
                    ends,
                    items,
                    weights,
                    keep,
                    done,
                )
        if visits.items:
            earlier, ends, items, weights = visits.take()
            most = int(np.diff(ends, prepend=0).max())
            done = 0
            while done < len(items):
                self._covisits.ensure_space(space_for(2 * (2 * most + 1), keep))
                done = learn_visits(
                    self._covisits.arrays(), earlier, ends, items, weights, keep, done
                )

    def _remember_visit(self, visitor: str, item: str, weight: float) -> None:
        """Add ``item`` to the visitor's items; a new one is co-visited with each earlier one.

        A visitor's items are a tuple (oldest first) of interned ids: ~8 bytes per item and
        one copy of each id however many visitors viewed it (a dict per visitor and a string
        per event held ~3.5 KB per user in the worker).
        """
        sessions = self.sessions
        items = sessions.pop(visitor, None)  # re-inserted last: most recently active
        if items is None:
            items = ()
            if len(sessions) >= self.config.max_sessions:
                _, dropped = sessions.popitem(last=False)  # the least recently active
                self.remembered_visitor_items -= len(dropped)
        if item in items:
            sessions[visitor] = items
            return
        item = sys.intern(item)
        earlier = list(map(self.item_index.get, items))
        if None in earlier:  # an earlier item the index let go of (_renumber_index)
            earlier = [self.intern(other) for other in items]
        self._visits.add(earlier, self.intern(item), weight)  # type: ignore[arg-type]
        items += (item,)
        self.remembered_visitor_items += 1
        if len(items) > self.config.max_visitor_items:
            items = items[1:]
            self.remembered_visitor_items -= 1
        sessions[visitor] = items

    def forget_visitors(self, is_theirs: Callable[[str], bool]) -> int:
        """Erase every remembered visitor for which ``is_theirs(visitor_id)`` holds (a user
        asked to be forgotten): their item sets. Aggregated counts (rules, pairs,
        co-visitation, popularity) are not personal and stay. Returns the visitors erased.
        Rare and O(remembered visitors)."""
        gone = [visitor for visitor in self.sessions if is_theirs(visitor)]
        for visitor in gone:
            self.remembered_visitor_items -= len(self.sessions.pop(visitor))
        return len(gone)

    def visitor_votes(self, item: str) -> list[tuple[str, float]]:
        """What the visitors of ``item`` viewed: the ``neighbour_votes_per_item`` items most
        co-visited with it, each as the number of its visitors (capped at ``neighbour_cap``,
        in today's decayed units) who viewed that item too. The item itself is included
        (revisits).
        """
        at = self.item_index.get(item)
        if at is None:
            return []
        self._learn()
        config = self.config
        items, votes = visitor_kernel(
            self._covisits.arrays(),
            at,
            self._latest_weight,
            config.neighbour_cap,
            config.neighbour_votes_per_item,
        )
        return self._named(items, votes)

    def _named(
        self, items: npt.NDArray[np.int64], votes: npt.NDArray[np.float64]
    ) -> list[tuple[str, float]]:
        names = self.item_names
        return list(zip(map(names.__getitem__, items.tolist()), votes.tolist(), strict=True))

    def _knn_items(self, session: Sequence[str]) -> list[tuple[str, float]]:
        """The session's last 3 distinct items with their neighbour weights (most recent
        first): exp(-places from the end / ``session_knn_position_decay``)."""
        length = len(session)
        decay = self.config.session_knn_position_decay
        out: list[tuple[str, float]] = []
        done: list[str] = []  # (a list: a few items, ``in`` compares in C)
        for position in range(length - 1, max(length - 4, -1), -1):
            item = session[position]
            if item in done:
                continue
            done.append(item)
            out.append(
                (
                    item,
                    (position + 1) / length
                    if decay is None
                    else math.exp((position + 1 - length) / decay),
                )
            )
        return out

    def session_knn_votes(self, session: Sequence[str]) -> dict[str, float]:
        """Neighbour visitors' votes for a session: the visitor votes of the session's last 3
        items, weighted by position (``session_knn_position_decay``).

        Equivalent to scoring every recent visitor of those items by the position weights
        of the items it shares with the session and summing the visitors' items (session-kNN
        without the top-N cut), but merged from materialised per-item lists.
        """
        votes: dict[str, float] = {}
        get = votes.get
        for item, weight in self._knn_items(session):
            for candidate, vote in self.vote_lists(item)[1].items():
                votes[candidate] = get(candidate, 0.0) + weight * vote
        return votes

    def _drop_rare_items(self) -> None:
        self._learn()
        keep = dict(largest(self.item_counts.items(), self.config.max_items))
        dropped = [item for item in self.item_counts if item not in keep]
        self.item_counts = keep
        self._arena = None
        index = self.item_index
        for item in dropped:
            at = index[item]
            self._counts[at] = 0.0
        for table in (self._rules, self._pairs, self._covisits):
            for row in table.rows():
                if self.item_names[row] not in keep:
                    table.drop(row)
        for item in [i for i in self._vote_lists if i not in keep]:
            del self._vote_lists[item]

    # --- similarity -------------------------------------------------------------------
    def similarity(self, a: str, b: str, kind: Similarity | None = None) -> float:
        kind = kind or self.config.similarity
        if kind == "rules":
            return self.rules.get(a, {}).get(b, 0.0)
        both = self.pairs.get(a, {}).get(b, 0.0)
        if both == 0.0:
            return 0.0
        count_a = self.item_counts.get(a, 0.0)
        count_b = self.item_counts.get(b, 0.0)
        if kind == "count":
            return both
        if kind == "jaccard":
            return both / max(count_a + count_b - both, 1e-9)
        if kind == "cosine":
            return both / math.sqrt(max(count_a * count_b, 1e-9))
        if kind == "lift":
            return both * self.total / max(count_a * count_b, 1e-9)
        return _llr(both, count_a - both, count_b - both, self.total - count_a - count_b + both)

    def neighbours(self, item: str, kind: Similarity | None = None) -> dict[str, float]:
        kind = kind or self.config.similarity
        if kind == "rules":
            return self.rules.get(item, {})
        return {b: self.similarity(item, b, kind) for b in self.pairs.get(item, {})}

    def pair_values(
        self, sources: Sequence[str | None], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """``pairs[source][item]`` for each source name and item (its ``item_index``
        position), 0.0 where there is none (or the source is None)."""
        index = self.item_index
        rows = np.array(
            [-1 if source is None else index.get(source, -1) for source in sources], np.int64
        )
        return self.pair_values_at(rows, items)

    def pair_values_at(
        self, sources: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """``pair_values`` with the sources as ``item_index`` positions (-1: none)."""
        self._learn()
        return lookup(self._pairs.arrays(), sources, items)  # type: ignore[no-any-return]

    @property
    def latest_weight(self) -> float:
        """The forward-decay weight of the newest evidence: stored values divided by it are
        decayed to now (event time)."""
        return self._latest_weight

    def times_together(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """``pair_values`` as the co-occurrence counts an explanation shows: decayed to the
        newest evidence (the stored values are forward-decay weighted from the model's
        landmark, so undivided they would grow by 2x every half-life of the model's life),
        rounded, at least 1 where there is any evidence and 0 where there is none.

        >>> model = CooccurrenceModel(CooccurrenceConfig(half_life_ms=1_000))
        >>> model.learn_one([], "a", ts_ms=0)
        >>> model.learn_one(["a"], "b", ts_ms=0)
        >>> model.learn_one([], "x", ts_ms=3_000)  # three half-lives later
        >>> values = model.pair_values(["a", "a", None], np.array([1, 1, 1]))
        >>> model.times_together(values * np.array([1.0, 80.0, 1.0])).tolist()
        [1, 10, 0]
        """
        now = values / self.latest_weight
        counts = np.rint(np.minimum(now, 2.0**62)).astype(np.int64)
        return np.where(values > 0.0, np.maximum(counts, 1), 0)

    def explain(self, source: str, target: str) -> tuple[str, float]:
        """Why ``target`` is recommended after ``source``: the reason and its evidence count,
        decayed to the newest evidence (as the slates' explanations count it)."""
        together = self.pairs.get(source, {}).get(target, 0.0) / self.latest_weight
        return f"because you viewed {source}", together

    # --- prediction -------------------------------------------------------------------
    def popular(self, n: int) -> list[tuple[str, float]]:
        if self._popular is None or len(self._popular) < n:
            self._popular = heapq.nlargest(n, self.item_counts.items(), key=lambda kv: kv[1])
        return self._popular[:n]

    def votes(self, item: str, limit: int | None = None) -> list[tuple[str, float]]:
        """What one session item says about the next click: its rule row normalised by its
        strongest rule, plus ``symmetric_weight`` times its normalised cosine row; the top
        ``limit`` of them (all when None).
        """
        at = self.item_index.get(item)
        if at is None:
            return []
        self._learn()
        # cosine = both / sqrt(count_a * count_b); the count_a factor cancels in the
        # normalisation by the row's peak, so only count_b is needed (row_kernel.rule_votes)
        items, votes = rule_votes(
            self._rules.arrays(),
            self._pairs.arrays(),
            at,
            self._counts,
            self.config.symmetric_weight,
            self._scratch,
        )
        if limit is not None:
            items, votes = top(items, votes, limit)
        return self._named(items, votes)

    def vote_lists(self, item: str) -> tuple[dict[str, float], dict[str, float]]:
        """The item's materialised rule votes (top ``votes_per_item``) and visitor votes,
        rebuilt once its click count has grown by ``vote_refresh`` since they were built."""
        lists = self._materialised(item)
        return lists[1], lists[2]

    def bridge_votes(self, item: str) -> dict[str, float]:
        """What the item passes on as a bridge (the second hop): its rule votes and visitor
        votes, each scaled to its peak, summed; the top ``bridge_votes``, strongest first."""
        return self._materialised(item)[3]

    def _materialised(self, item: str) -> _VoteLists:
        return self._built(item).lists(self.item_names)

    def _built(self, item: str) -> _Materialised:
        """The item's materialised lists: cached, or (re)built now (``vote_refresh``) by
        ``row_kernel.vote_lists`` from its rows."""
        count = self.item_counts.get(item, 0.0)
        config = self.config
        cached = self._vote_lists.get(item)
        if cached is not None and count <= cached.count * (1.0 + config.vote_refresh):
            return cached
        at = self.intern(item)
        self._learn()
        items, votes, split, both = vote_lists(
            self._rules.arrays(),
            self._pairs.arrays(),
            self._covisits.arrays(),
            at,
            self._counts,
            config.symmetric_weight,
            config.votes_per_item,
            config.session_knn_weight > 0.0,
            self._latest_weight,
            config.neighbour_cap,
            config.neighbour_votes_per_item,
            config.bridge_votes if config.bridge_weight > 0.0 else -1,
            self._scratch,
        )
        built = _Materialised(count, items, votes, (0, split, both, len(items)))
        if count > 0.0:  # an item never clicked (pruned, or only seen) is not remembered
            self._vote_lists[item] = built
        return built

    @property
    def session_window(self) -> int | None:
        """How many of a session's last items its candidates, vote sources and explanations
        depend on (None: all of them): the ``recent_items`` that vote by rules, the last 3
        that vote by neighbours (weighed by their places from the end, unless the position
        decay is None: then by the session's length), and the last, which explanations name.

        >>> CooccurrenceModel(CooccurrenceConfig()).session_window
        5
        """
        config = self.config
        if config.session_knn_weight > 0.0 and config.session_knn_position_decay is None:
            return None
        return max(config.recent_items, 3 if config.session_knn_weight > 0.0 else 1)

    def _rule_items(self, session: Sequence[str]) -> list[tuple[str, float]]:
        """The session's last ``recent_items`` distinct items with their vote weights (most
        recent first): 1, ``recency_decay``, ``recency_decay``², ..."""
        config = self.config
        out: list[tuple[str, float]] = []
        done: list[str] = []  # (a list: a few items, ``in`` compares in C)
        weight = 1.0
        for item in reversed(session[-config.recent_items :] if config.recent_items else []):
            if item in done:
                continue
            done.append(item)
            out.append((item, weight))
            weight *= config.recency_decay
        return out

    def vote_sources(self, session: Sequence[str]) -> VoteSources:
        """The session items that vote, with their weights and materialised vote lists."""
        rules = [
            (item, weight, self.vote_lists(item)[0]) for item, weight in self._rule_items(session)
        ]
        visitors = (
            [(item, weight, self.vote_lists(item)[1]) for item, weight in self._knn_items(session)]
            if self.config.session_knn_weight > 0.0
            else []
        )
        return VoteSources(rules, visitors, session[-1] if session else "")

    def candidates(
        self, session: Sequence[str], sources: VoteSources | None = None
    ) -> dict[str, float]:
        """Scored next items for a session.

        First hop: the session's last ``recent_items`` items vote (see ``votes``), the most
        recent with weight 1, the one before with ``recency_decay``, and so on; then the
        neighbour visitors (``session_knn_votes``), scaled to the rule votes' peak times
        ``session_knn_weight``. Both from the items' materialised lists (``vote_lists``);
        ``sources`` passes them in when the caller already has them (``vote_sources``), and
        gets the second hop's bridges filled in (for explanations).

        Second hop (``bridge_weight`` > 0): the ``bridge_items`` strongest candidates vote
        too, each with its score times ``bridge_weight``, and the first hop's
        ``bridge_keep`` strongest candidates are lifted above every other score.
        """
        if sources is None:
            sources = self.vote_sources(session)
        scores: dict[str, float] = {}
        get = scores.get
        for _, weight, votes in sources.rules:
            for candidate, vote in votes.items():
                scores[candidate] = get(candidate, 0.0) + weight * vote
        knn: dict[str, float] = {}
        knn_get = knn.get
        for _, weight, votes in sources.visitors:
            for candidate, vote in votes.items():
                knn[candidate] = knn_get(candidate, 0.0) + weight * vote
        if knn:
            # Scaled to the rule scores' peak so the weight means the same on any data.
            scale = self.config.session_knn_weight * max(scores.values(), default=1.0)
            scale /= max(knn.values())
            for candidate, vote in knn.items():
                scores[candidate] = get(candidate, 0.0) + vote * scale
        if self.config.bridge_weight > 0.0 and scores:
            return self._second_hop(scores, sources)
        return scores

    def _second_hop(self, scores: dict[str, float], sources: VoteSources) -> dict[str, float]:
        """Adds the bridges' votes to the first hop's ``scores`` (in place) and lifts its
        head on top (see ``candidates``); records the bridges in ``sources``."""
        config = self.config
        top = largest(scores.items(), max(config.bridge_items, config.bridge_keep))
        get = scores.get
        bridges = sources.bridges
        bridges.clear()
        materialised = self._materialised
        for bridge, score in top[: config.bridge_items]:
            votes = materialised(bridge)[3]
            weight = config.bridge_weight * score
            bridges.append((bridge, weight, votes))
            for candidate, vote in votes.items():
                scores[candidate] = get(candidate, 0.0) + weight * vote
        if config.bridge_keep > 0:
            lift = max(scores.values())  # every head score ends above it (scores are > 0)
            for item, score in top[: config.bridge_keep]:
                scores[item] = lift + score
        return scores

    # --- many sessions at once ---------------------------------------------------------
    def candidates_many(self, sessions: Sequence[Sequence[str]]) -> BatchCandidates:
        """``candidates`` of many sessions at once, bit for bit, and their vote sources.

        The materialised vote lists are kept as arrays, so the sessions' votes are gathered,
        summed per (session, candidate) and ranked for the second hop by compiled loops
        (``slate_kernel.first_hop`` and ``second_hop``, a session at a time over dense
        arrays) instead of a dict update per vote. Sums are taken in the order
        ``candidates`` adds them and ties between bridges go to the candidate ``candidates``
        met first, so the scores are identical, not just close.

        >>> model = CooccurrenceModel(CooccurrenceConfig())
        >>> for session in (["a", "b", "c"], ["a", "b", "d"], ["x", "b", "c"]):
        ...     for position, item in enumerate(session):
        ...         model.learn_one(session[:position], item, session_id="-".join(session))
        >>> batch = model.candidates_many([["a", "b"], [], ["x"]])
        >>> batch.scores_of(0, model.item_names) == model.candidates(["a", "b"])
        True
        >>> batch.scores_of(1, model.item_names), batch.scores_of(2, model.item_names) == (
        ...     model.candidates(["x"]))
        ({}, True)
        """
        config = self.config
        if len(self.item_index) > self._index_limit:
            self._renumber_index()
        table = self._arena
        if table is None:
            table = self._arena = _VoteArena(self)
        table.start_batch()
        row = table.row
        rules = _Requests(_RULES)
        visitors = _Requests(_VISITORS)
        knn = self.config.session_knn_weight > 0.0
        for position, session in enumerate(sessions):
            for item, weight in self._rule_items(session):
                rules.owners.append(position)
                rules.rows.append(row(item))
                rules.weights.append(weight)
            for item, weight in self._knn_items(session) if knn else ():
                visitors.owners.append(position)
                visitors.rows.append(row(item))
                visitors.weights.append(weight)
        count = len(sessions)
        offsets, all_items, all_votes = table.arrays()
        ranked_size = max(config.bridge_items, config.bridge_keep)
        # hop: each session's candidates (items, scores, bounds), its ranked ones (the same)
        (
            rule_keys,
            rule_weighted,
            rule_voter,
            visitor_keys,
            visitor_weighted,
            visitor_voter,
            *hop,
        ) = first_hop(
            count,
            np.array(rules.owners, dtype=np.int64),
            np.array(rules.rows, dtype=np.int64),
            np.array(rules.weights, dtype=np.float64),
            np.array(visitors.owners, dtype=np.int64),
            np.array(visitors.rows, dtype=np.int64),
            np.array(visitors.weights, dtype=np.float64),
            offsets,
            all_items,
            all_votes,
            len(self.item_names),
            config.session_knn_weight,
            ranked_size if config.bridge_weight > 0.0 else 0,
        )
        ranked, ranked_scores, ranked_bounds = hop[3:]
        rule_votes = _Voters(rule_keys, rule_weighted, rule_voter, table.items)
        visitor_votes = _Voters(visitor_keys, visitor_weighted, visitor_voter, table.items)
        # the bridges: each session's first ``bridge_items`` ranked candidates (their rows
        # are read now: the table grows)
        bridges = _Requests(_BRIDGES)
        rank = np.arange(len(ranked)) - np.repeat(ranked_bounds[:-1], np.diff(ranked_bounds))
        chosen = np.flatnonzero(rank < config.bridge_items)
        names, row = self.item_names, table.row
        bridges.rows = [row(names[item]) for item in ranked[chosen].tolist()]
        bridge_owners = np.repeat(np.arange(count), np.diff(ranked_bounds))[chosen]
        weights = config.bridge_weight * ranked_scores[chosen]
        bridges.owners, bridges.weights = bridge_owners.tolist(), weights.tolist()
        bridges.items = table.items  # the rows' names, for the explanations
        offsets, all_items, all_votes = table.arrays()
        keys, final_scores, bridge_keys, bridge_weighted, bridge_voter = second_hop(
            count,
            *hop,
            bridge_owners,
            np.array(bridges.rows, dtype=np.int64),
            weights,
            config.bridge_keep if config.bridge_weight > 0.0 else 0,
            offsets,
            all_items,
            all_votes,
            len(self.item_names),
        )
        owners = keys >> 32
        return BatchCandidates(
            sessions=owners,
            items=keys & (KEY_SPACE - 1),
            scores=final_scores,
            bounds=np.searchsorted(owners, np.arange(count + 1)),
            session_items=sessions,
            bridges=bridges,
            bridge_bounds=np.searchsorted(bridges.owners, np.arange(count + 1)),
            voters=(
                rule_votes,
                visitor_votes,
                _Voters(bridge_keys, bridge_weighted, bridge_voter, table.items),
            ),
            voter_codes=table.codes,
        )

    def intern(self, item: str) -> int:
        """The item's position in ``item_index``, added when new (an index of names only: it
        changes no score)."""
        at = self.item_index.get(item)
        if at is None:
            at = self.item_index[item] = len(self.item_names)
            self.item_names.append(item)
            if at >= len(self._counts):
                self._grow(2 * at)
        return at

    def _grow(self, size: int) -> None:
        """Room for ``size`` positions in the arrays by item index."""
        for table in (self._rules, self._pairs, self._covisits):
            table.ensure_rows(size)
        self._counts = grown(self._counts, size)
        self._scratch = np.full(size, -1, dtype=np.int64)

    def _renumber_index(self) -> None:
        """Keep in the index only the items something still refers to (a row, a column, a
        click count, a cached vote list), renumbered in their order; every array over the
        index follows. Bounds the index when items come and go."""
        self._learn()
        names = self.item_names
        index = self.item_index
        referenced = [table.referenced() for table in (self._rules, self._pairs, self._covisits)]
        referenced.append(np.array([index[item] for item in self.item_counts], dtype=np.int64))
        referenced += [built.items for built in self._vote_lists.values()]
        kept = np.unique(np.concatenate(referenced))
        size = max(2 * len(kept), 64)
        for table in (self._rules, self._pairs, self._covisits):
            table.renumber(kept, size)
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        for built in self._vote_lists.values():
            built.items = remap[built.items]
        counts = np.zeros(size)
        counts[: len(kept)] = self._counts[kept]
        self._counts = counts
        self._scratch = np.full(size, -1, dtype=np.int64)
        kept_names = [names[at] for at in kept.tolist()]
        names[:] = kept_names
        index.clear()
        index.update((item, at) for at, item in enumerate(kept_names))
        self.index_generation += 1
        self._arena = None
        self._index_limit = max(4 * max(self.config.max_items, 1_000), 2 * len(kept))

    def vote_arrays(self, item: str) -> tuple[_Materialised, _VoteArrays]:
        """The item's materialised vote lists (``_materialised``; the object the cache holds),
        as arrays over ``item_index``: rule, visitor and bridge votes back to back, and their
        offsets."""
        built = self._built(item)
        return built, built.arrays()

    def predict_one(
        self, session: Sequence[str], k: int = 20, session_id: str | None = None
    ) -> list[tuple[str, float]]:
        """Top ``k`` next items for a session (oldest first): scored candidates, up to
        ``revisit_slots`` of the session's own items that did not rank, popular items as fill.
        ``session_id`` is part of the evaluator's protocol; this model needs no exclusion (the
        session's own visits count in the co-visitation like any other visitor's).
        """
        scores = self.candidates(session)
        ranked = largest(scores.items(), k)
        if len(ranked) < k:
            have = {item for item, _ in ranked}
            floor = min((s for _, s in ranked), default=1.0)
            for item, count in self.popular(k + len(have)):
                if item not in have:
                    ranked.append((item, floor * 1e-6 * count / (self.total or 1.0)))
                    if len(ranked) == k:
                        break
        slots = min(self.config.revisit_slots, k // 4)  # never more than a quarter
        if slots > 0:
            have = {item for item, _ in ranked}
            missing = list(dict.fromkeys(i for i in reversed(session) if i not in have))[:slots]
            if missing:
                keep = min(len(ranked), k - len(missing))
                floor = ranked[keep - 1][1] if keep else 1.0
                ranked = ranked[:keep] + [(item, floor) for item in missing]
        return ranked

    def size(self) -> int:
        """Entries held: neighbour rows plus the visitor memory (the gauge of this state's size).

        Bounded: at most 2 * max_items rows of at most 2 * max_neighbours entries each, and
        max_sessions visitors of at most max_visitor_items items, each listed under at most
        2 * session_knn_sample visitors per item.
        """
        self._learn()
        rows = self._rules.entries() + self._pairs.entries()
        return rows + self.remembered_visitor_items


class _Pending:
    """Learned updates not yet applied: for each, the positions it pairs with (back to back),
    the item's position and the evidence weight."""

    __slots__ = ("ends", "items", "others", "weights")

    def __init__(self) -> None:
        self.others: list[int] = []
        self.ends: list[int] = []
        self.items: list[int] = []
        self.weights: list[float] = []

    def add(self, others: list[int], item: int, weight: float) -> None:
        self.others += others
        self.ends.append(len(self.others))
        self.items.append(item)
        self.weights.append(weight)

    def take(
        self,
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]
    ]:
        """Everything pending, as arrays; nothing is pending after."""
        out = (
            np.array(self.others, dtype=np.int64),
            np.array(self.ends, dtype=np.int64),
            np.array(self.items, dtype=np.int64),
            np.array(self.weights, dtype=np.float64),
        )
        self.others, self.ends, self.items, self.weights = [], [], [], []
        return out


class _Requests:
    """Votes of one kind to gather: for each, the session, the vote arena's row of the
    voting item, and the weight."""

    __slots__ = ("items", "kind", "owners", "rows", "weights")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.owners: list[int] = []
        self.rows: list[int] = []
        self.weights: list[float] = []
        self.items: list[str] = []  # each row's item (filled for the bridges)


class _VoteArena:
    """The materialised vote lists ``candidates_many`` has read, as arrays over the model's
    ``item_index``, back to back, a row per item: what the kernels gather from.

    Kept across batches (the model drops it when its lists are cleared or its index
    rebuilt): an item's row stays valid while ``_materialised`` would return the lists it
    was made from, which changes only when the item's click count outgrows them
    (``learn_one`` then drops the row) or for lists not cached (items never clicked: their
    rows last one batch). A batch reads a row with one dict lookup instead of checking and
    converting the item's lists and joining every row it needs into new arrays.
    """

    #: Compacted when dropped rows hold more entries than this and than the live ones.
    compact_after_entries = 1 << 16

    def __init__(self, model: CooccurrenceModel) -> None:
        self._model = model
        self.rows: dict[str, int] = {}  # item -> its row (valid rows only)
        self.items: list[str] = []  # each row's item, dropped rows too (a new list when compacted)
        self._bounds = np.zeros((256, 4), dtype=np.int64)  # rule, visitor, bridge starts; end
        self._codes = np.zeros(256, dtype=np.int64)  # each row's item, as its index position
        self._candidates = np.zeros(1 << 14, dtype=np.int64)
        self._votes = np.zeros(1 << 14, dtype=np.float64)
        self._size = 0  # entries in use, dropped rows' included
        self._garbage = 0  # entries of dropped rows
        self._transient: list[str] = []  # rows of lists _materialised did not cache

    def row(self, item: str) -> int:
        """The item's row (its arrays are added on first use)."""
        at = self.rows.get(item)
        if at is None:
            at = self._add(item)
        return at

    def _add(self, item: str) -> int:
        model = self._model
        lists, (candidates, votes, (a, b, c, d)) = model.vote_arrays(item)
        at, size = len(self.items), self._size
        end = size + d
        if at == len(self._bounds):
            self._bounds = grown(self._bounds, 2 * len(self._bounds))
            self._codes = grown(self._codes, 2 * len(self._codes))
        if end > len(self._candidates):
            capacity = max(2 * len(self._candidates), end)
            self._candidates = grown(self._candidates[:size], capacity)
            self._votes = grown(self._votes[:size], capacity)
        self._candidates[size:end] = candidates
        self._votes[size:end] = votes
        self._bounds[at] = (size + a, size + b, size + c, end)
        self._codes[at] = model.item_index[item]  # interned by vote_arrays
        self._size = end
        self.items.append(item)
        self.rows[item] = at
        if model._vote_lists.get(item) is not lists:
            self._transient.append(item)
        return at

    def drop(self, item: str) -> None:
        """Forget the item's row (its lists are outgrown); it is made again when read."""
        at = self.rows.pop(item, None)
        if at is not None:
            self._garbage += int(self._bounds[at, 3] - self._bounds[at, 0])

    def start_batch(self) -> None:
        """Drop the rows of uncached lists, and compact when dropped rows take over half."""
        for item in self._transient:
            self.drop(item)
        self._transient.clear()
        garbage, limit = self._garbage, self.compact_after_entries
        if garbage > max(self._size // 2, limit) or len(self.items) > 2 * len(self.rows) + limit:
            self._compact()

    def _compact(self) -> None:
        live = sorted(self.rows.items(), key=lambda row: row[1])
        bounds = self._bounds[[at for _, at in live]].reshape(-1, 4)
        lengths = bounds[:, 3] - bounds[:, 0]
        total = int(lengths.sum())
        starts = np.cumsum(lengths) - lengths
        shift = bounds[:, 0] - starts
        taken = np.repeat(shift, lengths) + np.arange(total)
        capacity = max(2 * total, 1 << 14)
        candidates, votes = self._candidates[taken], self._votes[taken]
        self._candidates = np.zeros(capacity, dtype=np.int64)
        self._votes = np.zeros(capacity, dtype=np.float64)
        self._candidates[:total] = candidates
        self._votes[:total] = votes
        codes = self._codes[[at for _, at in live]]
        self._bounds = np.zeros((max(2 * len(live), 256), 4), dtype=np.int64)
        self._bounds[: len(live)] = bounds - shift[:, None]
        self._codes = np.zeros(len(self._bounds), dtype=np.int64)
        self._codes[: len(live)] = codes
        self.items = [item for item, _ in live]
        self.rows = {item: at for at, (item, _) in enumerate(live)}
        self._size, self._garbage = total, 0

    @property
    def codes(self) -> npt.NDArray[np.int64]:
        """Each row's item as its position in the model's ``item_index`` (a view, valid until
        a row is added)."""
        return self._codes[: len(self.items)]

    def arrays(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Every row's vote bounds (rows x 4: rule, visitor and bridge votes' starts and the
        end) in the candidates and votes, back to back (the kernels' input; views, valid
        until a row is added)."""
        size = self._size
        return self._bounds[: len(self.items)], self._candidates[:size], self._votes[:size]
