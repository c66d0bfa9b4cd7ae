"""Co-visitation: which items a session engaged with together, as pairs of catalog rows.

A batch's pairs (`covisit_pairs`, numpy over the whole batch) wait in store slots
(`pack_pairs`) until they are merged into the items' neighbour maps (`ItemStats`); a
partition holds the maps it last wrote (`HeldMaps`) so a hot item's map is not read again
every batch."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from tastemaker.store import Cell

__all__ = [
    "NO_PAIRS",
    "HeldMaps",
    "Pairs",
    "both_ways",
    "covisit_pairs",
    "joined",
    "pack_pairs",
    "summed",
    "unpack_pairs",
]


class Pairs(NamedTuple):
    """Co-visitation pairs of a batch as catalog rows: `src` co-visited with `dst`. Waiting
    pairs hold each link once, `src` < `dst`; `both_ways` gives the links of each item."""

    src: npt.NDArray[np.int64]
    dst: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]


NO_PAIRS = Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


def pack_pairs(pairs: Pairs, ids: npt.NDArray[Any]) -> list[Any]:
    """Co-visitation pairs as a slot stores them: the items' ids (catalog rows can change
    between runs, with the catalog file) and, as little-endian bytes, each pair's two
    indexes into them and its weight."""
    both = np.concatenate([pairs.src, pairs.dst])
    # The items' positions among them by a mark per catalog row, not `np.unique`'s sort
    # (that sort was a visible share of a drain).
    mark = np.zeros(ids.size, dtype=np.bool_)
    mark[both] = True
    index = (np.cumsum(mark) - 1)[both]
    k = pairs.src.size
    return [
        ids[mark].tolist(),
        index[:k].astype("<u4").tobytes(),
        index[k:].astype("<u4").tobytes(),
        pairs.weights.astype("<f8").tobytes(),
    ]


def unpack_pairs(value: list[Any], index: Mapping[str, int]) -> Pairs:
    """`pack_pairs`'s inverse on the catalog of this run, each pair as its lower row first
    (the order of two items' rows can differ between catalog files): pairs with an item it
    does not hold any more are dropped."""
    ids, src_bytes, dst_bytes, weights = value
    src, dst = np.frombuffer(src_bytes, "<u4"), np.frombuffer(dst_bytes, "<u4")
    rows = np.fromiter((index.get(i, -1) for i in ids), np.int64, len(ids))
    a, b = rows[src], rows[dst]
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    return Pairs(np.minimum(a, b), np.maximum(a, b), np.frombuffer(weights, "<f8")[keep].copy())


def joined(parts: Sequence[Pairs]) -> Pairs:
    """Pairs of several batches as one."""
    return Pairs(
        np.concatenate([p.src for p in parts]),
        np.concatenate([p.dst for p in parts]),
        np.concatenate([p.weights for p in parts]),
    )


def summed(pairs: Pairs, n_items: int) -> Pairs:
    """The pairs summed per (item, other), in that order. Weights are small integers, so
    the sums are exact whatever the order they are added in."""
    if not pairs.src.size:
        return NO_PAIRS
    keys = pairs.src * n_items + pairs.dst
    order = np.argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    src, dst = np.divmod(keys[starts], n_items)
    return Pairs(src, dst, np.add.reduceat(pairs.weights[order], starts))


def both_ways(pairs: Pairs, n_items: int) -> Pairs:
    """Pairs held one way (the lower row first, `covisit_pairs`) as links both ways, in
    (item, other) order, as `ItemStats` takes them."""
    src = np.concatenate([pairs.src, pairs.dst])
    dst = np.concatenate([pairs.dst, pairs.src])
    order = np.argsort(src * n_items + dst)
    return Pairs(src[order], dst[order], np.concatenate([pairs.weights, pairs.weights])[order])


def covisit_pairs(
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    session: npt.NDArray[np.int64],
    priors: Mapping[int, list[int]],
    window: int,
) -> Pairs:
    """Each engaged fact (`rows` >= 0: catalog rows, facts in time order within each user) is
    linked, with its weight, to the `window` distinct items its session engaged with last
    before it (a session that goes on starts from its stored items, `priors`: oldest first).
    The fact's own item counts among those `window` but is not linked to itself. Each link
    is one pair, its lower row first (`src` < `dst`); links go both ways (`both_ways`).

    With numpy over the whole batch: the sessions' items laid out one session after another,
    each fact looks back one step at a time, all facts at once; an item counts when it is
    its last engagement before the fact (its next one in the session is at the fact or
    after), and a fact stops looking once it has found `window` items or its session's start."""
    facts = np.flatnonzero(rows >= 0)
    codes = [code for code, items in priors.items() for _ in items]
    seq_session = np.concatenate([np.asarray(codes, np.int64), session[facts]])
    seq_rows = np.concatenate(
        [np.asarray([r for items in priors.values() for r in items], np.int64), rows[facts]]
    )
    seq_weights = np.concatenate([np.zeros(len(codes)), weights[facts]])
    # A session's stored items first (in their order), then its facts in time order.
    layout = np.lexsort((np.arange(seq_rows.size), seq_session))
    seq_session, seq_rows, seq_weights = seq_session[layout], seq_rows[layout], seq_weights[layout]
    n = seq_rows.size
    # Where each item is engaged next in its session (n: never again).
    by_item = np.lexsort((np.arange(n), seq_rows, seq_session))
    sorted_sessions, sorted_rows = seq_session[by_item], seq_rows[by_item]
    again = (sorted_sessions[1:] == sorted_sessions[:-1]) & (sorted_rows[1:] == sorted_rows[:-1])
    following = np.full(n, n, dtype=np.int64)
    following[by_item[:-1][again]] = by_item[1:][again]
    looking = np.flatnonzero(layout >= len(codes))  # the facts, not the stored items
    found = np.zeros(looking.size, dtype=np.int64)
    fact_parts: list[npt.NDArray[np.int64]] = []
    other_parts: list[npt.NDArray[np.int64]] = []
    back = 1
    while looking.size:
        earlier = looking - back
        inside = earlier >= 0
        inside[inside] = seq_session[earlier[inside]] == seq_session[looking[inside]]
        looking, earlier, found = looking[inside], earlier[inside], found[inside]
        counts = following[earlier] >= looking  # its last engagement before the fact
        link = counts & (seq_rows[earlier] != seq_rows[looking])
        fact_parts.append(looking[link])
        other_parts.append(earlier[link])
        found += counts
        more = found < window
        looking, found = looking[more], found[more]
        back += 1
    fact_at = np.concatenate(fact_parts) if fact_parts else np.zeros(0, np.int64)
    other_at = np.concatenate(other_parts) if other_parts else np.zeros(0, np.int64)
    item, other = seq_rows[fact_at], seq_rows[other_at]
    # Each link once, its lower row first: links go both ways, and half as many pairs are
    # cheaper to sort and pack while they wait. `both_ways` makes them links both ways at
    # the merge.
    return Pairs(np.minimum(item, other), np.maximum(item, other), seq_weights[fact_at])


class HeldMaps:
    """The partition's own co-visitation cells (its column of an item's neighbour map) as it
    last wrote them, kept between batches: at most `limit`, the least recently written
    dropped first (a full map is ~5.7 KB). Only this partition's stream writes that column,
    so what it holds is what the store holds, or what the write in flight will store; the
    whole shard is dropped when the partition is rewound or given away. A cell held longer
    than the family's TTL is read again: the store may have expired it.

    Why: the maps of hot items were read and decoded again every batch (on Redis, with the
    other partitions' maps of the item beside them)."""

    __slots__ = ("_cells", "_limit", "_ttl_s")

    def __init__(self, limit: int, ttl_s: float) -> None:
        self._limit = limit
        self._ttl_s = ttl_s
        self._cells: dict[str, tuple[Cell, float]] = {}

    def fresh(self, keys: Iterable[str]) -> dict[str, Cell | None]:
        """The cells held for those of `keys` held less than the TTL ago (typed so that a
        caller adds the stored cells of the others, None where there is none)."""
        since = time.time() - self._ttl_s
        held = self._cells
        return {k: h[0] for k in keys if (h := held.get(k)) is not None and h[1] > since}

    def hold(self, cells: Mapping[str, Cell]) -> None:
        """Hold `cells` as just written, then drop the least recently written past the
        limit."""
        if not self._limit:
            return
        now = time.time()
        held = self._cells
        for key, cell in cells.items():
            held.pop(key, None)  # to the most recent end
            held[key] = (cell, now)
        if (over := len(held) - self._limit) > 0:
            for key in list(itertools.islice(held, over)):
                del held[key]

    def __len__(self) -> int:
        return len(self._cells)
