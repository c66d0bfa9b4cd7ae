"""The adaptive microbatch limit (`BatchSizer`), on a clock the tests set."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tastemaker.catalog import Catalog
from tastemaker.metrics import METRICS
from tastemaker.serving.runtime import Runtime
from tastemaker.stream.processor import BatchSizer
from tests.conftest import T0, event, make_config


def _full_batch(sizer: BatchSizer, at: float) -> int:
    """Poll at `at` and get as many records as the limit allows (a backlog)."""
    limit = sizer.limit(at)
    sizer.polled(at, limit, limit)
    return limit


def test_the_first_limit_is_20000_or_the_cap() -> None:
    assert BatchSizer(100_000, 0.5).limit(0.0) == 20_000
    assert BatchSizer(700, 0.5).limit(0.0) == 700


def test_a_target_of_zero_always_takes_the_cap() -> None:
    sizer = BatchSizer(5_000, 0.0)
    for t in (0.0, 10.0, 10.001, 50.0):
        assert _full_batch(sizer, t) == 5_000


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0.25, 40_000),  # 80,000 a second for 0.5 s
        (0.4, 25_000),
        (1.0, 10_000),  # slower than the target: smaller
        (0.01, 40_000),  # at most doubled a batch
        (100.0, 1_000),  # never under the floor
    ],
)
def test_a_full_batch_sizes_the_next_to_the_target(elapsed: float, expected: int) -> None:
    sizer = BatchSizer(100_000, 0.5)
    assert _full_batch(sizer, 5.0) == 20_000
    assert sizer.limit(5.0 + elapsed) == expected


def test_the_limit_grows_to_the_cap_and_no_further() -> None:
    sizer = BatchSizer(50_000, 0.5)
    t = 0.0
    limits = []
    for _ in range(4):
        limits.append(_full_batch(sizer, t))
        t += 0.1  # 0.1 s whatever the size: the rate allows more each time
    assert limits == [20_000, 40_000, 50_000, 50_000]


def test_a_batch_that_did_not_fill_its_limit_leaves_the_limit_alone() -> None:
    """The log ran dry: the wait after it says nothing about the processing rate."""
    sizer = BatchSizer(100_000, 0.5)
    _full_batch(sizer, 0.0)
    assert sizer.limit(0.25) == 40_000
    sizer.polled(0.25, 1_234, 40_000)  # fewer than the limit
    assert sizer.limit(30.0) == 40_000  # not shrunk by the 29.75 s idle
    sizer.polled(30.0, 0, 40_000)
    assert sizer.limit(31.0) == 40_000


def test_only_the_poll_right_after_a_full_batch_is_timed_against_it() -> None:
    sizer = BatchSizer(100_000, 0.5)
    _full_batch(sizer, 0.0)
    assert sizer.limit(0.5) == 20_000  # 40,000 a second: 20,000 fit in 0.5 s
    assert sizer.limit(99.0) == 20_000  # no new full batch in between: unchanged


@pytest.mark.parametrize(
    ("target_s", "limit", "first"), [(0.5, 20_000, 20_000), (0.0, 100_000, 25_000)]
)
def test_the_processor_polls_with_the_sizers_limit(
    tmp_path: Path, catalog: Catalog, target_s: float, limit: int, first: int
) -> None:
    """Under a backlog of 25,000 records and a cap of 100,000, the first batch takes 20,000
    (nothing timed yet), or all of them with the target off; /metrics shows the limit."""
    config = make_config(tmp_path, catalog)
    stream = msgspec.structs.replace(config.stream, batch_size=100_000, batch_target_s=target_s)
    rt = Runtime(msgspec.structs.replace(config, stream=stream), catalog)
    try:
        items = [str(i) for i in catalog.ids[:50]]
        rt.ingestor.ingest(
            [event(f"e{k}", f"u{k % 97}", items[k % 50], ts=T0 + k) for k in range(25_000)]
        )
        result = rt.processor.process_once()
        assert result is not None
        assert result.last_offset == first
        assert METRICS.registry.get_sample_value("tastemaker_stream_batch_limit") == limit
        assert rt.processor.drain() == 25_000 - first
    finally:
        rt.close()
