"""The kinds of declared features. Each is a frozen msgspec Struct, so a feature set can be
declared in the TOML config and decoded straight into these classes.

States are plain JSON-able values so every backend stores them and the features endpoint
shows them as they are.

Each kind computes its update for all users of a microbatch at once (`apply_batch`): the
per-fact work (masks, weights, decays, group sums per user and key) is numpy over the whole
batch; what is left per user is building its new state from the sums.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.events import EventType
from tastemaker.features.base import TYPES, Fact, FactBatch, type_table

__all__ = [
    "Centroid",
    "CountByType",
    "DecayedIntensity",
    "DistinctCount",
    "FeatureKind",
    "Histogram",
    "LastN",
    "LastValue",
    "Ratio",
    "WindowedCount",
    "windowed_counts",
]

Field = Literal["category", "brand", "item_id"]

# How much each kind of interaction says about taste. Impressions and searches say nothing
# about the item itself; a dislike pushes away.
DEFAULT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
    "like": 4.0,
    "rate": 3.0,
    "dislike": -4.0,
    "remove_from_cart": -1.0,
}
ENGAGED: list[EventType] = [
    EventType.VIEW,
    EventType.CLICK,
    EventType.ADD_TO_CART,
    EventType.PURCHASE,
    EventType.LIKE,
    EventType.RATE,
]
_TYPE_NAMES = [str(t.value) for t in TYPES]

IntArray = npt.NDArray[np.int64]


def _runs(users: IntArray) -> list[tuple[int, int, int]]:
    """(user, start, end) of each run of equal values in `users` (sorted or grouped)."""
    if users.size == 0:
        return []
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    lo = np.concatenate([[0], cuts])
    hi = np.concatenate([cuts, [users.size]])
    return list(zip(users[lo].tolist(), lo.tolist(), hi.tolist(), strict=True))


def _pairs(users: IntArray, codes: IntArray, n_codes: int) -> tuple[IntArray, IntArray]:
    """The distinct (user, code) pairs, sorted by user then code, and for each fact the
    index of its pair."""
    uniq, inverse = np.unique(users * max(n_codes, 1) + codes, return_inverse=True)
    return uniq, inverse.reshape(-1)


def _keyed(
    batch: FactBatch, field: Field, types: Sequence[EventType]
) -> tuple[IntArray, list[str], IntArray]:
    """`field`'s codes and vocabulary, and the facts of `types` that have a value of it."""
    codes, vocab = batch.keys[field]
    return codes, vocab, np.flatnonzero(type_table(types)[batch.type] & (codes >= 0))


def _once_per_value(batch: FactBatch, facts: IntArray, codes: IntArray, n: int) -> IntArray:
    """The first of `facts` (in their order) for each (user, value), in that order."""
    _, first = np.unique(batch.user[facts] * n + codes[facts], return_index=True)
    kept: IntArray = facts[np.sort(first)]
    return kept


def _take(vocab: list[str], codes: IntArray) -> list[str]:
    """`[vocab[c] for c in codes]`, the lookups done in C."""
    if codes.size == 0:
        return []
    got = operator.itemgetter(*codes.tolist())(vocab)
    return [got] if codes.size == 1 else list(got)


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    name: str
    family: str = "profile"

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        """New state from the previous one (None at first) and one user's new facts."""
        return self.apply_batch([state], FactBatch.from_users([facts]))[0]

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        raise NotImplementedError


class CountByType(_Base, frozen=True, tag="count_by_type"):
    """Number of events of each type: `{"view": 12, "click": 3}`."""

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        n = len(TYPES)
        counts = np.bincount(batch.user * n + batch.type, minlength=batch.n_users * n)
        out = list(states)
        pairs = np.flatnonzero(counts)
        for user, code, count in zip(
            (pairs // n).tolist(), (pairs % n).tolist(), counts[pairs].tolist(), strict=True
        ):
            if out[user] is states[user]:
                out[user] = dict(states[user] or {})
            key = _TYPE_NAMES[code]
            out[user][key] = out[user].get(key, 0) + count
        return out


class DecayedIntensity(_Base, frozen=True, tag="decayed"):
    """Exponentially decayed, weighted interest per value of `field`:
    `{"t": ref_ts, "v": {"shoes": 7.5}}`; each score is as of time `t`, the newest event
    (or the stored `t`, whichever is later: late events simply weigh less)."""

    field: Field = "category"
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = 7 * 86400.0
    weights: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    max_keys: int = 50

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        rate = math.log(2) / self.half_life_s
        codes, vocab = batch.keys[self.field]
        weight = np.array([self.weights.get(t, 0.0) for t in _TYPE_NAMES])[batch.type]
        picked = np.flatnonzero((codes >= 0) & (weight != 0.0))
        out = list(states)
        if picked.size == 0:
            return out
        users, ts = batch.user[picked], batch.ts[picked]
        old_t = np.array([float(s["t"]) if s else -np.inf for s in states])
        ref = old_t.copy()
        np.maximum.at(ref, users, ts)
        # Every score decayed to the user's reference time: a new fact's weight by its age
        # there (never above 1, so no overflow however far apart the events are), the stored
        # scores by the time since their own reference.
        contribution = weight[picked] * np.exp(-rate * (ref[users] - ts))
        pairs, inverse = _pairs(users, codes[picked], len(vocab))
        sums = np.bincount(inverse, weights=contribution).tolist()
        keys = _take(vocab, pairs % max(len(vocab), 1))
        with np.errstate(invalid="ignore"):  # -inf - -inf for users without a stored state
            old_decay = np.exp(-rate * (ref - old_t)).tolist()
        refs = ref.tolist()
        for user, lo, hi in _runs(pairs // max(len(vocab), 1)):
            state = states[user]
            if state:
                decay = old_decay[user]
                values = {k: v * decay for k, v in state["v"].items()}
            else:
                values = {}
            for key, add in zip(keys[lo:hi], sums[lo:hi], strict=True):
                values[key] = values.get(key, 0.0) + add
            if len(values) > self.max_keys:
                values = dict(sorted(values.items(), key=lambda kv: -kv[1])[: self.max_keys])
            out[user] = {"t": refs[user], "v": values}
        return out


class LastN(_Base, frozen=True, tag="last_n"):
    """The last `n` distinct values of `field` (most recent first) among events of `types`."""

    field: Field = "item_id"
    n: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        codes, vocab, picked = _keyed(batch, self.field, self.types)
        out = list(states)
        if picked.size == 0:
            return out
        # Newest first: each (user, value) at its latest fact, users in descending order.
        latest = _once_per_value(batch, picked[::-1], codes, len(vocab))
        values = _take(vocab, codes[latest])
        n = self.n
        for user, lo, hi in _runs(batch.user[latest]):
            items = values[lo : min(hi, lo + n)]
            old = states[user]
            if old and old[: len(items)] == items:
                continue  # already the most recent, in this order: unchanged, the same object
            if old and len(items) < n:
                new = set(items)
                items += [x for x in old if x not in new]
                del items[n:]
            out[user] = items
        return out


class LastValue(_Base, frozen=True, tag="last_value"):
    """The value of `field` on the latest event of `types` (e.g. last clicked brand)."""

    field: Field = "brand"
    types: list[EventType] = msgspec.field(default_factory=lambda: [EventType.CLICK])

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        codes, vocab, picked = _keyed(batch, self.field, self.types)
        out = list(states)
        last = np.full(batch.n_users, -1, dtype=np.int64)
        np.maximum.at(last, batch.user[picked], picked)
        for user in np.flatnonzero(last >= 0).tolist():
            value = vocab[int(codes[last[user]])]
            if value != states[user]:  # the same value keeps its object: unchanged
                out[user] = value
        return out


class Histogram(_Base, frozen=True, tag="histogram"):
    """Counts of item prices per band; `edges` are the inner band bounds, so there are
    `len(edges) + 1` bands."""

    edges: list[float] = msgspec.field(default_factory=lambda: [10.0, 25, 50, 100, 250, 500])
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        picked = type_table(self.types)[batch.type] & ~np.isnan(batch.price)
        bands = len(self.edges) + 1
        band = np.searchsorted(self.edges, batch.price[picked], side="right")
        counts = np.bincount(
            batch.user[picked] * bands + band, minlength=batch.n_users * bands
        ).reshape(batch.n_users, bands)
        out = list(states)
        changed = np.flatnonzero(counts.any(axis=1))
        for user, added in zip(changed.tolist(), counts[changed].tolist(), strict=True):
            old = states[user] or [0] * bands
            out[user] = [int(a) + b for a, b in zip(old, added, strict=True)]
        return out


class Centroid(_Base, frozen=True, tag="centroid"):
    """Exponential moving average of the embeddings of items in events of `types`:
    the user's short-term taste vector (the `EmbClickSim` feature dots candidates with it).
    The first embedding a user has starts the average."""

    alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    types: list[EventType] = msgspec.field(
        default_factory=lambda: [
            EventType.CLICK,
            EventType.ADD_TO_CART,
            EventType.PURCHASE,
            EventType.LIKE,
            EventType.RATE,
        ]
    )

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        rows = batch.embedding_rows
        picked = np.flatnonzero(type_table(self.types)[batch.type] & (rows >= 0))
        out = list(states)
        if picked.size == 0:
            return out
        # The EMA unrolled: after m embeddings e_1..e_m the average is
        # (1-a)^m * old + sum_j a (1-a)^(m-j) e_j, and with no old state e_1 weighs
        # (1-a)^(m-1) instead (it starts the average).
        a = self.alpha
        users = batch.user[picked]
        runs = _runs(users)
        run_users = np.array([u for u, _, _ in runs], dtype=np.int64)
        run_lo = np.array([lo for _, lo, _ in runs], dtype=np.int64)
        run_len = np.array([hi - lo for _, lo, hi in runs], dtype=np.int64)
        slot = np.searchsorted(run_users, users)
        age = (run_lo[slot] + run_len[slot] - 1) - np.arange(picked.size)  # 0 for the newest
        weight = a * (1.0 - a) ** age.astype(np.float64)
        fresh = np.array([states[u] is None for u in run_users.tolist()], dtype=np.bool_)
        firsts = run_lo[fresh]
        weight[firsts] = (1.0 - a) ** (run_len[fresh] - 1).astype(np.float64)
        vectors = batch.embeddings[rows[picked]].astype(np.float64) * weight[:, None]
        sums = np.add.reduceat(vectors, run_lo, axis=0)
        keep = (1.0 - a) ** run_len.astype(np.float64)
        held = ~fresh
        if held.any():  # all users at once: one array op each instead of three a user
            olds = np.asarray([states[u] for u in run_users[held].tolist()], dtype=np.float64)
            sums[held] += keep[held, None] * olds
        for user, vec in zip(run_users.tolist(), np.round(sums, 6).tolist(), strict=True):
            if vec != states[user]:  # rounded to where it was (the same items again): unchanged
                out[user] = vec
        return out


class WindowedCount(_Base, frozen=True, tag="windowed_count"):
    """Events of `types` in sliding windows, counted in `bucket_s` buckets:
    `{"t": newest_ts, "buckets": {"<bucket start>": n}, "counts": {"3600": n, ...}}`.
    `counts` holds each window's count as of `t`; `windowed_counts(state, now)` recounts
    from the buckets for any later time. Buckets older than the longest window are dropped,
    so the state stays small; a window is exact to one bucket."""

    windows_s: list[Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(
        default_factory=lambda: [3600.0, 86400.0, 7 * 86400.0]
    )
    bucket_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        picked = np.flatnonzero(type_table(self.types)[batch.type])
        out = list(states)
        if picked.size == 0:
            return out
        # All the batch's users at once: their stored buckets and the new ones as one table
        # of (user, bucket start, count), summed per (user, start), cut at the longest window
        # and counted per window with numpy; what is left per user is building its dicts
        # (a user's buckets in the order of their starts). Bucket by bucket in Python, this
        # is the costliest declared feature of a late stream batch, whose users have many.
        users, ts = batch.user[picked], batch.ts[picked]
        touched = np.unique(users)  # sorted: the new state's users, in order
        slot = np.searchsorted(touched, users)
        newest = np.full(touched.size, -np.inf)
        np.maximum.at(newest, slot, ts)
        held, old_t, old_owner, old_starts, old_counts = _stored_buckets(
            [states[u] for u in touched.tolist()]
        )
        np.maximum.at(newest, held, old_t)
        owner = np.concatenate([old_owner, slot])
        # A bucket is named by its start's integer part, and counted from that name.
        new_starts = np.trunc(np.floor(ts / self.bucket_s) * self.bucket_s)
        start = np.concatenate([old_starts, new_starts])
        count = np.concatenate([old_counts, np.ones(picked.size, dtype=np.int64)])
        # One entry per (user, start), in start order within each user.
        order = np.lexsort((start, owner))
        owner, start, count = owner[order], start[order], count[order]
        first = np.ones(owner.size, dtype=np.bool_)
        first[1:] = (owner[1:] != owner[:-1]) | (start[1:] != start[:-1])
        group = np.cumsum(first) - 1
        owner, start = owner[first], start[first]
        count = np.bincount(group, weights=count).astype(np.int64)
        t = newest[owner]
        kept = start > t - (max(self.windows_s) + self.bucket_s)
        owner, start, count, t = owner[kept], start[kept], count[kept], t[kept]
        in_window = [_in_window(start, t, w, self.bucket_s) for w in self.windows_s]
        sums = [
            np.bincount(owner, weights=count * m, minlength=touched.size).astype(np.int64).tolist()
            for m in in_window
        ]
        names = [str(int(w)) for w in self.windows_s]
        keys = list(map(str, start.astype(np.int64).tolist()))
        values = count.tolist()
        bounds = np.searchsorted(owner, np.arange(touched.size + 1)).tolist()
        times = newest.tolist()
        for i, user in enumerate(touched.tolist()):
            lo, hi = bounds[i], bounds[i + 1]
            out[user] = {
                "t": times[i],
                "buckets": dict(zip(keys[lo:hi], values[lo:hi], strict=True)),
                "counts": dict(zip(names, [c[i] for c in sums], strict=True)),
            }
        return out


def _stored_buckets(
    olds: Sequence[Any],
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
]:
    """The stored windowed-count states as columns: the positions of those that hold one,
    their times, and every stored bucket's owner (a position), start and count."""
    held = [u for u, state in enumerate(olds) if state]
    old_t = np.fromiter((float(olds[u]["t"]) for u in held), np.float64, len(held))
    old_buckets = [olds[u]["buckets"] for u in held]
    lengths = np.fromiter(map(len, old_buckets), np.int64, len(held))
    starts = np.fromiter(
        map(float, itertools.chain.from_iterable(old_buckets)), np.float64, int(lengths.sum())
    )
    counts = np.fromiter(
        itertools.chain.from_iterable(b.values() for b in old_buckets), np.int64, starts.size
    )
    positions = np.asarray(held, dtype=np.int64)
    return positions, old_t, np.repeat(positions, lengths), starts, counts


def windowed_counts(
    state: Any, now: float, windows_s: Sequence[float], bucket_s: float
) -> dict[str, int]:
    """Each window's count at `now` from a `WindowedCount` state: the buckets that end after
    `now - window`."""
    if not state:
        return {str(int(w)): 0 for w in windows_s}
    return _window_sums(
        [(float(k), k, v) for k, v in state["buckets"].items()], now, windows_s, bucket_s
    )


def _window_sums(
    buckets: list[tuple[float, str, int]], now: float, windows_s: Sequence[float], bucket_s: float
) -> dict[str, int]:
    """`windowed_counts` over buckets already parsed: (start, key, count)."""
    return {
        str(int(w)): sum(v for s, _, v in buckets if _in_window(s, now, w, bucket_s))
        for w in windows_s
    }


def _in_window(start: Any, now: Any, window: float, bucket_s: float) -> Any:
    """Whether buckets starting at `start` count in the window of `window` seconds ending at
    `now`: they end after its start and begin no later than `now`. Floats or numpy arrays."""
    return (start + bucket_s > now - window) & (start <= now)


class Ratio(_Base, frozen=True, tag="ratio"):
    """A smoothed rate of two counts, e.g. CTR = clicks / impressions:
    `{"num": n, "den": d, "value": (n + prior_num) / (d + prior_den)}`. The prior keeps a new
    user's rate near `prior_num / prior_den` instead of 0/0 or 1/1."""

    numerator: list[EventType] = msgspec.field(default_factory=lambda: [EventType.CLICK])
    denominator: list[EventType] = msgspec.field(default_factory=lambda: [EventType.IMPRESSION])
    prior_num: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    prior_den: Annotated[float, msgspec.Meta(gt=0)] = 20.0

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        n_users = batch.n_users
        num = np.bincount(batch.user[type_table(self.numerator)[batch.type]], minlength=n_users)
        den = np.bincount(batch.user[type_table(self.denominator)[batch.type]], minlength=n_users)
        out = list(states)
        changed = np.flatnonzero((num > 0) | (den > 0))
        for user, dn, dd in zip(
            changed.tolist(), num[changed].tolist(), den[changed].tolist(), strict=True
        ):
            state = states[user]
            n = (state["num"] if state else 0) + dn
            d = (state["den"] if state else 0) + dd
            value = (n + self.prior_num) / (d + self.prior_den)
            out[user] = {"num": n, "den": d, "value": round(value, 6)}
        return out


class DistinctCount(_Base, frozen=True, tag="distinct_count"):
    """How many distinct values of `field` the user engaged with (events of `types`):
    `{"n": count, "seen": [values]}`. Exact up to `max_values` tracked values; past that
    each batch's new values not tracked are counted (once a batch), so the count is an upper
    bound."""

    field: Field = "category"
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))
    max_values: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        codes, vocab, picked = _keyed(batch, self.field, self.types)
        out = list(states)
        if picked.size == 0:
            return out
        # Each (user, value) once, at its first fact, in the order of those first facts.
        firsts = _once_per_value(batch, picked, codes, len(vocab))
        values = _take(vocab, codes[firsts])
        for user, lo, hi in _runs(batch.user[firsts]):
            state = states[user]
            seen: list[str] = list(state["seen"]) if state else []
            known = set(seen)
            n = int(state["n"]) if state else 0
            changed = False
            for key in values[lo:hi]:
                if key in known:
                    continue
                n += 1
                changed = True
                if len(seen) < self.max_values:
                    seen.append(key)
                    known.add(key)
            if changed:
                out[user] = {"n": n, "seen": seen}
        return out


FeatureKind = (
    CountByType
    | DecayedIntensity
    | LastN
    | LastValue
    | Histogram
    | Centroid
    | WindowedCount
    | Ratio
    | DistinctCount
)
