from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tastemaker.artifacts import ArtifactError, ArtifactStore


def publish(store: ArtifactStore, name: str, payload: str, watermark: int) -> int:
    def write(d: Path) -> dict[str, Any]:
        (d / "data.txt").write_text(payload)
        return {"rows": {"lines": 1}, "metrics": {"quality": 0.5}}

    parent = store.current_version(name)
    v = store.publish(
        name,
        write,
        parent=parent,
        watermark=watermark,
        data_from_offset=0,
        events_read=watermark,
        min_ts=1.0,
        max_ts=2.0,
    )
    return v.manifest.version


def test_publish_list_and_rollback(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.current("popularity") is None
    assert publish(store, "popularity", "one", 10) == 1
    assert publish(store, "popularity", "two", 20) == 2
    current = store.current("popularity")
    assert current is not None
    assert (current.path / "data.txt").read_text() == "two"
    m = current.manifest
    assert (m.version, m.parent, m.watermark, m.rows, m.metrics) == (
        2,
        1,
        20,
        {"lines": 1},
        {"quality": 0.5},
    )
    assert m.code_version.startswith("0.1.0")
    assert [v.manifest.version for v in store.versions("popularity")] == [1, 2]
    store.rollback("popularity", 1)
    back = store.current("popularity")
    assert back is not None
    assert (back.path / "data.txt").read_text() == "one"
    # The next version builds on the rolled-back one, and numbers on past every kept one.
    assert publish(store, "popularity", "three", 15) == 3
    assert store.current_version("popularity") == 3
    assert store.names() == ["popularity"]


def test_rollback_to_a_missing_version_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish(store, "ranker", "x", 1)
    with pytest.raises(ArtifactError, match="no version 7"):
        store.rollback("ranker", 7)
    assert store.current_version("ranker") == 1


def test_a_failed_build_leaves_no_version_and_the_current_one_serving(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    publish(store, "embeddings", "good", 5)

    def broken(d: Path) -> dict[str, Any]:
        (d / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.publish(
            "embeddings",
            broken,
            parent=1,
            watermark=9,
            data_from_offset=5,
            events_read=4,
            min_ts=None,
            max_ts=None,
        )
    assert [v.manifest.version for v in store.versions("embeddings")] == [1]
    assert store.current_version("embeddings") == 1
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == ["000001", "CURRENT"]


def test_old_versions_are_pruned_but_never_the_current_one(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, keep=2)
    for i in range(4):
        publish(store, "segments", str(i), i + 1)
    assert [v.manifest.version for v in store.versions("segments")] == [3, 4]
    store.rollback("segments", 3)
    publish(store, "segments", "x", 9)
    assert store.current_version("segments") == 5
    assert [v.manifest.version for v in store.versions("segments")] == [4, 5]
