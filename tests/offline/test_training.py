from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import EventType
from tastemaker.offline.training import Label, Replay, point_in_time_features
from tastemaker.ranking import FEATURE_NAMES
from tests.conftest import T0, event


def two_items(catalog: Catalog) -> tuple[str, str]:
    a = 0
    b = next(
        r
        for r in range(1, len(catalog))
        if catalog.brand[r] != catalog.brand[a] and catalog.category[r] != catalog.category[a]
    )
    return str(catalog.ids[a]), str(catalog.ids[b])


def test_a_label_never_sees_the_events_at_or_after_its_time(
    tmp_path: Path, catalog: Catalog
) -> None:
    a, b = two_items(catalog)
    events = [
        event("e1", "u", a, EventType.CLICK, T0),
        event("e2", "u", b, EventType.PURCHASE, T0 + 100),  # at the label's time: the future
        event("e3", "u", b, EventType.CLICK, T0 + 200),
    ]
    labels = [
        Label("u", b, T0 + 100, 1.0),
        Label("u", a, T0 + 100, 0.0),
        Label("u", b, T0 + 300, 1.0),
    ]
    replay = Replay(Config(), catalog, tmp_path / "replay")
    try:
        x = point_in_time_features(replay, events, labels)
    finally:
        replay.close()
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    at_label, later = x[0], x[2]
    # As of T0+100 the user had clicked A only: nothing of B's brand or category shows.
    assert at_label[col["brand_affinity"]] == 0.0
    assert at_label[col["category_affinity"]] == 0.0
    assert at_label[col["user_events"]] == np.float32(math.log1p(1))
    assert x[1][col["brand_affinity"]] == 1.0  # A's brand is all the user has
    # The control: a label after those events sees them, so the test above can fail.
    assert later[col["brand_affinity"]] > 0.0
    assert later[col["user_events"]] == np.float32(math.log1p(3))


def test_labels_come_back_in_their_own_order(tmp_path: Path, catalog: Catalog) -> None:
    a, b = two_items(catalog)
    events = [event(f"e{i}", "u", a, EventType.CLICK, T0 + i) for i in range(5)]
    labels = [Label("u", b, T0 + 10, 0.0), Label("u", a, T0 + 2, 1.0)]
    replay = Replay(Config(), catalog, tmp_path / "replay")
    try:
        x = point_in_time_features(replay, events, labels)
    finally:
        replay.close()
    col = FEATURE_NAMES.index("user_events")
    assert x[:, col].tolist() == [np.float32(math.log1p(5)), np.float32(math.log1p(2))]
