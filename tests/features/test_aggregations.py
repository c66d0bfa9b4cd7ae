from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from tastemaker.events import EventType
from tastemaker.features import (
    Centroid,
    CountByType,
    DecayedIntensity,
    DistinctCount,
    Fact,
    FeatureKind,
    Histogram,
    LastN,
    LastValue,
    Popularity,
    Ratio,
    WindowedCount,
    update_covisitation,
    windowed_counts,
)

T = 1_700_000_000.0


def fact(item: str, etype: EventType = EventType.VIEW, ts: float = T, **kw: object) -> Fact:
    return Fact(ts, etype, item, "s", **kw)  # type: ignore[arg-type]


def test_count_by_type_adds_to_previous_state() -> None:
    agg = CountByType("counts")
    state = agg.apply(None, [fact("a"), fact("b", EventType.CLICK), fact("a")])
    assert state == {"view": 2, "click": 1}
    assert agg.apply(state, [fact("c", EventType.CLICK)]) == {"view": 2, "click": 2}
    assert state == {"view": 2, "click": 1}  # pure: the old state is untouched


def test_decayed_intensity_halves_after_a_half_life() -> None:
    agg = DecayedIntensity("ci", field="category", half_life_s=100.0)
    s1 = agg.apply(None, [fact("a", ts=T, category="shoes")])
    assert s1 == {"t": T, "v": {"shoes": 1.0}}
    s2 = agg.apply(s1, [fact("b", EventType.PURCHASE, ts=T + 100, category="hats")])
    assert s2["t"] == T + 100
    assert s2["v"]["shoes"] == pytest.approx(0.5)
    assert s2["v"]["hats"] == pytest.approx(8.0)


def test_decayed_intensity_counts_late_events_decayed() -> None:
    agg = DecayedIntensity("ci", field="category", half_life_s=100.0)
    state = agg.apply(None, [fact("a", ts=T + 100, category="x")])
    late = agg.apply(state, [fact("b", ts=T, category="x")])
    assert late["t"] == T + 100
    assert late["v"]["x"] == pytest.approx(1.5)


def test_decayed_intensity_ignores_unknown_items_and_zero_weights() -> None:
    agg = DecayedIntensity("ci", field="category")
    assert agg.apply(None, [fact("a"), fact("b", EventType.IMPRESSION, category="x")]) is None


def test_last_n_keeps_distinct_most_recent_first() -> None:
    agg = LastN("last", n=3)
    state = agg.apply(None, [fact("a"), fact("b"), fact("a"), fact("c"), fact("d")])
    assert state == ["d", "c", "a"]
    assert agg.apply(state, [fact("x", EventType.IMPRESSION)]) is state


def test_last_value_takes_the_latest_matching_event() -> None:
    agg = LastValue("lb", field="brand", types=[EventType.CLICK])
    facts = [fact("a", EventType.CLICK, brand="acme"), fact("b", EventType.VIEW, brand="zeta")]
    assert agg.apply("old", facts) == "acme"
    assert agg.apply("old", [fact("b", EventType.VIEW, brand="zeta")]) == "old"


def test_facts_that_change_nothing_give_back_the_very_state() -> None:
    """The stream writes a new cell only for a state that is a new object: repeating what a
    state already says must give the old object back."""
    last = LastN("last", n=3)
    state = last.apply(None, [fact("a"), fact("b"), fact("c")])
    assert state == ["c", "b", "a"]
    assert last.apply(state, [fact("c")]) is state
    assert last.apply(state, [fact("b"), fact("c")]) is state  # newest first: c, b
    assert last.apply(state, [fact("c"), fact("b")]) == ["b", "c", "a"]
    assert last.apply(state, [fact("a")]) == ["a", "c", "b"]
    brand = LastValue("lb", field="brand", types=[EventType.CLICK])
    old = "".join(["ac", "me"])  # equal to, not the same object as, the facts' value
    assert brand.apply(old, [fact("a", EventType.CLICK, brand="acme")]) is old
    assert brand.apply(old, [fact("a", EventType.CLICK, brand="zeta")]) == "zeta"
    centroid = Centroid("c", alpha=1.0)  # the newest embedding is the average
    e = np.array([0.5, -0.25], dtype=np.float32)
    state = centroid.apply(None, [fact("a", EventType.CLICK, embedding=e)])
    assert centroid.apply(state, [fact("a", EventType.CLICK, embedding=e)]) is state
    assert centroid.apply(state, [fact("b", EventType.CLICK, embedding=-e)]) == [-0.5, 0.25]


def test_histogram_bins_prices_into_bands() -> None:
    agg = Histogram("ph", edges=[10.0, 100.0])
    state = agg.apply(None, [fact("a", price=5.0), fact("b", price=10.0), fact("c", price=500.0)])
    assert state == [1, 1, 1]
    assert agg.apply(state, [fact("d", price=50.0)]) == [1, 2, 1]


def test_centroid_is_an_exponential_moving_average() -> None:
    agg = Centroid("c", alpha=0.5, types=[EventType.CLICK])
    e1 = np.array([1.0, 0.0], np.float32)
    e2 = np.array([0.0, 1.0], np.float32)
    state = agg.apply(None, [fact("a", EventType.CLICK, embedding=e1)])
    assert state == [1.0, 0.0]
    state = agg.apply(
        state, [fact("b", EventType.CLICK, embedding=e2), fact("c", EventType.VIEW, embedding=e1)]
    )
    assert state == [0.5, 0.5]


def test_popularity_top_is_ordered_and_decays_old_events() -> None:
    pop = Popularity(4, half_life_s=100.0)
    pop.add(np.array([0, 1, 1, 2, -1]), np.array([T, T, T, T + 1000, T]), np.ones(5))
    # item 2 had one event 10 half-lives later than two events of item 1: it is more popular.
    assert pop.top(3).tolist() == [2, 1, 0]
    assert pop.top(1).tolist() == [2]
    assert pop.top(5, among=np.array([0, 1, 3])).tolist() == [1, 0]
    ratio = math.exp(pop.log_score[1] - pop.log_score[0])
    assert ratio == pytest.approx(2.0)


def test_covisitation_keeps_strongest_links() -> None:
    links = update_covisitation({"a": 1.0}, [("b", 2.0), ("a", 0.5), ("c", 0.1)], 2)
    assert links == {"b": 2.0, "a": 1.5}


def test_covisitation_ties_at_the_cut_do_not_depend_on_arrival_order() -> None:
    increments = [("d", 1.0), ("b", 1.0), ("c", 1.0), ("a", 2.0)]
    first = update_covisitation(None, increments, 2)
    assert first == {"a": 2.0, "b": 1.0}
    assert update_covisitation(None, reversed(increments), 2) == first


def test_covisitation_keeps_the_strongest_links_ties_by_id_as_a_full_sort_does() -> None:
    """Against sorting every link by (weight descending, id): small integer weights give
    many ties at the cut, at every place in the order (first, last, all of them)."""
    rng = np.random.default_rng(5)
    for trial in range(2_000):
        size = int(rng.integers(0, 40))
        top = 1 + trial % 4  # weights in 1..top: the fewer values, the more ties
        state = {f"i{int(k)}": float(rng.integers(1, top + 1)) for k in rng.integers(0, 60, size)}
        increments = [
            (f"i{int(k)}", float(rng.integers(1, top + 1)))
            for k in rng.integers(0, 60, int(rng.integers(0, 15)))
        ]
        keep = int(rng.integers(1, 30))
        links = dict(state)
        for other, weight in increments:
            links[other] = links.get(other, 0.0) + weight
        ranked = sorted(links.items(), key=lambda kv: (-kv[1], kv[0]))[:keep]
        assert update_covisitation(state, increments, keep) == dict(ranked)


def _facts(*spec: tuple[float, str, str | None]) -> list[Fact]:
    return [
        Fact(ts, EventType(t), f"i-{k}", "s", category=cat) for k, (ts, t, cat) in enumerate(spec)
    ]


def test_windowed_counts_slide_and_drop_old_buckets() -> None:
    agg = WindowedCount("activity", windows_s=[3600.0, 86400.0], bucket_s=600.0)
    t0 = 1_760_000_400.0  # a bucket boundary
    s1 = agg.apply(
        None, _facts((t0, "click", "a"), (t0 + 100, "view", "a"), (t0, "impression", "a"))
    )
    assert s1["counts"] == {"3600": 2, "86400": 2}
    s2 = agg.apply(s1, _facts((t0 + 7200, "click", "b")))
    assert s2["counts"] == {"3600": 1, "86400": 3}
    s3 = agg.apply(s2, _facts((t0 + 2 * 86400, "click", "b")))
    assert s3["counts"] == {"3600": 1, "86400": 1}
    assert len(s3["buckets"]) == 1  # older buckets dropped
    assert windowed_counts(s2, t0 + 86400 + 700, [3600.0, 86400.0], 600.0) == {
        "3600": 0,
        "86400": 1,
    }
    assert agg.apply(s3, _facts((t0, "impression", "a"))) is s3  # nothing of its types


def test_ratio_is_a_smoothed_ctr() -> None:
    agg = Ratio("ctr", prior_num=1.0, prior_den=20.0)
    s = agg.apply(None, _facts(*[(1e9 + i, "impression", None) for i in range(30)]))
    assert s == {"num": 0, "den": 30, "value": 0.02}
    s = agg.apply(s, _facts((1e9 + 50, "click", None), (1e9 + 51, "click", None)))
    assert s == {"num": 2, "den": 30, "value": 0.06}
    assert agg.apply(s, _facts((1e9 + 60, "view", None))) is s


def test_distinct_count_is_exact_up_to_its_cap() -> None:
    agg = DistinctCount("cats", field="category", max_values=2)
    s = agg.apply(None, _facts((1.0, "view", "a"), (2.0, "click", "a"), (3.0, "view", "b")))
    assert s == {"n": 2, "seen": ["a", "b"]}
    s = agg.apply(s, _facts((4.0, "view", "c"), (5.0, "impression", "d"), (6.0, "view", None)))
    assert s["n"] == 3
    assert s["seen"] == ["a", "b"]
    assert agg.apply(s, _facts((7.0, "view", "a"))) is s


def test_the_new_kinds_are_declared_in_toml() -> None:
    toml = b"""
[[features]]
kind = "windowed_count"
name = "w"
windows_s = [60.0]
[[features]]
kind = "ratio"
name = "r"
numerator = ["purchase"]
denominator = ["view"]
[[features]]
kind = "distinct_count"
name = "d"
field = "brand"
"""
    decoded = msgspec.toml.decode(toml, type=dict[str, list[FeatureKind]])["features"]
    assert [type(f) for f in decoded] == [WindowedCount, Ratio, DistinctCount]
    ratio = decoded[1]
    assert isinstance(ratio, Ratio)
    assert ratio.numerator == [EventType.PURCHASE]
