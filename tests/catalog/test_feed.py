"""The catalog change feed, on every backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tastemaker.catalog import CatalogError, CatalogFeed, ItemChange, open_feed


@pytest.fixture(params=["embedded", "redis", "redis_cluster"])
def feed_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield f"embedded://{tmp_path}/feed"
        return
    base = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    yield f"{base}?prefix=feed-{uuid.uuid4().hex[:8]}:"


def change(i: int) -> ItemChange:
    return ItemChange(
        item_id=f"i{i}", category="c", brand="b", price=float(i), embedding=[1.0, 0.0]
    )


def test_changes_come_back_in_order_to_every_reader(feed_url: str) -> None:
    writer: CatalogFeed = open_feed(feed_url)
    reader: CatalogFeed = open_feed(feed_url)  # another process, as far as the feed knows
    try:
        assert reader.read(0) == []
        first = writer.append([change(1), change(2)])
        last = writer.append([ItemChange(item_id="i1", deleted=True), change(3)])
        assert last > first
        got = reader.read(0)
        assert [c for _, c, _ in got] == [
            change(1),
            change(2),
            ItemChange(item_id="i1", deleted=True),
            change(3),
        ]
        positions = [p for p, _, _ in got]
        assert positions == sorted(positions)
        assert positions[1] == first
        assert positions[-1] == last
        assert [c.item_id for _, c, _ in reader.read(first)] == ["i1", "i3"]
        assert reader.read(last) == []
        assert all(ts > 0 for _, _, ts in got)
    finally:
        writer.close()
        reader.close()


def test_an_unknown_feed_url_is_a_clear_error() -> None:
    with pytest.raises(CatalogError, match="feed_url"):
        open_feed("ftp://somewhere")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:1/0?bogus=1", r"unknown option\(s\) bogus; redis:// takes prefix"),
        ("redis+cluster://127.0.0.1:1?db=2", r"unknown option\(s\) db; redis\+cluster://"),
        ("redis://127.0.0.1:1/0?timeout_ms=soon", "timeout_ms"),
        ("embedded:///tmp/feed?fsync=never", r"unknown option\(s\) fsync; embedded:// takes none"),
    ],
)
def test_an_option_the_backend_does_not_take_is_refused(url: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        open_feed(url)


def test_the_redis_feed_takes_a_timeout(redis_url: str) -> None:
    feed = open_feed(f"{redis_url}?timeout_ms=2000&prefix=feed-{uuid.uuid4().hex[:8]}:")
    try:
        assert feed.append([change(1)]) == feed.read(0)[0][0]
    finally:
        feed.close()
